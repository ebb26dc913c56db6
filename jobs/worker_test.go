package jobs

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

// jobEnv is a job service and a way to start workers on one Redis.
type jobEnv struct {
	t   *testing.T
	srv *progresstest.Server
	log *progress.Log
	svc *Service
}

func newJobEnv(t *testing.T, srv *progresstest.Server, extra ...Type) *jobEnv {
	rdb := srv.Client(t)
	log := progress.NewLog(rdb, progress.LogConfig{})
	reg, err := NewRegistry(append(Builtin(), extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	return &jobEnv{t: t, srv: srv, log: log, svc: NewService(rdb, reg, log, Config{ArtifactDir: t.TempDir()})}
}

func (e *jobEnv) startWorker(shutdownTimeout time.Duration) *Worker {
	w := NewWorker(e.svc, e.srv.Client(e.t), WorkerConfig{PollInterval: 50 * time.Millisecond, ShutdownTimeout: shutdownTimeout, CancelPoll: 100 * time.Millisecond})
	if err := w.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(w.Shutdown)
	return w
}

// states returns the job's "state" events in order.
// startRun submits a steps job with params and claims it for a run, as
// a worker that dequeued its task would (no handler runs).
func (e *jobEnv) startRun(t *testing.T, params string) (*Job, *attempt) {
	t.Helper()
	job := e.submit(params)
	a, out, err := e.svc.lc.start(context.Background(), job.ID, 0)
	if err != nil || out != startRun {
		t.Fatalf("start: %v %v", out, err)
	}
	return job, a
}

func (e *jobEnv) states(id string) []stateEvent {
	snap, err := e.log.Read(context.Background(), Group(id), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []stateEvent
	for _, ev := range snap.Events {
		if ev.Name == "state" {
			var s stateEvent
			_ = json.Unmarshal(ev.Data, &s)
			out = append(out, s)
		}
	}
	return out
}

func (e *jobEnv) waitState(id, state string) *Job {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		j, err := e.svc.Get(context.Background(), id)
		if err != nil {
			e.t.Fatal(err)
		}
		if j.State == state {
			return j
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s is %s, want %s; states %+v", id, j.State, state, e.states(id))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A worker that shuts down while a job runs hands it back to the queue
// (watchers see state pending) and another worker finishes it.
func TestWorkerShutdownHandsRunningJobBack(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		first := e.startWorker(time.Second)
		job, err := e.svc.Submit(context.Background(), "u1", "steps", json.RawMessage(`{"steps":30,"interval_ms":50}`))
		if err != nil {
			t.Fatal(err)
		}
		e.waitState(job.ID, StateActive)
		first.Shutdown()
		states := e.states(job.ID)
		if last := states[len(states)-1]; last.State != StatePending || last.Message == "" {
			t.Fatalf("after shutdown the last state is %+v, want pending with a reason", last)
		}
		e.startWorker(time.Second)
		e.waitFinal(job.ID) // the record changes a moment before its events
		done := e.waitState(job.ID, StateCompleted)
		if string(done.Result) != `{"steps":30}` {
			t.Fatalf("result %s", done.Result)
		}
		var got []string
		for _, s := range e.states(job.ID) {
			got = append(got, s.State)
		}
		want := []string{"pending", "active", "pending", "active", "completed"}
		if len(got) != len(want) {
			t.Fatalf("states %v, want %v", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("states %v, want %v", got, want)
			}
		}
	})
}

// Cancelling a job whose worker is gone still ends it: the reconciler is
// not needed for a queued job, and a second cancel is a conflict.
func TestCancelQueuedJob(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		job, err := e.svc.Submit(context.Background(), "u1", "steps", json.RawMessage(`{"steps":3}`))
		if err != nil {
			t.Fatal(err)
		}
		j, err := e.svc.Cancel(context.Background(), job.ID)
		if err != nil || j.State != StateCanceled {
			t.Fatalf("cancel: %+v, %v", j, err)
		}
		if _, err := e.svc.Cancel(context.Background(), job.ID); err == nil {
			t.Fatal("second cancel succeeded; want ErrConflict")
		}
		// A worker started afterwards never runs it.
		e.startWorker(time.Second)
		time.Sleep(300 * time.Millisecond) // give a wrongly queued job a chance to start
		for _, s := range e.states(job.ID) {
			if s.State == StateActive {
				t.Fatalf("a canceled job ran: %+v", e.states(job.ID))
			}
		}
	})
}

// The poll settings are what Asynq is configured with: TaskCheckInterval
// (the pickup delay of a new job) and DelayedTaskCheckInterval (how late a
// scheduled job or a retry starts), with their defaults.
func TestPollSettingsReachAsynq(t *testing.T) {
	cases := []struct {
		name           string
		cfg            WorkerConfig
		poll, delayedP time.Duration
	}{
		{"defaults", WorkerConfig{}, DefaultPollInterval, time.Second},
		{"asynq's old default", WorkerConfig{PollInterval: time.Second}, time.Second, time.Second},
		{"a slow poll slows the forwarder", WorkerConfig{PollInterval: 3 * time.Second}, 3 * time.Second, 3 * time.Second},
		{"short retries", WorkerConfig{PollInterval: 20 * time.Millisecond, RetryDelay: 50 * time.Millisecond}, 20 * time.Millisecond, 50 * time.Millisecond},
		{"set", WorkerConfig{PollInterval: 30 * time.Millisecond, DelayedPollInterval: 400 * time.Millisecond}, 30 * time.Millisecond, 400 * time.Millisecond},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				w := NewWorker(e.svc, srv.Client(t), tc.cfg)
				got := w.cfg.asynqConfig(w.logger)
				if got.TaskCheckInterval != tc.poll || got.DelayedTaskCheckInterval != tc.delayedP {
					t.Fatalf("TaskCheckInterval %v, DelayedTaskCheckInterval %v; want %v, %v",
						got.TaskCheckInterval, got.DelayedTaskCheckInterval, tc.poll, tc.delayedP)
				}
				if got.Concurrency != w.cfg.Concurrency || len(got.Queues) != len(w.cfg.Queues) || got.RetryDelayFunc == nil {
					t.Fatalf("the rest of the configuration is lost: %+v", got)
				}
			})
		}
	})
}
