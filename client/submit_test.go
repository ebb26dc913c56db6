package client_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"taskstream/client"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// Submit's options reach the server: queue, priority, timeout and retries
// show on the job; run_at and delay schedule it (a state scheduled event
// first; cancel works while scheduled); an Idempotency-Key returns the
// first job (Replayed) and refuses a different request with the job named;
// a bad option is a *client.Error naming its field.
func TestSubmitOptions(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{})
		c := newClient(t, s, client.Config{})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		steps := map[string]any{"steps": 1, "interval_ms": 0}

		zero := 0
		job, err := c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: steps, Queue: "critical", Priority: "high", Timeout: 90 * time.Second, MaxRetry: &zero})
		if err != nil || job.Queue != "critical" || job.Priority != "high" || job.Timeout != "1m30s" || job.MaxRetry != 0 || job.RunAt != nil {
			t.Fatalf("Submit with options: %+v %v", job, err)
		}
		_, err = c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: steps, Queue: "no-such-queue"})
		if e := wantError(t, "a bad queue", err, http.StatusBadRequest, wire.CodeBadRequest); e.Field != "queue" {
			t.Fatalf("the error names field %q, want queue", e.Field)
		}

		// Scheduled an hour ahead, then canceled while scheduled.
		runAt := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
		later, err := c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: steps, RunAt: runAt})
		if err != nil || later.State != wire.StateScheduled || later.RunAt == nil || !later.RunAt.Equal(runAt) {
			t.Fatalf("Submit with run_at: %+v %v", later, err)
		}
		w, err := c.Watch(ctx, later.Group(), client.Position{})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := c.Cancel(ctx, later.ID); err != nil {
			t.Fatal(err)
		}
		if states := watchStates(t, ctx, w); states != "scheduled,canceled" {
			t.Fatalf("states %q", states)
		}

		// A short delay: scheduled, then the usual lifecycle.
		soon, err := c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: steps, Delay: 200 * time.Millisecond})
		if err != nil || soon.State != wire.StateScheduled {
			t.Fatalf("Submit with delay: %+v %v", soon, err)
		}
		w2, err := c.Watch(ctx, soon.Group(), client.Position{})
		if err != nil {
			t.Fatal(err)
		}
		defer w2.Close()
		if states := watchStates(t, ctx, w2); states != "scheduled,pending,active,completed" && states != "scheduled,active,completed" {
			t.Fatalf("states %q", states)
		}

		// Idempotency-Key.
		first, err := c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: steps}, client.IdempotencyKey("order-17"))
		if err != nil || first.Replayed {
			t.Fatalf("first submit with a key: %+v %v", first, err)
		}
		again, err := c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: steps}, client.IdempotencyKey("order-17"))
		if err != nil || again.ID != first.ID || !again.Replayed {
			t.Fatalf("the same key again: %+v %v, want job %s replayed", again, err, first.ID)
		}
		_, err = c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: map[string]any{"steps": 2}}, client.IdempotencyKey("order-17"))
		if e := wantError(t, "the key with another request", err, http.StatusUnprocessableEntity, wire.CodeIdempotencyKeyReused); e.Job != first.ID {
			t.Fatalf("the error names job %q, want %s", e.Job, first.ID)
		}

		// Schedules: none configured here; guests may not look.
		_, err = c.Schedules(ctx)
		wantError(t, "a guest's schedules", err, http.StatusForbidden, wire.CodeForbidden)
		list, err := newClient(t, s, client.Config{Token: adminToken}).Schedules(ctx)
		if err != nil || len(list) != 0 {
			t.Fatalf("Schedules: %+v %v", list, err)
		}
	})
}

// watchStates follows a job's watch to its end and returns its state
// events, comma-separated.
func watchStates(t *testing.T, ctx context.Context, w *client.Watcher) string {
	t.Helper()
	states := ""
	for {
		ev, err := w.Next(ctx)
		if errors.Is(err, io.EOF) {
			return states
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.Event == wire.EventState {
			var st struct{ State string }
			if err := ev.Decode(&st); err != nil {
				t.Fatal(err)
			}
			if states != "" {
				states += ","
			}
			states += st.State
		}
	}
}
