package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
	"taskstream/wire"
)

// The end of a job off a Redis Cluster (lifecycle.fused): once its final
// transition is recorded, everything that announces it is one script
// (endGuard): the unique lock's release, the debt's clear, the job's exit
// from the open and running indexes, and the append of its end events;
// and the owner's notification is a second script in the same round trip
// (tellGuard). On a Cluster the same work takes announceEndSteps's three
// round trips (the keys span slots).
//
// The debt is the end's once-mark here: it names the op that owes the
// events, and endGuard appends them only while it does and clears it in
// the same atomic step, so the events go out once per op however often
// the run, its retries and the reconciler call it (on a Cluster
// Log.PublishOnce keeps that promise instead). A job whose record is gone
// has no debt to judge by: its end goes the Cluster's way
// (announceEndSteps).
//
// A run's end (worker) does not even take a round trip of its own: it
// rides with Asynq's own script that ends the task (endGate), just after
// the run's handler returns.

// endGuard is the step of a fused end (see above). KEYS: the job's hash,
// the open index, the running index, and for endUniqueGuard the job's
// unique lock. ARGV: the op, the job id, "1" to mark the owner's
// notification due (for tellGuard), then the end's two events (name and
// payload each; the second name "" when there is one). Its reply is
// {'fresh', owner} when it appended the events now, {'told', owner} when
// an earlier call (or the reconciler) did, {'gone'} without a record (it
// did nothing); owner is the job's owner as it is now.
var (
	endGuard       = progress.NewAppendGuard(endFunc(false), 3, 7)
	endUniqueGuard = progress.NewAppendGuard(endFunc(true), 4, 7)
)

func endFunc(unique bool) string {
	release := ""
	if unique {
		release = releaseLockFunc + "  release_lock(KEYS[4], ARGV[2])\n"
	}
	return `
local function guard()
  local f = redis.call('HMGET', KEYS[1], 'owner', 'owed')
  if not f[1] and redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'}, nil end
` + release + `
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
  local owner = f[1] or ''
  if f[2] ~= ARGV[1] then return {'told', owner}, nil end
  redis.call('HDEL', KEYS[1], 'owed', 'owed_at', 'owed_err')
  if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'tell', ARGV[1]) end
  local posts = {ARGV[4], ARGV[5]}
  if ARGV[6] ~= '' then
    posts[3] = ARGV[6]
    posts[4] = ARGV[7]
  end
  return {'fresh', owner}, posts
end
`
}

// tellGuard appends the owner's notification of an end (name ARGV[2],
// payload ARGV[3]) if endGuard marked it due for op ARGV[1] on the job's
// hash (KEYS[1]), and unmarks it: the notification goes once, with the
// end events that were appended now. Queued right behind endGuard, it
// shares its round trip; a mark left by a round trip cut short is honored
// by the caller's next try.
var tellGuard = progress.NewAppendGuard(`
local function guard()
  if redis.call('HGET', KEYS[1], 'tell') ~= ARGV[1] then return 0, nil end
  redis.call('HDEL', KEYS[1], 'tell')
  return 1, {ARGV[2], ARGV[3]}
end
`, 1, 3)

// endStep is a fused end, ready to go: queue puts its scripts on a
// pipeline, settle reads their outcome and finishes what the round trip
// left undone. It carries the context and stop of its announcer, so
// another goroutine (Asynq's, see endGate) may settle it.
type endStep struct {
	l    *lifecycle
	ctx  context.Context
	stop <-chan struct{}

	op, id, state, errMsg string
	result                json.RawMessage
	rec                   *record // nil: unreadable (no notification)
	// owner is whom the notification is for, as the end's transition
	// returned it; "": the owner is read by endGuard and notified after.
	owner string

	guard *progress.AppendGuard
	keys  []string
	args  []any
	// tell: the notification rides in the same round trip (tellGuard).
	tell      bool
	tellKeys  []string
	tellArgs  []any
	tellGroup string

	ended, told *progress.GuardCmd // nil until queued
}

