package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

// gateType is a job type whose first attempt runs until the test opens
// the gate (or its context ends); later attempts end at once. Its result
// is the attempt that produced it.
func gateType(gate <-chan struct{}) Type { return gateTypeNamed("gate", 0, gate) }

// gateTypeNamed is gateType with a name and Spec.MaxRetry.
func gateTypeNamed(name string, maxRetry int, gate <-chan struct{}) Type {
	return Define(Spec[struct{}]{
		Name: name, MaxRetry: maxRetry, Schema: `{"type":"object"}`, Validate: func(*struct{}) error { return nil },
		Run: func(ctx context.Context, _ struct{}, env Env, r Reporter) (any, error) {
			if env.Attempt == 1 {
				r.Progress(0, 1, "waiting", "")
				select {
				case <-gate:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			r.Progress(1, 1, "done", "")
			return map[string]int{"attempt": env.Attempt}, nil
		},
	})
}

// quick is a worker configuration whose every wait is short, so operator
// actions are handled in a fraction of a second and lost jobs in about
// two (20 heartbeats: a loaded CI machine may stall a beat or two).
func quick() WorkerConfig {
	return WorkerConfig{
		PollInterval: 50 * time.Millisecond, ShutdownTimeout: time.Second, CancelPoll: 100 * time.Millisecond,
		Heartbeat: 100 * time.Millisecond, LostAfter: 2 * time.Second, ReconcileInterval: 200 * time.Millisecond,
		RetryDelay: time.Millisecond,
	}
}

func (e *jobEnv) startWorkerWith(cfg WorkerConfig) *Worker {
	w := NewWorker(e.svc, e.srv.Client(e.t), cfg)
	if err := w.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(w.Shutdown)
	return w
}

func (e *jobEnv) submit(params string) *Job {
	e.t.Helper()
	return e.submitType("steps", params)
}

func (e *jobEnv) submitType(typ, params string) *Job {
	e.t.Helper()
	j, err := e.svc.Submit(context.Background(), "u1", typ, json.RawMessage(params))
	if err != nil {
		e.t.Fatal(err)
	}
	return j
}

// events returns the job's events in the log's current epoch.
func (e *jobEnv) events(id string) progress.Snapshot {
	e.t.Helper()
	snap, err := e.log.Read(context.Background(), Group(id), 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return snap
}

// waitFinal waits until the job's log holds a final event and returns
// the log.
func (e *jobEnv) waitFinal(id string) progress.Snapshot {
	e.t.Helper()
	return e.waitEvent(id, "")
}

// waitEvent waits until the job's log holds an event named name (a final
// event when name is "") and returns the log.
func (e *jobEnv) waitEvent(id, name string) progress.Snapshot {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		snap, err := e.log.Read(context.Background(), Group(id), 0)
		if err == nil {
			for _, ev := range snap.Events {
				if name == "" && FinalEvent(ev.Name, ev.Data) || ev.Name == name {
					return snap
				}
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s never ended; events %s", id, describe(snap))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func describe(snap progress.Snapshot) string {
	var b strings.Builder
	for _, ev := range snap.Events {
		fmt.Fprintf(&b, "\n  %d %s %s", ev.Seq, ev.Name, ev.Data)
	}
	return b.String()
}

// stateNames is the job's state events as "state/attempt", space
// separated, with " (worker lost)" after those that say so.
func stateNames(snap progress.Snapshot) string {
	var out []string
	for _, ev := range snap.Events {
		if ev.Name != "state" {
			continue
		}
		var s stateEvent
		_ = json.Unmarshal(ev.Data, &s)
		n := fmt.Sprintf("%s/%d", s.State, s.Attempt)
		if s.Error == reasonWorkerLost {
			n += " (" + s.Error + ")"
		}
		out = append(out, n)
	}
	return strings.Join(out, " ")
}

// checkEnd checks the job ended exactly once, with the final event last,
// that the end is state (with errMsg when given), and that the snapshot
// (GET /api/jobs/ID) agrees with the events.
func (e *jobEnv) checkEnd(id string, snap progress.Snapshot, state, errMsg string) *Job {
	e.t.Helper()
	finals := 0
	for _, ev := range snap.Events {
		if FinalEvent(ev.Name, ev.Data) {
			finals++
		}
	}
	last := snap.Events[len(snap.Events)-1]
	if finals != 1 || !FinalEvent(last.Name, last.Data) {
		e.t.Fatalf("want exactly one final event, last; got %d: %s", finals, describe(snap))
	}
	j, err := e.svc.Get(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	if j.State != state {
		e.t.Fatalf("job is %s, want %s; events %s", j.State, state, describe(snap))
	}
	var ended stateEvent
	for _, ev := range snap.Events {
		if ev.Name == "state" {
			_ = json.Unmarshal(ev.Data, &ended)
		}
	}
	if ended.State != state {
		e.t.Fatalf("last state event %+v, want %s", ended, state)
	}
	gotErr := ""
	if j.Error != nil {
		gotErr = *j.Error
	}
	if errMsg != "" && (gotErr != errMsg || ended.Error != errMsg) {
		e.t.Fatalf("job error %q, event error %q, want %q", gotErr, ended.Error, errMsg)
	}
	if j.LastSeq != last.Seq || j.Epoch != snap.Epoch {
		e.t.Fatalf("job at seq %d epoch %s, log at %d epoch %s", j.LastSeq, j.Epoch, last.Seq, snap.Epoch)
	}
	return j
}

// waitTask waits until cond holds for the job's current Asynq task.
func (e *jobEnv) waitTask(id string, what string, cond func(*asynq.TaskInfo, error) bool) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rec, err := e.svc.store.get(context.Background(), id)
		if err != nil {
			e.t.Fatal(err)
		}
		if cond(e.svc.insp.GetTaskInfo(rec.Queue, rec.Task)) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("task of %s never %s", id, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func taskOf(t *testing.T, svc *Service, id string) string {
	rec, err := svc.store.get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Task
}

// What asynq's own tools (the asynq CLI, asynqmon: both call
// asynq.Inspector) do to a job's task ends the job once, with a reason,
// and GET agrees with the events.
func TestOperatorActionsThroughAsynqInspector(t *testing.T) {
	cases := []struct {
		name string
		// params of the steps job; running says the worker runs before
		// the action (with retries an hour apart, so a retry waits).
		params  string
		running bool
		// before is the job's state when the operator acts.
		before string
		act    func(i *asynq.Inspector, queue, task string) error
		state  string
		err    string
	}{
		{name: "delete pending", params: `{"steps":1}`, before: StatePending,
			act: func(i *asynq.Inspector, q, task string) error { return i.DeleteTask(q, task) }, state: StateCanceled, err: reasonDeleted},
		{name: "delete retry", params: `{"steps":1,"fail_at":1}`, running: true, before: StateRetry,
			act: func(i *asynq.Inspector, q, task string) error { return i.DeleteTask(q, task) }, state: StateCanceled, err: reasonDeleted},
		{name: "archive pending", params: `{"steps":1}`, before: StatePending,
			act: func(i *asynq.Inspector, q, task string) error { return i.ArchiveTask(q, task) }, state: StateFailed, err: reasonArchived},
		{name: "archive retry", params: `{"steps":1,"fail_at":1}`, running: true, before: StateRetry,
			act: func(i *asynq.Inspector, q, task string) error { return i.ArchiveTask(q, task) }, state: StateFailed, err: reasonArchived},
		{name: "cancel running", params: `{"steps":100000,"interval_ms":20}`, running: true, before: StateActive,
			act: func(i *asynq.Inspector, q, task string) error { return i.CancelProcessing(task) }, state: StateCanceled, err: reasonOpCanceled},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
				e := newJobEnv(t, srv)
				cfg := quick()
				cfg.RetryDelay = time.Hour
				if c.running {
					e.startWorkerWith(cfg)
				}
				job := e.submit(c.params)
				if c.before != StatePending {
					e.waitState(job.ID, c.before)
				}
				if c.before == StateRetry { // the record goes first, then Asynq
					e.waitTask(job.ID, "in retry", func(info *asynq.TaskInfo, err error) bool {
						return err == nil && info.State == asynq.TaskStateRetry
					})
				}
				task := taskOf(t, e.svc, job.ID)
				if err := c.act(e.svc.insp, "default", task); err != nil {
					t.Fatal(err)
				}
				if !c.running { // the reconciler of a worker notices
					e.startWorkerWith(cfg)
				}
				snap := e.waitFinal(job.ID)
				e.checkEnd(job.ID, snap, c.state, c.err)
				if c.name == "cancel running" {
					// Not retried: whatever Asynq does with the task (a
					// retry is dropped at once), nothing runs any more.
					e.waitTask(job.ID, "left the queue", func(info *asynq.TaskInfo, err error) bool {
						if err == nil && info.State == asynq.TaskStateRetry {
							_ = e.svc.insp.RunTask("default", task) // do not wait an hour
						}
						return errors.Is(err, asynq.ErrTaskNotFound) || err == nil && info.State == asynq.TaskStateArchived
					})
					if after := e.events(job.ID); len(after.Events) != len(snap.Events) {
						t.Fatalf("events after the end (%d, was %d, epoch %q): %s", len(after.Events), len(snap.Events), after.Epoch, describe(after))
					}
				}
			})
		})
	}
}

// A cancel deletes only a waiting task. One whose run already ended (or
// that an operator archived) keeps its record in Asynq, and a task that
// starts after the cancel's look is dropped by its worker: either way the
// job ends canceled once, and a canceled job that never ran leaves no task.
func TestCancelDeletesOnlyAWaitingTask(t *testing.T) {
	cases := []struct {
		name string
		// race does what happens between the cancel's flag and its look
		// at the task; it reports the cancel's part still to run.
		race func(e *jobEnv, task string) (cancelNow bool)
		// archived: the task stays archived; otherwise it is gone.
		archived bool
	}{
		{name: "archived before the cancel", archived: true, race: func(e *jobEnv, task string) bool {
			if err := e.svc.insp.ArchiveTask("default", task); err != nil {
				e.t.Fatal(err)
			}
			return true
		}},
		{name: "started after the cancel's look", race: func(e *jobEnv, task string) bool {
			// The flag is set and the task still waits: the worker
			// starts it before the cancel deletes it.
			if err := markCanceledScript.Run(context.Background(), e.svc.store.rdb, []string{e.svc.store.jobKey(jobOfTask(task))}).Err(); err != nil {
				e.t.Fatal(err)
			}
			e.startWorkerWith(quick())
			return false
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
				e := newJobEnv(t, srv)
				job := e.submit(`{"steps":1}`)
				task := taskOf(t, e.svc, job.ID)
				if c.race(e, task) {
					j, err := e.svc.Cancel(context.Background(), job.ID)
					if err != nil {
						t.Fatal(err)
					}
					if j.State != StateCanceled {
						t.Fatalf("after the cancel the job is %s", j.State)
					}
				}
				e.checkEnd(job.ID, e.waitFinal(job.ID), StateCanceled, "")
				e.waitTask(job.ID, "in its place", func(info *asynq.TaskInfo, err error) bool {
					if c.archived {
						return err == nil && info.State == asynq.TaskStateArchived
					}
					return errors.Is(err, asynq.ErrTaskNotFound)
				})
			})
		})
	}
}

// A job that failed (its task archived by Asynq) and that an operator runs
// again from the archive gets a new attempt that runs to its end; the job
// is no longer failed.
func TestRunFromArchiveIsANewAttempt(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		e.startWorkerWith(quick())
		// steps retries 3 times: attempts 1-4 fail, a 5th succeeds.
		job := e.submit(`{"steps":2,"interval_ms":0,"fail_at":1,"fail_times":4}`)
		snap := e.waitFinal(job.ID)
		e.checkEnd(job.ID, snap, StateFailed, "")
		e.waitTask(job.ID, "archived", func(info *asynq.TaskInfo, err error) bool {
			return err == nil && info.State == asynq.TaskStateArchived
		})
		if err := e.svc.insp.RunTask("default", taskOf(t, e.svc, job.ID)); err != nil {
			t.Fatal(err)
		}
		e.waitEvent(job.ID, "result")
		j := e.waitState(job.ID, StateCompleted)
		if j.Attempt != 5 || string(j.Result) != `{"steps":2}` {
			t.Fatalf("after the run from the archive: attempt %d result %s", j.Attempt, j.Result)
		}
		snap = e.events(job.ID)
		want := "pending/0 active/1 retry/1 active/2 retry/2 active/3 retry/3 active/4 failed/0 active/5 completed/0"
		if got := stateNames(snap); got != want {
			t.Fatalf("states %q, want %q", got, want)
		}
		if last := snap.Events[len(snap.Events)-1]; last.Name != "result" {
			t.Fatalf("last event %s", last.Name)
		}
	})
}

