package jobs

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

func TestParseSchedule(t *testing.T) {
	reg, err := NewRegistry(append(Builtin(), optionType())...)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, file string
		err        string // a part of the error; "" when valid
	}{
		{name: "valid", file: `{"schedules":[
			{"name":"nightly","spec":"0 3 * * *","type":"report","params":{"rows":100}},
			{"name":"often","spec":"@every 90s","type":"opt","queue":"bulk","priority":"low","timeout":"2m","max_retry":0},
			{"name":"zoned","spec":"CRON_TZ=Europe/Paris 30 8 * * 1-5","type":"steps","params":{"steps":3}}]}`},
		{name: "empty", file: `{"schedules":[]}`},
		{name: "not JSON", file: `schedules: []`, err: "not the expected JSON"},
		{name: "unknown field", file: `{"schedules":[{"name":"a","spec":"@daily","type":"steps","params":{"steps":1},"cron":"x"}]}`, err: "unknown field"},
		{name: "two objects", file: `{"schedules":[]} {}`, err: "data after"},
		{name: "bad name", file: `{"schedules":[{"name":"A B","spec":"@daily","type":"steps","params":{"steps":1}}]}`, err: "name"},
		{name: "name twice", file: `{"schedules":[{"name":"a","spec":"@daily","type":"steps","params":{"steps":1}},{"name":"a","spec":"@hourly","type":"steps","params":{"steps":1}}]}`, err: "twice"},
		{name: "bad spec", file: `{"schedules":[{"name":"a","spec":"every day","type":"steps","params":{"steps":1}}]}`, err: "spec"},
		{name: "six fields", file: `{"schedules":[{"name":"a","spec":"0 0 3 * * *","type":"steps","params":{"steps":1}}]}`, err: "spec"},
		{name: "unknown type", file: `{"schedules":[{"name":"a","spec":"@daily","type":"nope"}]}`, err: "unknown type"},
		{name: "bad params", file: `{"schedules":[{"name":"a","spec":"@daily","type":"steps","params":{"steps":0}}]}`, err: "params.steps"},
		{name: "bad option", file: `{"schedules":[{"name":"a","spec":"@daily","type":"opt","queue":"nope"}]}`, err: "queue"},
		{name: "delay", file: `{"schedules":[{"name":"a","spec":"@daily","type":"opt","delay":"1s"}]}`, err: "delay and run_at"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			entries, err := ParseSchedule([]byte(c.file), reg)
			if c.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range entries {
					if n := e.Next(time.Now()); !n.After(time.Now()) {
						t.Fatalf("%s: next %v", e.Name, n)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.err) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %v, want one line mentioning %q", err, c.err)
			}
		})
	}
}

// "@every" ticks are the same whichever process computes them.
func TestEveryTicksAreAligned(t *testing.T) {
	reg, _ := NewRegistry(Builtin()...)
	entries, err := ParseSchedule([]byte(`{"schedules":[{"name":"a","spec":"@every 10s","type":"steps","params":{"steps":1}}]}`), reg)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, from := range []time.Duration{0, time.Millisecond, 3 * time.Second, 9999 * time.Millisecond} {
		if got := entries[0].Next(base.Add(from)); !got.Equal(base.Add(10 * time.Second)) {
			t.Errorf("next after +%v is %v", from, got)
		}
	}
}

