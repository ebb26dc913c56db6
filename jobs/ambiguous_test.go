package jobs

import (
	"context"
	"errors"
	"net"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

// replyFault is a go-redis hook for the script calls match selects: while
// lose > 0 it lets one reach Redis and run there and then reports an i/o
// timeout instead of its reply (what a paused or slow Redis does); while
// fail is set it fails them without sending them (Redis unreachable).
type replyFault struct {
	match func(args []any) bool
	lose  atomic.Int32
	fail  atomic.Bool
}

func (h *replyFault) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessPipelineHook applies the fault to a matching command sent in a
// pipeline (a run's end goes with its last progress report): a failing
// one fails the whole pipeline unsent, as a dead connection would; a lost
// reply loses the matching command's reply only.
func (h *replyFault) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var hit []redis.Cmder
		for _, cmd := range cmds {
			if name := cmd.Name(); (name == "evalsha" || name == "eval") && h.match(cmd.Args()) {
				hit = append(hit, cmd)
			}
		}
		if len(hit) == 0 {
			return next(ctx, cmds)
		}
		if h.fail.Load() {
			for _, cmd := range cmds {
				cmd.SetErr(timeout)
			}
			return timeout
		}
		err := next(ctx, cmds)
		for _, cmd := range hit {
			if cmd.Err() == nil && h.lose.Add(-1) >= 0 {
				cmd.SetErr(timeout)
				err = timeout
			}
		}
		return err
	}
}
func (h *replyFault) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	return func(ctx context.Context, cmd redis.Cmder) error {
		name := cmd.Name()
		if (name != "evalsha" && name != "eval") || !h.match(cmd.Args()) {
			return next(ctx, cmd)
		}
		if h.fail.Load() {
			cmd.SetErr(timeout)
			return timeout
		}
		err := next(ctx, cmd)
		if err == nil && h.lose.Add(-1) >= 0 {
			cmd.SetErr(timeout)
			return timeout
		}
		return err
	}
}

// isEnd matches the transition script recording a completed end.
func isEnd(args []any) bool {
	return len(args) > 2 && args[1] == transitionScript.Hash() && slices.Contains(args, any(StateCompleted))
}

// isEndEvents matches the publication of a completed job's events.
func isEndEvents(args []any) bool {
	return len(args) > 4 && slices.Contains(args, any("result")) && slices.Contains(args, any("state"))
}

// startFaultyWorker starts a worker whose Redis client has hook, with cfg
// as its service's configuration.
func (e *jobEnv) startFaultyWorker(hook redis.Hook, cfg Config) *Worker {
	rdb := redis.NewClient(&redis.Options{Addr: e.srv.Addr, MaxRetries: -1})
	rdb.AddHook(hook)
	e.t.Cleanup(func() { _ = rdb.Close() })
	svc := NewService(rdb, e.svc.reg, progress.NewLog(rdb, progress.LogConfig{}), cfg)
	w := NewWorker(svc, rdb, quick())
	if err := w.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(w.Shutdown)
	return w
}

// A job's end survives a Redis call whose outcome is unknown: the
// transition applied with its reply lost (the worker retries it and is
// told it made it), its events appended with the reply lost (the retry
// appends nothing), its events not appended at all while the worker gives
// up (the reconciler publishes them). Each way the job ends with exactly
// one final event, its debt paid, GET agreeing.
func TestAmbiguousEndEndsOnce(t *testing.T) {
	cases := []struct {
		name  string
		match func([]any) bool
		lose  int32
		fail  bool
	}{
		{name: "end applied, reply lost", match: isEnd, lose: 1},
		{name: "end applied twice over, replies lost", match: isEnd, lose: 2},
		{name: "events appended, reply lost", match: isEndEvents, lose: 1},
		{name: "events not published: the reconciler pays", match: isEndEvents, fail: true},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				gate := make(chan struct{})
				close(gate)
				e := newJobEnv(t, srv, gateType(gate))
				cfg := e.svc.cfg
				cfg.EndRetryDelay, cfg.EndRetryMaxDelay, cfg.DebtAge = time.Millisecond, time.Millisecond, time.Nanosecond
				if tc.fail {
					cfg.EndRetryFor = time.Nanosecond // one try: the run gives up at once
				}
				hook := &replyFault{match: tc.match}
				hook.lose.Store(tc.lose)
				hook.fail.Store(tc.fail)
				e.startFaultyWorker(hook, cfg)
				job := e.submitType("gate", `{}`)
				if tc.fail {
					// The end is recorded and owes its events; nobody can
					// publish them until Redis answers again.
					e.waitRecord(job.ID, "owing its end's events", func(r *record) bool { return r.Final != "" && r.Owed != "" })
					if snap := e.events(job.ID); snap.Newest("result", "failed") != nil {
						t.Fatalf("events published through a failing client: %s", describe(snap))
					}
					hook.fail.Store(false)
				}
				e.waitFinal(job.ID)
				e.waitRecord(job.ID, "its debt paid and out of the open index", func(r *record) bool {
					err := e.svc.store.rdb.ZScore(context.Background(), e.svc.store.openKey(), job.ID).Err()
					return r.Owed == "" && errors.Is(err, redis.Nil)
				})
				snap := e.events(job.ID)
				e.checkEnd(job.ID, snap, StateCompleted, "")
				if got, want := stateNames(snap), "pending/0 active/1 completed/0"; got != want {
					t.Fatalf("states %q, want %q", got, want)
				}
			})
		}
	})
}