// An enqueue cut short (the API died between recording the job and
// enqueuing it) is finished by the reconciler: the job runs.
func TestReconcilerFinishesAnInterruptedEnqueue(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		ctx := context.Background()
		typ, _ := e.svc.reg.Lookup("steps")
		rec := &record{ID: newJobID(), Owner: "u1", Type: "steps", Queue: "default", Params: json.RawMessage(`{"steps":2,"interval_ms":0}`), CreatedAt: time.Now().UTC()}
		rec.Task, rec.Handoff, rec.HandoffRetry = rec.ID, rec.ID, typ.MaxRetry
		if err := e.svc.store.create(ctx, rec); err != nil {
			t.Fatal(err)
		}
		e.svc.lc.publish(ctx, rec.ID, "state", stateEvent{State: StatePending})
		e.startWorkerWith(quick())
		snap := e.waitFinal(rec.ID)
		e.checkEnd(rec.ID, snap, StateCompleted, "")
	})
}

// freezer fails every command of the Redis client it limits while frozen,
// as if the worker using that client were stopped or cut off.
type freezer struct{ frozen atomic.Bool }

func (f *freezer) Allow() error {
	if f.frozen.Load() {
		return errors.New("frozen by the test")
	}
	return nil
}

func (f *freezer) ReportResult(error) {}