// newEndStep makes the fused end of op (see announceEnd for the
// arguments).
func (l *lifecycle) newEndStep(ctx context.Context, stop <-chan struct{}, op, id, state string, result json.RawMessage, errMsg string, rec *record, owner string) (*endStep, error) {
	events := endEvents(state, result, errMsg)
	args := []any{op, id, "0", "", "", "", ""}
	for i, d := range events {
		b, err := json.Marshal(d.Data)
		if err != nil {
			return nil, fmt.Errorf("jobs: encode the end of %s: %w", id, err)
		}
		args[3+2*i], args[4+2*i] = d.Name, string(b)
	}
	e := &endStep{l: l, ctx: ctx, stop: stop, op: op, id: id, state: state, errMsg: errMsg, result: result, rec: rec, owner: owner,
		guard: endGuard, keys: []string{l.st.jobKey(id), l.st.openKey(), l.st.runningKey()}, args: args}
	if rec != nil && rec.Unique != "" {
		e.guard, e.keys = endUniqueGuard, append(e.keys, rec.Unique)
	}
	if rec != nil && owner != "" {
		post := l.notification(id, owner, rec.Type, state, errMsg)
		b, err := json.Marshal(post.Data)
		if err != nil {
			return nil, fmt.Errorf("jobs: encode the notification of %s: %w", id, err)
		}
		args[2] = "1"
		e.tell, e.tellKeys, e.tellArgs, e.tellGroup = true, []string{l.st.jobKey(id)}, []any{op, post.Name, string(b)}, post.Group
	}
	return e, nil
}

// endEvents are the events that tell of a job's end: "state", then
// "result" or "failed" as the job's last event.
func endEvents(state string, result json.RawMessage, errMsg string) []progress.Draft {
	events := []progress.Draft{{Name: wire.EventState, Data: stateEvent{State: state, Error: errMsg}}}
	switch state {
	case StateCompleted:
		events = append(events, progress.Draft{Name: wire.EventResult, Data: map[string]json.RawMessage{"result": orNull(result)}})
	case StateFailed:
		events = append(events, progress.Draft{Name: wire.EventFailed, Data: map[string]string{"error": errMsg}})
	}
	return events
}

// queue queues the end's scripts on p (by digest), endGuard first.
func (e *endStep) queue(p redis.Pipeliner) {
	var err error
	if e.ended, err = e.l.log.QueueGuard(e.ctx, p, e.guard, e.keys, e.args, Group(e.id)); err != nil {
		// Not queued: settle runs it alone (and reports the error).
		e.ended = nil
	}
	if e.tell {
		if e.told, err = e.l.log.QueueGuard(e.ctx, p, tellGuard, e.tellKeys, e.tellArgs, e.tellGroup); err != nil {
			e.told = nil
		}
	}
}

// run makes the end in one round trip of its own.
func (e *endStep) run() {
	_, _ = e.l.st.rdb.Pipelined(e.ctx, func(p redis.Pipeliner) error { e.queue(p); return nil })
	e.settle()
}

// errNotQueued stands for the outcome of a script that was not queued.
var errNotQueued = errors.New("not queued")

// settle reads the outcome of the end's round trip (queue, then the
// pipeline ran) and finishes what it left undone: a script Redis lacked
// (NOSCRIPT) or whose outcome is unknown goes again alone, endGuard
// retried as a run's end is (persist; it appends once), and the owner is
// notified after when the notification did not ride along.
func (e *endStep) settle() {
	l := e.l
	var reply any
	err := errNotQueued
	if e.ended != nil {
		reply, _, err = e.ended.Result()
	}
	again := err != nil
	if again {
		call := func() error {
			var err error
			reply, _, err = l.log.RunGuard(e.ctx, e.guard, e.keys, e.args, Group(e.id))
			return err
		}
		if e.stop == nil {
			err = call()
		} else {
			err = l.persist(e.ctx, e.stop, "publishing lifecycle events", e.id, call)
		}
	}
	if err != nil {
		l.cfg.Logger.Error("publishing a job's end failed; the reconciler publishes it", "job", e.id, "state", e.state, "err", err)
		return
	}
	res, _ := reply.([]any)
	var kind, owner string
	if len(res) > 0 {
		kind, _ = res[0].(string)
	}
	if len(res) > 1 {
		owner, _ = res[1].(string)
	}
	switch kind {
	case "gone":
		// No record, so no debt to judge by: the end goes as on a
		// Cluster, under PublishOnce.
		l.announceEndSteps(e.ctx, e.stop, e.op, e.id, e.state, e.result, e.errMsg, e.rec, e.owner)
		return
	case "fresh", "told":
	default:
		l.cfg.Logger.Error("publishing a job's end: unexpected reply; the reconciler publishes it", "job", e.id, "reply", reply)
		return
	}
	if e.tell {
		// A tellGuard that ran before endGuard's effective try found
		// nothing to tell: it goes again (the mark keeps it to once).
		terr := errNotQueued
		if e.told != nil {
			_, _, terr = e.told.Result()
		}
		if terr != nil || again {
			_, _, terr = l.log.RunGuard(e.ctx, tellGuard, e.tellKeys, e.tellArgs, e.tellGroup)
		}
		if terr != nil {
			l.cfg.Logger.Warn("job notification lost", "job", e.id, "owner", e.owner, "err", terr)
		}
		return
	}
	if kind == "fresh" && e.rec != nil && owner != "" {
		l.notifyOwner(e.ctx, e.id, owner, e.rec.Type, e.state, e.errMsg)
	}
}

