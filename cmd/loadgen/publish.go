package main

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"taskstream/client"
	"taskstream/cmd/internal/latency"
	"taskstream/progress"
	"taskstream/wire"
)

// PubResult is what the publisher did.
type PubResult struct {
	Start, End time.Time
	Published  int
	Via        string          // how: "Log.Publish" (Redis) or "POST /api/publish"
	Calls      latency.Summary // duration of each publish call
	Err        error
}

// publisher publishes one event's data to group.
type publisher interface {
	publish(ctx context.Context, group string, data json.RawMessage) error
	name() string
}

// logPublisher appends to the group's log in Redis, as workers do.
type logPublisher struct{ log *progress.Log }

func (p logPublisher) publish(ctx context.Context, group string, data json.RawMessage) error {
	_, err := p.log.Publish(ctx, group, wire.EventMessage, data)
	return err
}
func (logPublisher) name() string { return "Log.Publish" }

// apiPublisher publishes through the server API with a bearer token (an
// admin's, or one with a publish scope for the group).
type apiPublisher struct{ c *client.Client }

func (p apiPublisher) publish(ctx context.Context, group string, data json.RawMessage) error {
	_, err := p.c.Publish(ctx, client.PublishEvent{Group: group, Event: wire.EventMessage, Data: data})
	return err
}
func (apiPublisher) name() string { return "POST /api/publish" }

// Rate is the achieved publish rate.
func (p PubResult) Rate() float64 {
	if p.Published < 2 {
		return 0
	}
	return float64(p.Published-1) / p.End.Sub(p.Start).Seconds()
}

// due is when event i (from 0) should go out, at rate per second from start.
func due(start time.Time, i int, rate float64) time.Time {
	return start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
}

// chatPayload is a chat message whose text is size bytes.
func chatPayload(size int) json.RawMessage {
	b, _ := json.Marshal(map[string]string{"id": "loadgen", "user": "loadgen", "text": strings.Repeat("x", size)})
	return b
}

// publish sends n "message" events to group with pub, paced at rate per
// second: event i goes out at start + i/rate, or at once when the
// publisher is behind. It stops early when ctx ends or a publish fails.
func publish(ctx context.Context, pub publisher, group string, n int, rate float64, payload int) PubResult {
	data := chatPayload(payload)
	calls := make([]time.Duration, 0, n)
	res := PubResult{Start: time.Now(), Via: pub.name()}
	for i := range n {
		if wait := time.Until(due(res.Start, i, rate)); wait > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
		if ctx.Err() != nil {
			res.Err = ctx.Err()
			break
		}
		t0 := time.Now()
		if err := pub.publish(ctx, group, data); err != nil {
			res.Err = err
			break
		}
		res.End = time.Now()
		calls = append(calls, res.End.Sub(t0))
		res.Published++
	}
	res.Calls = latency.Summarize(calls)
	return res
}