// startFreezableWorker starts a worker, busy with one job at a time, on
// its own Redis client, and returns the freezer of that client.
func (e *jobEnv) startFreezableWorker() *freezer {
	fr := &freezer{}
	rdb := redis.NewClient(&redis.Options{Addr: e.srv.Addr, Limiter: fr})
	e.t.Cleanup(func() { _ = rdb.Close() })
	svc := NewService(rdb, e.svc.reg, progress.NewLog(rdb, progress.LogConfig{}), e.svc.cfg)
	cfg := quick()
	cfg.Concurrency = 1 // busy with the job: a new run goes elsewhere
	w := NewWorker(svc, rdb, cfg)
	if err := w.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(w.Shutdown)
	return fr
}

// A worker that stops beating (frozen: as far as others can tell, dead)
// mid-job: after LostAfter the job runs again elsewhere if it has retries
// left, fails "worker lost" on its last attempt, and ends canceled if its
// owner canceled it meanwhile. Each ends once; GET agrees.
func TestLostWorker(t *testing.T) {
	cases := []struct {
		name     string
		maxRetry int
		cancel   bool
		state    string
		err      string
		states   string
	}{
		{"retries left", 0, false, StateCompleted, "", "pending/0 active/1 retry/1 (worker lost) active/2 completed/0"},
		{"last attempt", NoRetry, false, StateFailed, reasonWorkerLost, "pending/0 active/1 failed/0 (worker lost)"},
		{"canceled meanwhile", 0, true, StateCanceled, "", "pending/0 active/1 canceled/0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
				gate := make(chan struct{})
				defer close(gate)
				e := newJobEnv(t, srv, gateTypeNamed("gate", c.maxRetry, gate))
				fr := e.startFreezableWorker()
				job := e.submitType("gate", `{}`)
				e.waitEvent(job.ID, "progress") // it runs, and said so
				fr.frozen.Store(true)
				if c.cancel {
					if _, err := e.svc.Cancel(context.Background(), job.ID); err != nil {
						t.Fatal(err)
					}
				}
				e.startWorkerWith(quick())
				snap := e.waitFinal(job.ID)
				e.checkEnd(job.ID, snap, c.state, c.err)
				if got := stateNames(snap); got != c.states {
					t.Fatalf("states %q, want %q", got, c.states)
				}
			})
		})
	}
}

