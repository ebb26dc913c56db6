package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// A run's start does the same in one script (fused: a single Redis or
// Sentinel) as in two steps (a Redis Cluster): the claim, the running
// index, a reopened job's open index entry, and the events, byte for byte
// what json.Marshal makes of them, for every outcome: a first run, a run
// of a task whose previous run died unannounced, a run from the archive,
// a task that is not the job's current one, a canceled job, and a job
// whose record is gone.
func TestStartOnBothPaths(t *testing.T) {
	forBothPaths(t, func(t *testing.T, e *jobEnv) {
		lc := e.svc.lc
		ctx := context.Background()
		rdb := e.srv.Client(t)
		job := e.submit(`{"steps":2,"interval_ms":0}`)
		id := job.ID
		marshal := func(ev stateEvent) string {
			b, err := json.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
		pending := marshal(stateEvent{State: StatePending})
		steps := []struct {
			name       string
			before     func(t *testing.T)
			task       string
			want       startOutcome
			wantN      int
			wantEvents []string // the job's state events after the start
			wantOpen   bool     // the job is in the open index after the start
		}{
			{name: "first run", task: id, want: startRun, wantN: 1,
				wantEvents: []string{pending, marshal(stateEvent{State: StateActive, Attempt: 1})}, wantOpen: true},
			{name: "the previous run died unannounced", task: id, want: startRun, wantN: 2,
				wantEvents: []string{pending, marshal(stateEvent{State: StateActive, Attempt: 1}),
					marshal(stateEvent{State: StateRetry, Attempt: 1, Error: reasonWorkerLost}), marshal(stateEvent{State: StateActive, Attempt: 2})}, wantOpen: true},
			{name: "run from the archive after it failed", task: id, want: startRun, wantN: 3,
				before: func(t *testing.T) {
					a := &attempt{rec: record{ID: id, Type: "steps"}, task: id, n: 2}
					if !lc.finishRun(ctx, a, StateFailed, nil, "boom") {
						t.Fatal("could not fail the run")
					}
					if err := rdb.ZRem(ctx, lc.st.openKey(), id).Err(); err != nil {
						t.Fatal(err)
					}
				},
				wantEvents: []string{pending, marshal(stateEvent{State: StateActive, Attempt: 1}),
					marshal(stateEvent{State: StateRetry, Attempt: 1, Error: reasonWorkerLost}), marshal(stateEvent{State: StateActive, Attempt: 2}),
					marshal(stateEvent{State: StateFailed, Error: "boom"}), marshal(stateEvent{State: StateActive, Attempt: 3, Message: msgRunAgain})}, wantOpen: true},
			{name: "not the current task", task: id + ".2", want: startDrop},
			{name: "canceled", task: id, want: startCanceled,
				before: func(t *testing.T) {
					if err := rdb.HSet(ctx, lc.st.jobKey(id), "canceled", "1").Err(); err != nil {
						t.Fatal(err)
					}
				}},
			{name: "record gone", task: newJobID(), want: startGone},
		}
		var last []string
		for _, st := range steps {
			if st.before != nil {
				st.before(t)
				last = stateData(t, e, id)
			}
			a, out, err := lc.start(ctx, st.task, 2)
			if err != nil || out != st.want {
				t.Fatalf("%s: outcome %v, err %v; want %v", st.name, out, err, st.want)
			}
			if out != startRun {
				if a != nil {
					t.Fatalf("%s: an attempt for outcome %v", st.name, out)
				}
				if got := stateData(t, e, id); strings.Join(got, " ") != strings.Join(last, " ") {
					t.Fatalf("%s: events %v, want none more than %v", st.name, got, last)
				}
				continue
			}
			if a.n != st.wantN || a.task != st.task || a.rec.ID != id || a.rec.Type != "steps" || a.rec.Owner != job.Owner {
				t.Fatalf("%s: attempt %+v", st.name, a)
			}
			if got := stateData(t, e, id); strings.Join(got, " ") != strings.Join(st.wantEvents, " ") {
				t.Fatalf("%s: state events\n  %v\nwant\n  %v", st.name, got, st.wantEvents)
			}
			last = st.wantEvents
			rec, err := lc.st.get(ctx, id)
			if err != nil || rec.State != StateActive || rec.Attempt != st.wantN || rec.Claim == 0 || rec.Left != 2 || rec.Final != "" {
				t.Fatalf("%s: record %+v (%v)", st.name, rec, err)
			}
			score, err := rdb.ZScore(ctx, lc.st.runningKey(), id).Result()
			if err != nil || int64(score) != rec.Claim {
				t.Fatalf("%s: running index score %v (%v), want the claim %d", st.name, score, err, rec.Claim)
			}
			_, err = rdb.ZScore(ctx, lc.st.openKey(), id).Result()
			if open := err == nil; open != st.wantOpen || (err != nil && !errors.Is(err, redis.Nil)) {
				t.Fatalf("%s: in the open index %v (%v), want %v", st.name, open, err, st.wantOpen)
			}
		}
	})
}

// stateData returns the payloads of the job's state events, in order.
func stateData(t *testing.T, e *jobEnv, id string) []string {
	t.Helper()
	var out []string
	for _, ev := range e.events(id).Events {
		if ev.Name == "state" {
			out = append(out, string(ev.Data))
		}
	}
	return out
}

// forBothPaths runs f on both Redis backends for each path a lifecycle
// step can take: fused (one script: a single Redis or Sentinel) and two
// steps (a Redis Cluster), with e's lifecycle set to that path.
func forBothPaths(t *testing.T, f func(t *testing.T, e *jobEnv)) {
	forBothPathsOf(t, func(t *testing.T, srv *progresstest.Server) *jobEnv { return newJobEnv(t, srv) }, f)
}

// forBothPathsOf is forBothPaths with the envs newEnv makes.
func forBothPathsOf(t *testing.T, newEnv func(t *testing.T, srv *progresstest.Server) *jobEnv, f func(t *testing.T, e *jobEnv)) {
	for _, fused := range []bool{true, false} {
		name := "two steps"
		if fused {
			name = "fused"
		}
		t.Run(name, func(t *testing.T) {
			progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
				e := newEnv(t, srv)
				e.svc.lc.fused = fused
				f(t, e)
			})
		})
	}
}
