package jobs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

// tripLog is a go-redis hook that records, per round trip (a command
// sent alone, or a pipeline), the keys its commands name: a script's
// KEYS, another command's first argument.
type tripLog struct {
	mu    sync.Mutex
	trips [][]tripCmd
}

type tripCmd struct {
	sha  string // a script call's digest ("" for other commands)
	keys []string
}

// hook records h's round trips as a go-redis hook.
func (h *tripLog) hook() redis.Hook { return progresstest.CommandHook(h.add) }

func (h *tripLog) add(cmds []redis.Cmder) {
	trip := make([]tripCmd, 0, len(cmds))
	for _, cmd := range cmds {
		args := cmd.Args()
		var c tripCmd
		switch cmd.Name() {
		case "evalsha", "eval":
			if len(args) < 3 {
				continue
			}
			c.sha, _ = args[1].(string)
			n := 0
			switch v := args[2].(type) {
			case int:
				n = v
			case int64:
				n = int(v)
			}
			for _, k := range args[3:min(3+n, len(args))] {
				s, _ := k.(string)
				c.keys = append(c.keys, s)
			}
		default:
			if len(args) > 1 {
				s, _ := args[1].(string)
				c.keys = []string{s}
			}
		}
		trip = append(trip, c)
	}
	h.mu.Lock()
	h.trips = append(h.trips, trip)
	h.mu.Unlock()
}

// endTrips counts the round trips that name a key of job id (its hash,
// its log, its Asynq task) or one of also (its unique lock) from the one
// that records its end on: the round trips of the run's end, Asynq's
// script on its task included.
func (h *tripLog) endTrips(id, jobKey string, also ...string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n, counting := 0, false
	for _, trip := range h.trips {
		touches := false
		for _, c := range trip {
			if c.sha == transitionScript.Hash() && slices.Contains(c.keys, jobKey) {
				counting = true
			}
			for _, k := range c.keys {
				if strings.Contains(k, id) || slices.Contains(also, k) {
					touches = true
				}
			}
		}
		if counting && touches {
			n++
		}
	}
	return n
}

func (h *tripLog) dump(t *testing.T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, trip := range h.trips {
		t.Logf("%v", trip)
	}
}

// endTypes are job types that end each way a run ends, at once.
func endTypes() []Type {
	def := func(name string, unique time.Duration, err error) Type {
		return Define(Spec[struct{}]{
			Name: name, Unique: unique, MaxRetry: NoRetry, Schema: `{"type":"object"}`, Validate: func(*struct{}) error { return nil },
			Run: func(ctx context.Context, _ struct{}, env Env, r Reporter) (any, error) {
				r.Progress(1, 1, "done", "")
				if err != nil {
					return nil, err
				}
				return map[string]int{"n": 1}, nil
			},
		})
	}
	return []Type{def("end-ok", 0, nil), def("end-unique", time.Hour, nil), def("end-fail", 0, errors.New("boom"))}
}

