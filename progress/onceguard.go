package progress

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// OnceGuard is a PublishOnce behind a condition written in Lua by the
// caller, in one script: the condition and, when it lets the batch go, the
// batch's append are one atomic Redis step and one round trip. A caller
// whose own record changes state and whose events tell of the change (a
// job's end) makes both at once, instead of the change in one call and
// its events in the next.
//
// The script touches the caller's keys and the group's, which live in
// different hash slots unless the caller put its keys in the group's (a
// hash tag of "{group}"): on a Redis Cluster (Log.Sharded) a guard over
// other keys is refused by Redis with CROSSSLOT, so a caller runs it only
// on a single Redis (or Sentinel) and takes two steps on a Cluster.
type OnceGuard struct {
	script *redis.Script
	keys   int
	args   int
}

// NewOnceGuard makes the script of a guard. src is Lua that defines a
// function guard() taking no arguments and returning two values: the
// guard's reply (any value a script may return) and whether the batch is
// appended. It may read KEYS[1] to KEYS[keys] and ARGV[1] to ARGV[args]
// (the guard's own, passed to Queue or Run), and nothing after them (the
// batch's). src runs once per call, before the batch: what it writes is
// written whether or not the batch goes.
func NewOnceGuard(src string, keys, args int) *OnceGuard {
	return &OnceGuard{
		script: redis.NewScript(src + onceFunc + `
local reply, go_on = guard()
if not go_on then return {reply, false} end
return {reply, once(KEYS[` + strconv.Itoa(keys+1) + `], KEYS[` + strconv.Itoa(keys+2) + `], ` + strconv.Itoa(args) + `)}
`),
		keys: keys,
		args: args,
	}
}

// OnceCmd is a guarded PublishOnce queued on a pipeline (Log.QueueOnce):
// its result is read once the pipeline has run.
type OnceCmd struct {
	cmd   *redis.Cmd
	batch *onceBatch
}

// QueueOnce queues on p the guard g, with its keys and args, and behind
// it the append of events to group under key, as PublishOnce does, in one
// script call. withSource sends the script's source (EVAL) instead of its
// digest (EVALSHA): Redis lacks the script (NOSCRIPT) after a restart or a
// SCRIPT FLUSH.
func (l *Log) QueueOnce(ctx context.Context, p redis.Pipeliner, g *OnceGuard, keys []string, args []any, withSource bool, group, key string, events ...Draft) (*OnceCmd, error) {
	return l.queueOnce(ctx, p, g, keys, args, withSource, group, key, events)
}

// queueOnce is QueueOnce on c, a pipeline or the client itself.
func (l *Log) queueOnce(ctx context.Context, c redis.Scripter, g *OnceGuard, keys []string, args []any, withSource bool, group, key string, events []Draft) (*OnceCmd, error) {
	if len(keys) != g.keys || len(args) != g.args {
		return nil, fmt.Errorf("%w: the guard takes %d keys and %d args, not %d and %d", ErrInvalid, g.keys, g.args, len(keys), len(args))
	}
	b, err := l.newBatch(group, key, events)
	if err != nil {
		return nil, err
	}
	allKeys := append(append(make([]string, 0, len(keys)+2), keys...), l.metaKey(group), l.streamKey(group))
	allArgs := append(append(make([]any, 0, len(args)+len(b.args)), args...), b.args...)
	oc := &OnceCmd{batch: b}
	if withSource {
		oc.cmd = g.script.Eval(ctx, c, allKeys, allArgs...)
	} else {
		oc.cmd = g.script.EvalSha(ctx, c, allKeys, allArgs...)
	}
	return oc, nil
}

// ErrNoScript is the error of a queued script call that Redis did not
// have cached (NOSCRIPT): it goes again with its source.
var ErrNoScript = errors.New("progress: script not cached in Redis")

// Result returns, once the pipeline ran, the guard's reply and, when the
// guard let the batch go, its events with their seqs and whether this call
// appended them (fresh), as PublishOnce does; evs is nil when the guard
// held the batch back. err is the call's error (wrapping ErrNoScript when
// Redis lacked the script, ErrUnavailable when Redis is unavailable): then
// neither the guard's outcome nor the batch's is known.
func (c *OnceCmd) Result() (reply any, evs []*Event, fresh bool, err error) {
	res, err := c.cmd.Slice()
	if err != nil {
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			return nil, nil, false, fmt.Errorf("progress: publish %s batch %s: %w: %w", c.batch.group, c.batch.key, ErrNoScript, err)
		}
		_, _, err = c.batch.result(nil, err)
		return nil, nil, false, err
	}
	if len(res) != 2 {
		return nil, nil, false, fmt.Errorf("progress: publish %s: unexpected reply %v", c.batch.group, res)
	}
	if res[1] == nil { // the guard held the batch back
		return res[0], nil, false, nil
	}
	once, _ := res[1].([]any)
	evs, fresh, err = c.batch.result(once, nil)
	return res[0], evs, fresh, err
}

// RunOnce is QueueOnce in a round trip of its own, sending the script's
// source when Redis lacks it.
func (l *Log) RunOnce(ctx context.Context, g *OnceGuard, keys []string, args []any, group, key string, events ...Draft) (reply any, evs []*Event, fresh bool, err error) {
	for _, withSource := range []bool{false, true} {
		var c *OnceCmd
		if c, err = l.queueOnce(ctx, l.rdb, g, keys, args, withSource, group, key, events); err != nil {
			return nil, nil, false, err
		}
		reply, evs, fresh, err = c.Result()
		if !errors.Is(err, ErrNoScript) {
			break
		}
	}
	return reply, evs, fresh, err
}
