package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

func TestIsDequeue(t *testing.T) {
	for _, tc := range []struct {
		name string
		keys []string
		want bool
	}{
		{"asynq's dequeue", []string{"asynq:{default}:pending", "asynq:{default}:paused", "asynq:{default}:active", "asynq:{default}:lease"}, true},
		{"a priority queue", []string{"asynq:{bulk:high}:pending", "asynq:{bulk:high}:paused", "asynq:{bulk:high}:active", "asynq:{bulk:high}:lease"}, true},
		{"keys of two queues", []string{"asynq:{a}:pending", "asynq:{b}:paused", "asynq:{a}:active", "asynq:{a}:lease"}, false},
		{"another asynq script", []string{"asynq:{a}:t:1", "asynq:{a}:pending", "asynq:{a}:active", "asynq:{a}:lease"}, false},
		{"three keys", []string{"asynq:{a}:pending", "asynq:{a}:paused", "asynq:{a}:active"}, false},
		{"not asynq's", []string{"ts:{a}:pending", "ts:{a}:paused", "ts:{a}:active", "ts:{a}:lease"}, false},
		{"no keys", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, got := isDequeue(tc.keys); got != tc.want {
				t.Fatalf("isDequeue(%q) = %v, want %v", tc.keys, got, tc.want)
			}
		})
	}
}

// The gate answers a dequeue of a queue found empty without Redis until
// recheck has passed, never skips a queue whose last try found a task,
// and passes every other script call through.
func TestDequeueGate(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		ctx := context.Background()
		rdb := srv.Client(t)
		now := time.Unix(1000, 0)
		g := newDequeueGate(rdb, time.Second)
		g.now = func() time.Time { return now }
		// A stand-in for Asynq's dequeue with its keys: pop one task.
		pop := redis.NewScript(`return redis.call('RPOP', KEYS[1])`)
		keys := []string{"asynq:{q}:pending", "asynq:{q}:paused", "asynq:{q}:active", "asynq:{q}:lease"}
		dequeue := func() (string, error) { return pop.Run(ctx, g, keys, 0, "asynq:{q}:t:").Text() }
		push := func(ids ...any) {
			t.Helper()
			if err := rdb.LPush(ctx, keys[0], ids...).Err(); err != nil {
				t.Fatal(err)
			}
		}

		steps := []struct {
			name    string
			advance time.Duration
			push    []any
			want    string // "" : redis.Nil
			skips   int64  // the gate's skips after the step
		}{
			{name: "empty queue: asked, found empty", want: "", skips: 0},
			{name: "a task arrives within recheck: not asked", push: []any{"t1"}, want: "", skips: 1},
			{name: "recheck passed: asked again", advance: time.Second, want: "t1", skips: 1},
			{name: "a queue that had a task is asked at once", push: []any{"t2", "t3"}, want: "t2", skips: 1},
			{name: "and again", want: "t3", skips: 1},
			{name: "found empty", want: "", skips: 1},
			{name: "just before recheck: not asked", advance: time.Second - time.Millisecond, push: []any{"t4"}, want: "", skips: 2},
			{name: "at recheck: asked", advance: time.Millisecond, want: "t4", skips: 2},
		}
		for _, s := range steps {
			now = now.Add(s.advance)
			if len(s.push) > 0 {
				push(s.push...)
			}
			got, err := dequeue()
			if s.want == "" && !errors.Is(err, redis.Nil) || s.want != "" && (err != nil || got != s.want) {
				t.Fatalf("%s: got %q, %v; want %q", s.name, got, err, s.want)
			}
			if g.skips() != s.skips {
				t.Fatalf("%s: %d skips, want %d", s.name, g.skips(), s.skips)
			}
		}

		// Other scripts, even on asynq's keys, always reach Redis.
		other := []string{"asynq:{q}:pending"}
		for i := 0; i < 3; i++ {
			if _, err := pop.Run(ctx, g, other).Result(); !errors.Is(err, redis.Nil) {
				t.Fatalf("other script: %v", err)
			}
		}
		push("t5")
		if v, err := pop.Run(ctx, g, other).Text(); err != nil || v != "t5" {
			t.Fatalf("other script after a push: %q, %v", v, err)
		}
		if g.skips() != 2 {
			t.Fatalf("other scripts were skipped: %d skips", g.skips())
		}
	})
}

// A busy worker serving every queue and priority (nine Asynq queues)
// stops asking the empty ones before each job, runs every job of the busy
// queue through its whole lifecycle, and still picks up a job that
// arrives in a queue it found empty.
func TestWorkerSkipsEmptyQueuesWhileBusy(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		const n = 60
		ids := make([]string, n)
		for i := range ids {
			ids[i] = e.submit(`{"steps": 3, "interval_ms": 0}`).ID
		}
		cfg := quick()
		cfg.PollInterval = 2 * time.Second // recheck 1s: many dequeues fall within it
		w := e.startWorkerWith(cfg)
		for _, id := range ids[:n/2] {
			e.waitFinal(id)
		}
		late, _, err := e.svc.SubmitRequest(context.Background(), "u1", Request{Type: "steps",
			Params: json.RawMessage(`{"steps": 3, "interval_ms": 0}`), Options: Options{Queue: "bulk", Priority: "low"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range append(ids, late.ID) {
			snap := e.waitFinal(id)
			e.checkEnd(id, snap, StateCompleted, "")
			if got := stateNames(snap); got != "pending/0 active/1 completed/0" {
				t.Fatalf("job %s states %s", id, got)
			}
		}
		if w.gate.skips() == 0 {
			t.Fatal("the gate skipped no dequeue of an empty queue while the worker was busy")
		}
	})
}