// A run's end takes two round trips off a Redis Cluster (the last report
// with the end's transition, then the end's events, the debt's clear, the
// indexes, the unique lock and the owner's notification with Asynq's own
// script on the task) and four or five on one (the transition, the
// events, the rest, Asynq's script; a unique lock's release before the
// events). Both ways the job's events, its owner's notification, its
// record, its indexes, its lock and its Asynq task end the same.
func TestRunEndRoundTrips(t *testing.T) {
	cases := []struct {
		typ               string
		state, errMsg     string
		last              string // the job's last event
		task              asynq.TaskState
		fusedRTs, stepRTs int
	}{
		{typ: "end-ok", state: StateCompleted, last: `result {"result":{"n":1}}`, task: asynq.TaskStateCompleted, fusedRTs: 2, stepRTs: 4},
		{typ: "end-unique", state: StateCompleted, last: `result {"result":{"n":1}}`, task: asynq.TaskStateCompleted, fusedRTs: 2, stepRTs: 5},
		{typ: "end-fail", state: StateFailed, errMsg: "boom", last: `failed {"error":"boom"}`, task: asynq.TaskStateArchived, fusedRTs: 2, stepRTs: 4},
	}
	forBothPaths(t, func(t *testing.T, e *jobEnv) {
		ctx := context.Background()
		reg, err := NewRegistry(append(Builtin(), endTypes()...)...)
		if err != nil {
			t.Fatal(err)
		}
		e.svc.reg, e.svc.lc.reg = reg, reg
		trips := &tripLog{}
		rdb := redis.NewClient(&redis.Options{Addr: e.srv.Addr})
		rdb.AddHook(trips.hook())
		t.Cleanup(func() { _ = rdb.Close() })
		svc := NewService(rdb, reg, progress.NewLog(rdb, progress.LogConfig{}), e.svc.cfg)
		svc.lc.fused = e.svc.lc.fused
		// No beat, sweep or reconcile pass touches a job while it is
		// counted.
		cfg := quick()
		cfg.Heartbeat, cfg.LostAfter, cfg.ReconcileInterval = time.Hour, 3*time.Hour, time.Hour
		w := NewWorker(svc, rdb, cfg)
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Shutdown)
		for _, tc := range cases {
			t.Run(tc.typ, func(t *testing.T) {
				// Once first: Redis learns each script (ours and
				// Asynq's) at its first use.
				first := e.submitType(tc.typ, `{}`)
				e.waitFinal(first.ID)
				e.waitTask(first.ID, "ended in Asynq", func(ti *asynq.TaskInfo, err error) bool { return err == nil && ti.State == tc.task })
				e.waitRecord(first.ID, "its debt paid", func(r *record) bool { return r.Owed == "" })
				job := e.submitType(tc.typ, `{}`)
				snap := e.waitFinal(job.ID)
				e.checkEnd(job.ID, snap, tc.state, tc.errMsg)
				e.waitTask(job.ID, "ended in Asynq", func(ti *asynq.TaskInfo, err error) bool { return err == nil && ti.State == tc.task })
				e.waitRecord(job.ID, "its debt paid", func(r *record) bool { return r.Owed == "" })
				snap = e.events(job.ID)
				var got []string
				for _, ev := range snap.Events {
					got = append(got, ev.Name+" "+string(ev.Data))
				}
				if n := len(got); n < 2 || got[n-2] != fmt.Sprintf(`state {"state":%q%s}`, tc.state, errField(tc.errMsg)) || got[n-1] != tc.last {
					t.Fatalf("events %q, want the end's state and %s last", got, tc.last)
				}
				if got, want := stateNames(snap), "pending/0 active/1 "+tc.state+"/0"; got != want {
					t.Fatalf("states %q, want %q", got, want)
				}
				// Exactly one notification, after the end.
				deadline := time.Now().Add(30 * time.Second)
				var notes []string
				for {
					notes = notificationsOf(t, e, "u1", job.ID)
					if len(notes) > 0 || time.Now().After(deadline) {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
				want := fmt.Sprintf(`"Job %s %s"`, tc.typ, tc.state)
				if len(notes) != 1 || !strings.Contains(notes[0], want) {
					t.Fatalf("notifications %q, want one with %s", notes, want)
				}
				fields, err := e.srv.Client(t).HGetAll(ctx, e.svc.store.jobKey(job.ID)).Result()
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range []string{"owed", "owed_at", "owed_err", "tell", "hb"} {
					if _, ok := fields[f]; ok {
						t.Fatalf("record keeps %s: %v", f, fields)
					}
				}
				for _, k := range []string{e.svc.store.openKey(), e.svc.store.runningKey()} {
					if err := e.srv.Client(t).ZScore(ctx, k, job.ID).Err(); !errors.Is(err, redis.Nil) {
						t.Fatalf("the job is still in %s (%v)", k, err)
					}
				}
				if fields["unique"] != "" {
					if n, err := e.srv.Client(t).Exists(ctx, fields["unique"]).Result(); err != nil || n != 0 {
						t.Fatalf("the unique lock is left: %d %v", n, err)
					}
				}
				want2 := tc.stepRTs
				if e.svc.lc.fused {
					want2 = tc.fusedRTs
				}
				if got := trips.endTrips(job.ID, e.svc.store.jobKey(job.ID), fields["unique"]); got != want2 {
					trips.dump(t)
					t.Fatalf("the run's end took %d round trips, want %d", got, want2)
				}
			})
		}
	})
}

func errField(msg string) string {
	if msg == "" {
		return ""
	}
	return fmt.Sprintf(`,"error":%q`, msg)
}

// A run's end that waits for Asynq's script (endGate) is made all the
// same when that script never comes: by the reconciler when the process
// died first (its debt), alone when Redis lost the end's scripts, or late
// after the reconciler paid (nothing more). Each way the end's events and
// the owner's notification go out once and the debt is cleared.
func TestRunEndWithoutItsRide(t *testing.T) {
	cases := []struct {
		name       string
		reconciler bool // the process died: the reconciler pays the debt
		flush      bool // Redis lost its scripts before the end went
		late       bool // the end goes after all, once the reconciler paid
	}{
		{name: "process died: the reconciler pays", reconciler: true},
		{name: "process stalled: the reconciler pays, the late end adds nothing", reconciler: true, late: true},
		{name: "scripts lost before the end went", flush: true, late: true},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		e.svc.cfg.DebtAge = time.Nanosecond
		e.svc.lc.cfg.DebtAge = time.Nanosecond
		ctx := context.Background()
		lc := e.svc.lc
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				job, a := e.startRun(t, `{"steps":1}`)
				var waiting *endStep
				a.ride = func(s *endStep) { waiting = s }
				if got := lc.finishRunHow(ctx, newOp(), a, StateCompleted, []byte(`{"n":1}`), ""); got != finishRecorded {
					t.Fatalf("finishRunHow: %v", got)
				}
				if waiting == nil {
					t.Fatal("the end did not wait for its ride")
				}
				if snap := e.events(job.ID); snap.Newest("result") != nil {
					t.Fatalf("the end went before its ride: %s", describe(snap))
				}
				e.waitRecord(job.ID, "owing its end", func(r *record) bool { return r.Final == StateCompleted && r.Owed != "" })
				if tc.flush {
					if err := e.svc.store.rdb.ScriptFlush(ctx).Err(); err != nil {
						t.Fatal(err)
					}
				}
				if tc.reconciler {
					if open, err := lc.reconcile(ctx, job.ID); err != nil || open {
						t.Fatalf("reconcile: open %v, %v", open, err)
					}
				}
				if tc.late {
					waiting.run()
				}
				// A second pass of the reconciler has nothing to pay.
				if open, err := lc.reconcile(ctx, job.ID); err != nil || open {
					t.Fatalf("reconcile again: open %v, %v", open, err)
				}
				snap := e.events(job.ID)
				e.checkEnd(job.ID, snap, StateCompleted, "")
				if got, want := stateNames(snap), "pending/0 active/1 completed/0"; got != want {
					t.Fatalf("states %q, want %q", got, want)
				}
				if notes := notificationsOf(t, e, "u1", job.ID); len(notes) != 1 {
					t.Fatalf("%d notifications of the end, want 1: %q", len(notes), notes)
				}
				rec, err := e.svc.store.get(ctx, job.ID)
				if err != nil || rec.Owed != "" {
					t.Fatalf("debt left: %+v %v", rec, err)
				}
				if err := e.srv.Client(t).ZScore(ctx, e.svc.store.openKey(), job.ID).Err(); !errors.Is(err, redis.Nil) {
					t.Fatalf("the job is still open (%v)", err)
				}
			})
		}
	})
}

