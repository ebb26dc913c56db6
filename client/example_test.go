package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"

	"taskstream/client"
	"taskstream/wire"
)

// Submit a job and follow it to its end. This is the README's "Go
// client" example.
func Example() {
	baseURL := exampleBaseURL()
	ctx := context.Background()
	c, err := client.New(client.Config{BaseURL: baseURL}) // "http://localhost:8080"; Token: "…" for a bearer token
	if err != nil {
		log.Fatal(err)
	}
	job, err := c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: map[string]any{"steps": 3, "interval_ms": 10}})
	if err != nil {
		log.Fatal(err)
	}
	w, err := c.Watch(ctx, job.Group(), client.Position{})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	for {
		ev, err := w.Next(ctx)
		if errors.Is(err, io.EOF) {
			break // the job's last event came
		}
		var lost *client.NotRecoveredError
		if errors.As(err, &lost) {
			continue // history was lost: reload c.Job(ctx, job.ID) here
		}
		if err != nil {
			log.Fatal(err)
		}
		switch ev.Event {
		case wire.EventState:
			var s struct{ State string }
			_ = ev.Decode(&s)
			fmt.Println("state", s.State)
		case wire.EventProgress:
			// one per step, at most the server's progress rate
		default:
			fmt.Println(ev.Event, string(ev.Data))
		}
	}
	// Output:
	// state pending
	// state active
	// state completed
	// result {"result":{"steps":3}}
}

// The server's refusals are *client.Error values with the HTTP status and
// the protocol's code.
func ExampleError() {
	ctx := context.Background()
	c, err := client.New(client.Config{BaseURL: exampleBaseURL()})
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: map[string]any{"steps": 0}})
	var e *client.Error
	if errors.As(err, &e) {
		fmt.Println(e.Status, e.Code)
	}
	_, err = c.Job(ctx, "no-such-job")
	fmt.Println(client.IsCode(err, wire.CodeNotFound))
	// Output:
	// 400 bad_request
	// true
}

// WatchMany follows many jobs over one socket: add each job as it is
// submitted; each job's group is dropped after its last event.
func ExampleClient_WatchMany() {
	ctx := context.Background()
	c, err := client.New(client.Config{BaseURL: exampleBaseURL()})
	if err != nil {
		log.Fatal(err)
	}
	w := c.WatchMany(ctx)
	defer w.Close()
	const jobs = 5
	for i := range jobs {
		job, err := c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: map[string]any{"steps": i + 1, "interval_ms": 0}})
		if err != nil {
			log.Fatal(err)
		}
		if err := w.Add(job.Group(), client.Position{}); err != nil {
			log.Fatal(err)
		}
	}
	total := 0
	for done := 0; done < jobs; {
		ev, err := w.Next(ctx)
		if err != nil {
			log.Fatal(err) // a *client.Error with a Group: that group was refused
		}
		if ev.Final() {
			var r struct {
				Result struct{ Steps int }
			}
			_ = ev.Decode(&r)
			total += r.Result.Steps
			done++
		}
	}
	fmt.Println("steps run:", total)
	// Output:
	// steps run: 15
}