// asynqTaskKey is Asynq's key of task id in queue (the layout of Asynq's
// own key names, as enqueueGate and dequeueGate rely on).
func asynqTaskKey(queue, id string) string { return "asynq:{" + queue + "}:t:" + id }

// endGate is the Redis client a worker's Asynq server runs on (around
// dequeueGate): the client, except that the script Asynq runs on a task
// after its handler returned (MarkAsComplete or Done for a completed run,
// Retry or Archive for a failed or canceled one, Requeue when it was cut
// short by shutdown) carries the run's end with it, in one pipeline and so
// one round trip: the end's scripts first, so Asynq lets go of the task
// only once its end is in the log. Asynq calls its script with a context of
// its own, so the end waits under Asynq's key of the task, which every
// one of those scripts names.
//
// An end Asynq does not call for (it found the run's lease expired) is
// made alone by the worker's heartbeat loop after one to two heartbeats
// (orphans), and at shutdown (all); if the process dies first, the
// end's debt is paid by the reconciler, as when a run dies after recording
// its end.
type endGate struct {
	redis.UniversalClient

	mu      sync.Mutex
	waiting map[string]endRide // Asynq's key of the task → its run's end
	round   uint64             // orphans' count of calls
}

type endRide struct {
	e     *endStep
	round uint64
}

func newEndGate(rdb redis.UniversalClient) *endGate {
	return &endGate{UniversalClient: rdb, waiting: map[string]endRide{}}
}

// wait makes e wait for Asynq's script on the task named by taskKey.
func (g *endGate) wait(taskKey string, e *endStep) {
	g.mu.Lock()
	g.waiting[taskKey] = endRide{e: e, round: g.round}
	g.mu.Unlock()
}

// take returns, and forgets, the end waiting under one of keys.
func (g *endGate) take(keys []string) *endStep {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.waiting) == 0 {
		return nil
	}
	for _, k := range keys {
		if r, ok := g.waiting[k]; ok {
			delete(g.waiting, k)
			return r.e
		}
	}
	return nil
}

// orphans returns, and forgets, the ends that have waited since the
// previous call (all of them when all is set).
func (g *endGate) orphans(all bool) []*endStep {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*endStep
	for k, r := range g.waiting {
		if all || r.round < g.round {
			delete(g.waiting, k)
			out = append(out, r.e)
		}
	}
	g.round++
	return out
}

// EvalSha is the client's EvalSha, with a run's end ahead of Asynq's
// script on its task (Asynq's scripts call EvalSha first; a script Redis
// lacked goes again with its source, alone, through Eval).
func (g *endGate) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	e := g.take(keys)
	if e == nil {
		return g.UniversalClient.EvalSha(ctx, sha1, keys, args...)
	}
	var cmd *redis.Cmd
	// Each command's error is its own; a failed round trip fails all.
	_, _ = g.UniversalClient.Pipelined(ctx, func(p redis.Pipeliner) error {
		e.queue(p)
		cmd = p.EvalSha(ctx, sha1, keys, args...)
		return nil
	})
	e.settle()
	return cmd
}