// claimAge returns how old the job's claim is by the server's clock.
func (e *jobEnv) claimAge(id string) time.Duration {
	e.t.Helper()
	rdb := e.srv.Client(e.t)
	now, err := rdb.Time(context.Background()).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	hb, err := rdb.HGet(context.Background(), e.svc.store.jobKey(id), "hb").Int64()
	if errors.Is(err, redis.Nil) {
		e.t.Fatalf("job %s lost its claim (taken for lost); events %s", id, describe(e.events(id)))
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return now.Sub(time.UnixMilli(hb))
}

// When Redis is out of reach for every worker (paused, partitioned) for
// longer than LostAfter, the running jobs are not taken for lost once it
// is back: their workers beat again before any sweeper judges.
func TestRedisPauseLosesNoWorker(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		gate := make(chan struct{})
		defer close(gate)
		e := newJobEnv(t, srv, gateType(gate))
		runner := e.startFreezableWorker()
		job := e.submitType("gate", `{}`)
		e.waitEvent(job.ID, "progress")
		sweeper := e.startFreezableWorker()
		runner.frozen.Store(true)
		sweeper.frozen.Store(true)
		lostAfter := quick().LostAfter
		for e.claimAge(job.ID) <= lostAfter+quick().Heartbeat {
			time.Sleep(20 * time.Millisecond)
		}
		runner.frozen.Store(false)
		sweeper.frozen.Store(false)
		for e.claimAge(job.ID) > lostAfter { // until the runner beats again
			time.Sleep(20 * time.Millisecond)
		}
		gate <- struct{}{}
		snap := e.waitFinal(job.ID)
		e.checkEnd(job.ID, snap, StateCompleted, "")
		if got, want := stateNames(snap), "pending/0 active/1 completed/0"; got != want {
			t.Fatalf("states %q, want %q", got, want)
		}
	})
}