// Two schedulers (two replicas) on one Redis: the ticks are submitted as
// normal jobs of the owner, each tick once; when the leader stops, the
// other takes over; Entries shows the next and last run on either.
func TestSchedulerOneLeader(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newOptionEnv(t, srv, Config{}, nil)
		e.startWorkerWith(quick())
		entries, err := ParseSchedule([]byte(`{"schedules":[{"name":"tick","spec":"@every 1s","type":"opt","params":{"n":5},"priority":"high"}]}`), e.svc.Registry())
		if err != nil {
			t.Fatal(err)
		}
		lease := progress.LeaderConfig{Key: "ts:scheduler", TTL: 500 * time.Millisecond}
		start := func() (*Scheduler, context.CancelFunc, *sync.WaitGroup) {
			s, err := NewScheduler(e.svc, srv.Client(t), entries, SchedulerConfig{Owner: "system", Lease: lease, CatchUp: time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Go(func() { _ = s.Run(ctx) })
			t.Cleanup(func() { cancel(); wg.Wait() })
			return s, cancel, &wg
		}
		began := time.Now() // no tick before this is submitted (CatchUp is 1ms)
		a, stopA, waitA := start()
		b, _, _ := start()
		ctx := context.Background()
		waitJobs := func(n int) []*Job {
			deadline := time.Now().Add(30 * time.Second)
			for {
				list, err := e.svc.List(ctx, "system", 100)
				if err != nil {
					t.Fatal(err)
				}
				if len(list) >= n {
					return list
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d periodic jobs after 30s, want %d", len(list), n)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		waitJobs(2)
		stopA()
		waitA.Wait()
		list := waitJobs(len(waitJobs(0)) + 2) // b took over
		// Each job is a normal job of its tick, and no tick has two jobs:
		// every job is the one its tick's Idempotency-Key names.
		named := map[string]bool{}
		for tick := began.Truncate(time.Second); !tick.After(time.Now()); tick = tick.Add(time.Second) {
			v, err := srv.Client(t).Get(ctx, e.svc.store.idemKey("system", tickKey("tick", tick))).Result()
			if err == nil {
				id, _, _ := strings.Cut(v, " ")
				named[id] = true
			}
		}
		for _, j := range list {
			if !named[j.ID] {
				t.Fatalf("job %s (created %v) is no tick's job: a tick was submitted twice", j.ID, j.CreatedAt)
			}
			if j.Schedule != "tick" || j.Owner != "system" || j.Priority != "high" || j.Type != "opt" {
				t.Fatalf("periodic job %+v", j)
			}
		}
		done := e.waitFinal(list[len(list)-1].ID)
		if got := stateNames(done); got != "pending/0 active/1 completed/0" {
			t.Fatalf("a periodic job's states: %s", got)
		}
		for _, s := range []*Scheduler{a, b} {
			views, err := s.Entries(ctx, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if len(views) != 1 || views[0].Name != "tick" || views[0].Spec != "@every 1s" || !views[0].NextRun.After(time.Now().Add(-time.Second)) ||
				views[0].LastRun == nil || views[0].LastJob == "" {
				b, _ := json.Marshal(views)
				t.Fatalf("entries %s", b)
			}
		}
	})
}

// FuzzParseSchedule: a schedule file is outside input; whatever it holds,
// parsing does not panic, and an accepted file's entries all have a next
// tick and pass their type's checks.
func FuzzParseSchedule(f *testing.F) {
	for _, s := range []string{
		`{"schedules":[{"name":"a","spec":"@every 1s","type":"steps","params":{"steps":1}}]}`,
		`{"schedules":[{"name":"b","spec":"CRON_TZ=Europe/Paris 0 3 * * 1-5","type":"opt","queue":"bulk","max_retry":1}]}`,
		`{"schedules":[{"name":"c","spec":"TZ=Nowhere/City * * * * *","type":"steps","params":{"steps":1}}]}`,
		`{"schedules":[{"name":"d","spec":"@every -1s","type":"steps","params":{"steps":1}}]}`,
		`{"schedules":[{"name":"e","spec":"0 0 30 2 *","type":"steps","params":{"steps":1}}]}`,
		`{"schedules":null}`, `[]`, `{}`,
	} {
		f.Add(s)
	}
	reg, err := NewRegistry(append(Builtin(), optionType())...)
	if err != nil {
		f.Fatal(err)
	}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, file string) {
		entries, err := ParseSchedule([]byte(file), reg)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("a multi-line error: %q", err)
			}
			return
		}
		for _, e := range entries {
			if _, ok := reg.Lookup(e.Type); !ok || !ValidQueueName(e.Name) {
				t.Fatalf("accepted entry %+v", e)
			}
			e.Next(now) // must not panic nor loop (a spec that never fires gives the zero time)
		}
	})
}

// A tick's submit that has begun is finished even when the lead ends
// meanwhile: cut halfway it would leave a failed job and release the
// tick's Idempotency-Key. A submit given a context that has already
// ended stands for the worst case: the cancellation before the first
// Redis call.
func TestSchedulerFinishesABegunTick(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newOptionEnv(t, srv, Config{}, nil)
		entries, err := ParseSchedule([]byte(`{"schedules":[{"name":"tick","spec":"@every 1s","type":"opt","params":{"n":5}}]}`), e.svc.Registry())
		if err != nil {
			t.Fatal(err)
		}
		s, err := NewScheduler(e.svc, srv.Client(t), entries, SchedulerConfig{Owner: "system", Lease: progress.LeaderConfig{Key: "ts:scheduler-begun"}})
		if err != nil {
			t.Fatal(err)
		}
		ended, cancel := context.WithCancel(context.Background())
		cancel()
		tick := time.Now().Truncate(time.Second)
		s.submit(ended, entries[0], tick)
		ctx := context.Background()
		v, err := srv.Client(t).Get(ctx, e.svc.store.idemKey("system", tickKey("tick", tick))).Result()
		if err != nil {
			t.Fatalf("the tick's Idempotency-Key: %v", err)
		}
		id, _, _ := strings.Cut(v, " ")
		j, err := e.svc.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if j.Schedule != "tick" || j.State == StateFailed {
			t.Fatalf("the tick's job %+v", j)
		}
	})
}
