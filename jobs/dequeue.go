package jobs

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// dequeueGate is the Redis client a worker's Asynq server runs on: the
// worker's client, except that a queue this process found empty is not
// asked again for recheck. Asynq dequeues one task at a time, trying the
// served queues one round trip each in weighted random order until one
// has a task; a busy worker serving nine Asynq queues (three queues at
// three priorities) of which one holds the work spent about four empty
// tries, each a script call, per job it ran. With the gate an empty queue
// costs Redis at most one try per recheck per worker, however many jobs
// the other queues hold.
//
// recheck is half the poll interval: an idle worker finds every queue
// empty and sleeps at least that long (Asynq sleeps 0.5 to 1.5 times the
// poll interval), so its polling is unchanged, and a job put into a queue
// that a busy worker last found empty waits at most recheck longer than
// it would have, which is less than an idle worker's pickup delay.
// Queues that hold work are never skipped, so the weights of WORKER_QUEUES
// and of the priorities hold as before among the queues that have jobs.
//
// Asynq's dequeue is recognized by its keys (asynq:{Q}:pending, :paused,
// :active, :lease), the layout of Asynq's own key names; its reply is the
// task or redis.Nil (the queue is empty or paused). Every other command
// goes to Redis unchanged.
type dequeueGate struct {
	redis.UniversalClient
	recheck time.Duration
	now     func() time.Time

	mu    sync.Mutex
	empty map[string]time.Time // pending key → when this process found the queue empty
	// skipped counts the tries answered without Redis, for tests.
	skipped int64
}

func newDequeueGate(rdb redis.UniversalClient, recheck time.Duration) *dequeueGate {
	return &dequeueGate{UniversalClient: rdb, recheck: recheck, now: time.Now, empty: map[string]time.Time{}}
}

// isDequeue reports whether a script call with keys is Asynq's dequeue of
// one queue, and returns that queue's pending key.
func isDequeue(keys []string) (string, bool) {
	if len(keys) != 4 {
		return "", false
	}
	q, ok := strings.CutSuffix(keys[0], ":pending")
	if !ok || !strings.HasPrefix(q, "asynq:{") {
		return "", false
	}
	return keys[0], keys[1] == q+":paused" && keys[2] == q+":active" && keys[3] == q+":lease"
}

// EvalSha is the client's EvalSha behind the gate (Asynq's scripts call
// it first).
func (g *dequeueGate) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return g.gate(ctx, keys, func() *redis.Cmd { return g.UniversalClient.EvalSha(ctx, sha1, keys, args...) })
}

// Eval is the client's Eval behind the gate (a script Redis did not have
// cached goes again with its source).
func (g *dequeueGate) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return g.gate(ctx, keys, func() *redis.Cmd { return g.UniversalClient.Eval(ctx, script, keys, args...) })
}

func (g *dequeueGate) gate(ctx context.Context, keys []string, call func() *redis.Cmd) *redis.Cmd {
	pending, ok := isDequeue(keys)
	if !ok {
		return call()
	}
	now := g.now()
	g.mu.Lock()
	at, seen := g.empty[pending]
	if seen && now.Sub(at) < g.recheck {
		g.skipped++
		g.mu.Unlock()
		cmd := redis.NewCmd(ctx)
		cmd.SetErr(redis.Nil)
		return cmd
	}
	g.mu.Unlock()
	cmd := call()
	g.mu.Lock()
	switch err := cmd.Err(); {
	case errors.Is(err, redis.Nil):
		g.empty[pending] = now
	case err == nil:
		delete(g.empty, pending)
	}
	g.mu.Unlock()
	return cmd
}

// skips returns how many dequeue tries the gate answered without Redis.
func (g *dequeueGate) skips() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.skipped
}