// A worker that is only slow (frozen, then it wakes up) and is taken for
// lost: the job runs again elsewhere, and when the slow worker wakes up its
// run is stopped and dropped, so the job ends once.
func TestSlowWorkerTakenForLostEndsOnce(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		gate := make(chan struct{})
		defer close(gate)
		e := newJobEnv(t, srv, gateType(gate))
		fr := e.startFreezableWorker()

		job := e.submitType("gate", `{}`)
		e.waitEvent(job.ID, "progress") // it runs, and said so
		first := taskOf(t, e.svc, job.ID)
		fr.frozen.Store(true)
		e.startWorkerWith(quick())
		snap := e.waitFinal(job.ID)
		j := e.checkEnd(job.ID, snap, StateCompleted, "")
		if got, want := stateNames(snap), "pending/0 active/1 retry/1 (worker lost) active/2 completed/0"; got != want {
			t.Fatalf("states %q, want %q", got, want)
		}
		if string(j.Result) != `{"attempt":2}` {
			t.Fatalf("result %s, want the second run's", j.Result)
		}
		// The slow worker wakes up: its next heartbeat finds the job moved
		// on, its run stops, its task is deleted, nothing is published.
		fr.frozen.Store(false)
		e.waitTaskID(first, "deleted", func(_ *asynq.TaskInfo, err error) bool { return errors.Is(err, asynq.ErrTaskNotFound) })
		if after := e.events(job.ID); len(after.Events) != len(snap.Events) {
			t.Fatalf("events after the end: %s", describe(after))
		}
	})
}

func (e *jobEnv) waitTaskID(task, what string, cond func(*asynq.TaskInfo, error) bool) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond(e.svc.insp.GetTaskInfo("default", task)) {
		if time.Now().After(deadline) {
			e.t.Fatalf("task %s never %s", task, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Redis restarted without persistence while a job runs: the job still
// ends with its result, in the log's new epoch, and GET shows it; whether
// the worker notices the loss at a heartbeat (the record is restored as
// active at once) or only at the end.
func TestRedisLostMidJobStillEnds(t *testing.T) {
	for _, c := range []struct {
		name      string
		heartbeat time.Duration
		states    string
	}{
		{"noticed by the heartbeat", 100 * time.Millisecond, "active/1 completed/0"},
		{"noticed at the end", time.Hour, "completed/0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
				gate := make(chan struct{})
				e := newJobEnv(t, srv, gateType(gate))
				cfg := quick()
				cfg.Heartbeat, cfg.LostAfter = c.heartbeat, 10*c.heartbeat
				e.startWorkerWith(cfg)
				job := e.submitType("gate", `{}`)
				w := e.watch(job.ID)
				e.waitEvent(job.ID, "progress")
				before := e.events(job.ID).Epoch
				srv.Restart(t)
				if c.heartbeat < time.Hour {
					e.waitEvent(job.ID, "state") // the restored record's "active"
				}
				close(gate)
				snap := e.waitFinal(job.ID)
				if snap.Epoch == before {
					t.Fatalf("the log kept its epoch %s across a restart without persistence", before)
				}
				j := e.checkEnd(job.ID, snap, StateCompleted, "")
				if string(j.Result) != `{"attempt":1}` || j.Owner != "u1" || j.Type != "gate" || j.Attempt != 1 {
					t.Fatalf("restored job %+v", j)
				}
				if got := stateNames(snap); got != c.states {
					t.Fatalf("states in the new epoch %q, want %q", got, c.states)
				}
				if !w.untilFinal(t) {
					t.Fatal("the watcher saw the end but was not told that history was lost")
				}
				if jobs, err := e.svc.List(context.Background(), "u1", 10); err != nil || len(jobs) != 1 {
					t.Fatalf("owner's list after the restore: %v, %v", jobs, err)
				}
			})
		})
	}
}