// A worker makes alone the end of a run that Asynq did not end in this
// process (its lease had expired, so it sends no script on the task): its
// heartbeat loop within two heartbeats, or its shutdown.
func TestWorkerMakesEndsAsynqDidNotCarry(t *testing.T) {
	cases := []struct {
		name     string
		shutdown bool
	}{
		{name: "heartbeat"},
		{name: "shutdown", shutdown: true},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				e := newJobEnv(t, srv)
				cfg := quick()
				// The run is the test's own (startRun): the worker serves
				// another queue, or it could dequeue the job's task and run
				// it again, making the test's run stale.
				cfg.Queues = map[string]int{"bulk": 1}
				if tc.shutdown {
					cfg.Heartbeat, cfg.LostAfter = time.Hour, 3*time.Hour
				}
				w := e.startWorkerWith(cfg)
				ctx := context.Background()
				job, a := e.startRun(t, `{"steps":1}`)
				a.ride = func(s *endStep) { w.ends.wait(asynqTaskKey("default", "never-"+job.ID), s) }
				if got := e.svc.lc.finishRunHow(ctx, newOp(), a, StateCompleted, []byte(`{"n":1}`), ""); got != finishRecorded {
					t.Fatalf("finishRunHow: %v", got)
				}
				if tc.shutdown {
					if snap := e.events(job.ID); snap.Newest("result") != nil {
						t.Fatalf("the end went before the shutdown: %s", describe(snap))
					}
					w.Shutdown()
					if snap := e.events(job.ID); snap.Newest("result") == nil {
						t.Fatalf("the end did not go by the end of the shutdown: %s", describe(snap))
					}
				}
				e.checkEnd(job.ID, e.waitFinal(job.ID), StateCompleted, "")
				e.waitRecord(job.ID, "its debt paid", func(r *record) bool { return r.Owed == "" })
				if got, want := stateNames(e.events(job.ID)), "pending/0 active/1 completed/0"; got != want {
					t.Fatalf("states %q, want %q", got, want)
				}
			})
		}
	})
}

