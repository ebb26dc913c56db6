package jobs

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// roundTrips counts the round trips a Redis client makes: one per command
// sent alone, one per pipeline.
type roundTrips struct{ n atomic.Int64 }

// hook counts h's round trips as a go-redis hook.
func (h *roundTrips) hook() redis.Hook {
	return progresstest.CommandHook(func([]redis.Cmder) { h.n.Add(1) })
}

// A submit ends with the job's handoff mark cleared, its task in Asynq and
// one "submitted" event on the owner's group carrying the job, whichever
// way it goes: off a Redis Cluster (fused) the clear and the event ride
// with the enqueue, one round trip less; a scheduled job's enqueue, a
// submit with an Idempotency-Key, and an enqueue whose script Redis lost
// (the rider finds no task and the submit finishes alone) take the round
// trip of their own, as every submit does on a Cluster.
func TestSubmitFinishesWithItsEnqueue(t *testing.T) {
	cases := []struct {
		name      string
		opts      Options
		key       string
		flush     bool  // SCRIPT FLUSH before the submit: Redis lost Asynq's script
		fusedRTs  int64 // round trips of the submit when fused; -1: not counted
		othersRTs int64 // the same in two steps
	}{
		{name: "at once", fusedRTs: 2, othersRTs: 3},
		{name: "scheduled", opts: Options{Delay: "1h"}, fusedRTs: 3, othersRTs: 3},
		{name: "with an Idempotency-Key", key: "k1", fusedRTs: 4, othersRTs: 4},
		{name: "scripts lost", flush: true, fusedRTs: -1, othersRTs: -1},
	}
	forBothPaths(t, func(t *testing.T, e *jobEnv) {
		rt := &roundTrips{}
		e.svc.store.rdb.(*redis.Client).AddHook(rt.hook())
		ctx := context.Background()
		for _, c := range cases {
			// Once first: Asynq learns a queue once per process, and
			// Redis each script at its first use; neither is counted.
			req := Request{Type: "steps", Params: json.RawMessage(`{"steps":1}`), Options: c.opts}
			if _, _, err := e.svc.SubmitRequest(ctx, "u1", req); err != nil {
				t.Fatal(err)
			}
			if c.flush {
				if err := e.srv.Client(t).ScriptFlush(ctx).Err(); err != nil {
					t.Fatal(err)
				}
			}
			rt.n.Store(0)
			req.IdempotencyKey = c.key
			job, _, err := e.svc.SubmitRequest(ctx, "u1", req)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			want := c.othersRTs
			if e.svc.lc.fused {
				want = c.fusedRTs
			}
			if got := rt.n.Load(); want >= 0 && got != want {
				t.Errorf("%s: %d round trips, want %d", c.name, got, want)
			}
			rec, err := e.svc.store.get(ctx, job.ID)
			if err != nil || rec.Handoff != "" || rec.HandoffRetry != 0 {
				t.Fatalf("%s: record %+v (%v): the handoff mark is left", c.name, rec, err)
			}
			if _, err := e.svc.insp.GetTaskInfo(rec.Queue, rec.Task); err != nil {
				t.Fatalf("%s: Asynq's task: %v", c.name, err)
			}
			snap, err := e.log.Read(ctx, progress.UserGroup("u1"), 0)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, ev := range snap.Events {
				var told Job
				if err := json.Unmarshal(ev.Data, &told); err != nil {
					t.Fatal(err)
				}
				if ev.Name != wire.EventSubmitted || told.ID != job.ID {
					continue
				}
				n++
				if told.State != job.State || told.Epoch != job.Epoch || told.LastSeq != job.LastSeq || !told.CreatedAt.Equal(job.CreatedAt) || told.Owner != "u1" {
					t.Fatalf("%s: the submitted event tells %+v, the submit returned %+v", c.name, told, job)
				}
			}
			if n != 1 {
				t.Fatalf("%s: %d submitted events for the job, want 1", c.name, n)
			}
		}
	})
}
