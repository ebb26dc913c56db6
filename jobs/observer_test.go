package jobs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

// recorder is an Observer that writes down what it is told.
type recorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, s)
}

func (r *recorder) JobSubmitted(typ string) { r.add("submitted " + typ) }
func (r *recorder) JobStarted(typ string, wait time.Duration) {
	r.add(fmt.Sprintf("started %s (wait negative: %v)", typ, wait < 0))
}
func (r *recorder) JobFinished(typ, outcome string, took time.Duration, ran bool) {
	r.add(fmt.Sprintf("finished %s %s ran=%v (took negative: %v)", typ, outcome, ran, took < 0))
}

func (r *recorder) sorted() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.calls)
	slices.Sort(out)
	return out
}

// The Observer hears of every submission, of each job's first start, and
// of every end once with its outcome: a run completed, a run failed, and
// a queued job canceled (no run).
func TestObserverSeesEveryTransitionOnce(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		boom := Define(Spec[struct{}]{
			Name: "boom", Schema: `{"type":"object"}`, Validate: func(*struct{}) error { return nil },
			Run: func(context.Context, struct{}, Env, Reporter) (any, error) { return nil, errors.New("boom") },
		})
		rdb := srv.Client(t)
		log := progress.NewLog(rdb, progress.LogConfig{})
		reg, err := NewRegistry(append(Builtin(), boom)...)
		if err != nil {
			t.Fatal(err)
		}
		rec := &recorder{}
		e := &jobEnv{t: t, srv: srv, log: log, svc: NewService(rdb, reg, log, Config{ArtifactDir: t.TempDir(), Observer: rec})}

		queued := e.submit(`{"steps":2,"interval_ms":0}`)
		if _, err := e.svc.Cancel(context.Background(), queued.ID); err != nil {
			t.Fatal(err)
		}
		done := e.submit(`{"steps":2,"interval_ms":0}`)
		failed := e.submitType("boom", `{}`)
		e.startWorkerWith(quick())
		e.checkEnd(done.ID, e.waitFinal(done.ID), StateCompleted, "")
		e.waitFinal(failed.ID)
		// boom runs every attempt its retries allow: it starts once for the
		// queue wait, and ends once.
		if j := e.waitState(failed.ID, StateFailed); j.Attempt < 2 {
			t.Fatalf("boom ran %d time(s): want its retries, to see its first start counted alone", j.Attempt)
		}

		want := []string{
			"finished boom failed ran=true (took negative: false)",
			"finished steps canceled ran=false (took negative: false)",
			"finished steps completed ran=true (took negative: false)",
			"started boom (wait negative: false)",
			"started steps (wait negative: false)",
			"submitted boom",
			"submitted steps",
			"submitted steps",
		}
		if got := rec.sorted(); !slices.Equal(got, want) {
			t.Fatalf("observer heard\n%q\nwant\n%q", got, want)
		}
	})
}
