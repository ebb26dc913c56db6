package jobs

import (
	"context"
	"strings"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
)

// enqueueGate is the Redis client the service's Asynq client runs on: the
// service's client, except that Asynq's enqueue of a task with a rider in
// the call's context goes in one pipeline with the rider's commands, and
// so one round trip. A submit's rider is its handoff clear and the
// owner's "submitted" event (submittedGuard), which until now took a
// round trip of their own after the enqueue.
//
// Asynq's enqueue is recognized by its keys (asynq:{Q}:t:ID and
// asynq:{Q}:pending), the layout of Asynq's own key names (dequeueGate
// relies on it too); every other command, and an enqueue without a rider,
// goes to Redis unchanged. The pipeline holds keys of different hash
// slots: the service uses the gate off a Redis Cluster only
// (lifecycle.fused).
type enqueueGate struct {
	redis.UniversalClient
}

// riderKey is the context key of a submit's rider.
type riderKey struct{}

// rider is what rides with the enqueue of task: queue queues its commands
// behind the enqueue, given Asynq's key of the task. rode reports that
// they went (the enqueue ran through the gate, once: a retry of the
// enqueue, with the script's source after NOSCRIPT, goes alone).
type rider struct {
	task  string
	queue func(p redis.Pipeliner, taskKey string)
	rode  bool
}

// withRider returns ctx carrying r for the enqueue of r.task.
func withRider(ctx context.Context, r *rider) context.Context {
	return context.WithValue(ctx, riderKey{}, r)
}

// isEnqueueOf reports whether a script call with keys is Asynq's enqueue
// of task, and returns Asynq's key of the task.
func isEnqueueOf(keys []string, task string) (string, bool) {
	if len(keys) != 2 {
		return "", false
	}
	q, ok := strings.CutSuffix(keys[0], ":t:"+task)
	if !ok || !strings.HasPrefix(q, "asynq:{") {
		return "", false
	}
	return keys[0], keys[1] == q+":pending"
}

// EvalSha is the client's EvalSha, with a rider's commands behind Asynq's
// enqueue (Asynq's scripts call EvalSha first).
func (g *enqueueGate) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	r, _ := ctx.Value(riderKey{}).(*rider)
	if r == nil || r.rode {
		return g.UniversalClient.EvalSha(ctx, sha1, keys, args...)
	}
	taskKey, ok := isEnqueueOf(keys, r.task)
	if !ok {
		return g.UniversalClient.EvalSha(ctx, sha1, keys, args...)
	}
	r.rode = true
	var cmd *redis.Cmd
	// Each command's error is its own; a failed round trip fails both.
	_, _ = g.UniversalClient.Pipelined(ctx, func(p redis.Pipeliner) error {
		cmd = p.EvalSha(ctx, sha1, keys, args...)
		r.queue(p, taskKey)
		return nil
	})
	return cmd
}

// submittedGuard finishes a submit whose task Asynq now holds (KEYS[1],
// Asynq's key of the task, exists: the enqueue queued before it in the
// same pipeline went in, or an earlier one did): it clears the job's
// (KEYS[2]) handoff mark if the mark is still for task ARGV[1], and
// appends the owner's "submitted" event (name ARGV[2], payload ARGV[3]).
// Without the task it does neither and replies 0: the submit goes on as
// when the enqueue failed, or makes them in a round trip of their own.
var submittedGuard = progress.NewAppendGuard(`
local function guard()
  if redis.call('EXISTS', KEYS[1]) == 0 then return 0, nil end
  if redis.call('HGET', KEYS[2], 'handoff') == ARGV[1] then redis.call('HDEL', KEYS[2], 'handoff', 'handoff_retry') end
  return 1, {ARGV[2], ARGV[3]}
end
`, 2, 3)