// watcher is a hub subscriber that records what it is told.
type watcher struct{ ch chan any }

func (w *watcher) Synced(s progress.SyncInfo) bool { w.ch <- s; return true }
func (w *watcher) Send(ev *progress.Event) bool    { w.ch <- ev; return true }
func (w *watcher) Lagged()                         { w.ch <- "lagged" }
func (w *watcher) Failed(err error)                { w.ch <- "failed: " + err.Error() }

// watch subscribes a watcher to the job's group through a hub, as an API
// process does for its sockets.
func (e *jobEnv) watch(id string) *watcher {
	hub := progress.NewHub(e.srv.Client(e.t), e.log, progress.HubConfig{})
	e.t.Cleanup(func() { _ = hub.Shutdown(context.Background()) })
	w := &watcher{ch: make(chan any, 10000)}
	sub, err := hub.Subscribe(Group(id), 0, "", w)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(sub.Close)
	// The subscription is in place once its first sync has arrived: a
	// test that breaks Redis before then would see that first sync
	// (Initial) tell of the loss instead of a later one, and untilFinal
	// would not count it.
	select {
	case m := <-w.ch:
		if s, ok := m.(progress.SyncInfo); !ok || !s.Initial {
			e.t.Fatalf("a subscription's first message is %v, want its initial sync", m)
		}
	case <-time.After(30 * time.Second):
		e.t.Fatal("no initial sync within 30s")
	}
	return w
}

// untilFinal reads what the watcher is told until the job's final event,
// and reports whether it was told that history was lost on the way.
func (w *watcher) untilFinal(t *testing.T) (told bool) {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case m := <-w.ch:
			switch m := m.(type) {
			case progress.SyncInfo:
				if !m.Initial && !m.Recovered {
					told = true
				}
			case *progress.Event:
				if FinalEvent(m.Name, m.Data) {
					return told
				}
			case string:
				t.Fatalf("watcher %s", m)
			}
		case <-timeout:
			t.Fatal("the watcher never saw the job's final event")
		}
	}
}

// helperEnv names the Redis address a helper worker process serves.
const helperEnv = "JOBS_TEST_HELPER_WORKER_REDIS"

// TestHelperWorkerProcess is not a test: run by TestWorkerKilledMidJob in
// a child process (with helperEnv set), it is a worker until killed.
func TestHelperWorkerProcess(t *testing.T) {
	addr := os.Getenv(helperEnv)
	if addr == "" {
		t.Skip("a helper process for TestWorkerKilledMidJob")
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	log := progress.NewLog(rdb, progress.LogConfig{})
	reg, err := NewRegistry(Builtin()...)
	if err != nil {
		t.Fatal(err)
	}
	svc := NewService(rdb, reg, log, Config{ArtifactDir: t.TempDir()})
	w := NewWorker(svc, rdb, quick())
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	select {} // until SIGKILL
}

// A worker process killed with SIGKILL mid-job: after LostAfter without
// its heartbeat, watchers are told "state retry" ("worker lost"), the job
// runs again at once on the surviving worker (not after Asynq's lease and
// recoverer) and ends once.
func TestWorkerKilledMidJob(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		child := exec.Command(os.Args[0], "-test.run=^TestHelperWorkerProcess$")
		child.Env = append(os.Environ(), helperEnv+"="+srv.Addr)
		var out strings.Builder
		child.Stdout, child.Stderr = &out, &out
		if err := child.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = child.Wait(); close(exited) }()
		t.Cleanup(func() {
			_ = child.Process.Kill()
			<-exited
			if t.Failed() {
				t.Logf("helper worker output:\n%s", out.String())
			}
		})
		job := e.submit(`{"steps":100,"interval_ms":30}`)
		e.waitEvent(job.ID, "progress") // the helper runs it (only it runs jobs yet)
		if err := child.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-exited
		e.startWorkerWith(quick())
		snap := e.waitFinal(job.ID)
		j := e.checkEnd(job.ID, snap, StateCompleted, "")
		if got, want := stateNames(snap), "pending/0 active/1 retry/1 (worker lost) active/2 completed/0"; got != want {
			t.Fatalf("states %q, want %q", got, want)
		}
		if j.Attempt != 2 {
			t.Fatalf("attempt %d, want 2", j.Attempt)
		}
	})
}