// endGate hands an end to the first script that names its task's key,
// once, and counts an end as an orphan only after a whole round of
// orphans.
func TestEndGateTakesAnEndOnce(t *testing.T) {
	g := newEndGate(nil)
	e1, e2 := &endStep{id: "1"}, &endStep{id: "2"}
	g.wait(asynqTaskKey("q", "1"), e1)
	if got := g.orphans(false); len(got) != 0 {
		t.Fatalf("orphans at once: %v", got)
	}
	g.wait(asynqTaskKey("q", "2"), e2)
	steps := []struct {
		keys []string
		want *endStep
	}{
		{keys: []string{"asynq:{q}:active", "asynq:{q}:lease"}, want: nil},
		{keys: []string{"asynq:{q}:active", asynqTaskKey("q", "1")}, want: e1},
		{keys: []string{asynqTaskKey("q", "1")}, want: nil},
		{keys: []string{asynqTaskKey("other", "2")}, want: nil},
	}
	for i, s := range steps {
		if got := g.take(s.keys); got != s.want {
			t.Fatalf("step %d: took %v, want %v", i, got, s.want)
		}
	}
	if got := g.orphans(false); len(got) != 0 {
		t.Fatalf("orphans after one round: %v", got)
	}
	if got := g.orphans(false); len(got) != 1 || got[0] != e2 {
		t.Fatalf("orphans %v, want e2", got)
	}
	if got := g.orphans(true); len(got) != 0 {
		t.Fatalf("orphans left %v", got)
	}
}

// A fused end whose job record Redis lost before the end went (endGuard
// finds no debt to judge by) goes as on a Cluster, under PublishOnce: its
// events once, however often it is made, and the owner told once.
func TestFusedEndOfALostRecord(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		ctx := context.Background()
		job, a := e.startRun(t, `{"steps":1}`)
		var waiting *endStep
		a.ride = func(s *endStep) { waiting = s }
		if got := e.svc.lc.finishRunHow(ctx, newOp(), a, StateCompleted, []byte(`{"n":1}`), ""); got != finishRecorded || waiting == nil {
			t.Fatalf("finishRunHow: %v, waiting %v", got, waiting != nil)
		}
		if err := e.srv.Client(t).Del(ctx, e.svc.store.jobKey(job.ID)).Err(); err != nil {
			t.Fatal(err)
		}
		waiting.run()
		waiting.run()
		snap := e.events(job.ID)
		if got, want := stateNames(snap), "pending/0 active/1 completed/0"; got != want || snap.Events[len(snap.Events)-1].Name != "result" {
			t.Fatalf("states %q, want %q and the result last: %s", got, want, describe(snap))
		}
		if notes := notificationsOf(t, e, "u1", job.ID); len(notes) != 1 {
			t.Fatalf("%d notifications of the end, want 1: %q", len(notes), notes)
		}
	})
}

// notificationsOf returns the notifications about job on user's group.
func notificationsOf(t *testing.T, e *jobEnv, user, job string) []string {
	t.Helper()
	us, err := e.log.Read(context.Background(), progress.UserGroup(user), 0)
	if err != nil {
		t.Fatal(err)
	}
	var notes []string
	for _, ev := range us.Events {
		if ev.Name == "notification" && strings.Contains(string(ev.Data), job) {
			notes = append(notes, string(ev.Data))
		}
	}
	return notes
}