// waitRecord waits until cond holds for the job's record.
func (e *jobEnv) waitRecord(id, what string, cond func(*record) bool) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rec, err := e.svc.store.get(context.Background(), id)
		if err == nil && cond(rec) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s never %s: %+v %v", id, what, rec, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Retrying a transition that was applied (its caller never learned it)
// is "done by me", and publishes the end once however often it is
// retried, for every end a run makes.
func TestRetriedEndPublishesOnce(t *testing.T) {
	cases := []struct {
		state, errMsg string
		result        string
		last          string
	}{
		{state: StateCompleted, result: `{"n":1}`, last: "result"},
		{state: StateFailed, errMsg: "boom", last: "failed"},
		{state: StateCanceled, last: "state"},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		ctx := context.Background()
		lc := e.svc.lc
		for _, tc := range cases {
			t.Run(tc.state, func(t *testing.T) {
				job, a := e.startRun(t, `{"steps":1}`)
				op := newOp()
				// The first call's reply was lost: as far as the run knows,
				// nothing happened. It was applied all the same.
				if n, err := lc.transition(ctx, op, a.job(), a.task, "1", tc.state, true, tc.errMsg, []byte(tc.result), true); err != nil || n != trDone {
					t.Fatalf("transition: %d %v", n, err)
				}
				for i := range 3 {
					if !lc.finishRunOp(ctx, op, a, tc.state, []byte(tc.result), tc.errMsg) {
						t.Fatalf("retry %d: told the job moved on", i)
					}
				}
				// A different op (another run, or another end) is refused.
				if lc.finishRunOp(ctx, newOp(), a, StateFailed, nil, "late") {
					t.Fatal("a second end was accepted")
				}
				snap := e.events(job.ID)
				e.checkEnd(job.ID, snap, tc.state, tc.errMsg)
				if last := snap.Events[len(snap.Events)-1]; last.Name != tc.last {
					t.Fatalf("last event %s, want %s: %s", last.Name, tc.last, describe(snap))
				}
				rec, err := e.svc.store.get(ctx, job.ID)
				if err != nil || rec.Owed != "" {
					t.Fatalf("debt left: %+v %v", rec, err)
				}
			})
		}
	})
}

// A run whose end is recorded leaves no copy of its result with Asynq
// (the job's record has it: one round trip less per job); a run that
// could not record its end (Redis unavailable for EndRetryFor) leaves one,
// and the lost-job sweep that finds the task completed ends the job with
// that result once Redis answers again.
func TestResultLeftWithAsynqOnlyWhenTheEndIsUnknown(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		gate := make(chan struct{})
		close(gate)
		e := newJobEnv(t, srv, gateType(gate))
		cfg := e.svc.cfg
		cfg.EndRetryDelay, cfg.EndRetryMaxDelay, cfg.EndRetryFor = time.Millisecond, time.Millisecond, time.Nanosecond
		hook := &replyFault{match: isEnd}
		e.startFaultyWorker(hook, cfg)
		for _, tc := range []struct {
			name      string
			fail      bool   // the end's transition can not reach Redis
			asynqCopy string // the result Asynq holds for the task
		}{
			{name: "end recorded", asynqCopy: ""},
			{name: "end unknown", fail: true, asynqCopy: `{"attempt":1}`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				hook.fail.Store(tc.fail)
				job := e.submitType("gate", `{}`)
				e.waitTask(job.ID, "completed in asynq", func(info *asynq.TaskInfo, err error) bool {
					return err == nil && info.State == asynq.TaskStateCompleted
				})
				info, err := e.svc.insp.GetTaskInfo(job.Queue, job.ID)
				if err != nil || string(info.Result) != tc.asynqCopy {
					t.Fatalf("asynq's copy of the result: %q, %v; want %q", info.Result, err, tc.asynqCopy)
				}
				hook.fail.Store(false)
				snap := e.waitFinal(job.ID)
				j := e.checkEnd(job.ID, snap, StateCompleted, "")
				if string(j.Result) != `{"attempt":1}` {
					t.Fatalf("job result %s", j.Result)
				}
				if got, want := stateNames(snap), "pending/0 active/1 completed/0"; got != want {
					t.Fatalf("states %q, want %q", got, want)
				}
			})
		}
	})
}