// The reconciler's cost per pass is bounded: it checks ReconcileBatch
// open jobs, those checked longest ago first, and reaches the rest in the
// next passes; a job it checked goes to the back of the line.
func TestReconcilerChecksOnePagePerPass(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		cfg := quick()
		cfg.ReconcileBatch = 2
		w := NewWorker(e.svc, srv.Client(t), cfg) // not started: passes run by hand
		var ids []string
		for range 5 {
			ids = append(ids, e.submit(`{"steps":1}`).ID)
		}
		// The newest job is deleted by an operator; the others wait.
		deleted := ids[4]
		if err := e.svc.insp.DeleteTask("default", deleted); err != nil {
			t.Fatal(err)
		}
		for pass, want := range []string{StatePending, StatePending, StateCanceled} {
			if err := w.reconcile(context.Background()); err != nil {
				t.Fatal(err)
			}
			j, err := e.svc.Get(context.Background(), deleted)
			if err != nil {
				t.Fatal(err)
			}
			if j.State != want {
				t.Fatalf("after pass %d the deleted job is %s, want %s", pass+1, j.State, want)
			}
		}
		e.checkEnd(deleted, e.events(deleted), StateCanceled, reasonDeleted)
		for _, id := range ids[:4] {
			if j, err := e.svc.Get(context.Background(), id); err != nil || j.State != StatePending {
				t.Fatalf("job %s: %+v, %v; want pending", id, j, err)
			}
		}
	})
}

// Task ids come back from Asynq, where operators' tools can put anything:
// parsing one never fails, and the ids the lifecycle makes round-trip.
func FuzzTaskID(f *testing.F) {
	for _, s := range []string{"", "abc", "abc.2", "abc.0", "abc.-1", "abc.x", "a.b.c", ".", "abc.99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, task string) {
		id := jobOfTask(task)
		if !strings.HasPrefix(task, id) || strings.Contains(id, ".") {
			t.Fatalf("job of %q is %q", task, id)
		}
		g := genOfTask(task)
		if g < 1 {
			t.Fatalf("generation of %q is %d", task, g)
		}
		if id != "" && !strings.Contains(task, ".") {
			next := fmt.Sprintf("%s.%d", id, g+1)
			if jobOfTask(next) != id || genOfTask(next) != g+1 {
				t.Fatalf("%q does not round-trip", next)
			}
		}
	})
}

// A job's end notifies its owner as of the end, once: a guest's job that
// moved to the account the guest signed in to while it ran notifies the
// account, and the guest's group gets no notification.
func TestEndNotifiesTheOwnerOfTheEnd(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		gate := make(chan struct{})
		e := newJobEnv(t, srv, gateType(gate))
		e.startWorkerWith(quick())
		ctx := context.Background()
		job, err := e.svc.Submit(ctx, "guest1", "gate", json.RawMessage(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		e.waitState(job.ID, StateActive)
		if n, err := e.svc.Transfer(ctx, "guest1", "user2"); err != nil || n != 1 {
			t.Fatalf("transfer: %d %v", n, err)
		}
		close(gate)
		e.checkEnd(job.ID, e.waitFinal(job.ID), StateCompleted, "")
		notes := func(owner string) []string {
			snap, err := e.log.Read(ctx, progress.UserGroup(owner), 0)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, ev := range snap.Events {
				if ev.Name == "notification" {
					out = append(out, string(ev.Data))
				}
			}
			return out
		}
		// The notification is published with the end's debt cleared,
		// after the final event: wait for it, then for nothing more.
		deadline := time.Now().Add(30 * time.Second)
		for len(notes("user2")) == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		e.waitRecord(job.ID, "its debt cleared", func(r *record) bool { return r.Owed == "" })
		got := notes("user2")
		if len(got) != 1 || !strings.Contains(got[0], job.ID) || !strings.Contains(got[0], "completed") {
			t.Fatalf("user2's notifications %q, want one about %s completed", got, job.ID)
		}
		if got := notes("guest1"); len(got) != 0 {
			t.Fatalf("the guest's group got notifications %q", got)
		}
	})
}
