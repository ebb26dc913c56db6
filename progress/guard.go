package progress

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// AppendGuard is an append to a group's log behind a condition written in
// Lua by the caller, in one script: the caller's step (a state change of
// its own record) and the events that tell of it are one atomic Redis
// step and one round trip, and only a call whose step made the change
// appends them. The step also writes the events' payloads, from what it
// found (an attempt number), so the caller need not read first.
//
// The script touches the caller's keys and the group's, which live in
// different hash slots unless the caller's carry the group's hash tag
// ("{group}"): a Redis Cluster (Log.Sharded) refuses such a script with
// CROSSSLOT, so a caller runs it only on a single Redis (or Sentinel) and
// takes two steps on a Cluster.
type AppendGuard struct {
	script *redis.Script
	keys   int
	args   int
}

// NewAppendGuard makes the script of a guarded append. src is Lua that
// defines a function guard(), taking no arguments and returning two
// values: the guard's reply (any value a script may return) and the
// events to append, nil or an array of names and payloads alternating
// ({name1, data1, name2, data2, …}; each payload JSON text without a
// newline, each name a valid event name: the caller's code vouches for
// both). src may use KEYS[1] to KEYS[keys] and ARGV[1] to ARGV[args] (the
// guard's own, given to RunGuard), nothing after them, and no Lua name
// starting with "append_".
func NewAppendGuard(src string, keys, args int) *AppendGuard {
	k, a := strconv.Itoa(keys), strconv.Itoa(args)
	return &AppendGuard{
		script: NewScript(src + appendFunc + `
local append_reply, append_posts = guard()
local append_out = {}
if append_posts then
  for i = 1, #append_posts, 2 do
    local seq, epoch = append_event(KEYS[` + k + `+1], KEYS[` + k + `+2], ARGV[` + a + `+1], append_posts[i], append_posts[i+1],
      ARGV[` + a + `+2], ARGV[` + a + `+3], ARGV[` + a + `+4], ARGV[` + a + `+5], ARGV[` + a + `+6])
    append_out[#append_out+1] = seq
    append_out[#append_out+1] = epoch
    append_out[#append_out+1] = append_posts[i]
    append_out[#append_out+1] = append_posts[i+1]
  end
end
return {append_reply, append_out}
`),
		keys: keys,
		args: args,
	}
}

// RunGuard runs g on keys and args, and appends to group's log (and
// publishes) the events g's step returned, in one script. It returns the
// step's reply and the events appended, in order (none when the step
// returned none). Redis lacking the script (a restart) gets its source.
// An error means the outcome is unknown: the step and its appends may or
// may not have run (errors that mean Redis is unavailable wrap
// ErrUnavailable).
func (l *Log) RunGuard(ctx context.Context, g *AppendGuard, keys []string, args []any, group string) (any, []*Event, error) {
	c, err := l.queueGuard(ctx, l.rdb, g, keys, args, group, false)
	if err != nil {
		return nil, nil, err
	}
	reply, evs, err := c.Result()
	if !errors.Is(err, ErrNoScript) {
		return reply, evs, err
	}
	if c, err = l.queueGuard(ctx, l.rdb, g, keys, args, group, true); err != nil {
		return nil, nil, err
	}
	return c.Result()
}

// GuardCmd is a guarded append queued on a pipeline (QueueGuard): its
// result is read once the pipeline has run.
type GuardCmd struct {
	l     *Log
	cmd   *redis.Cmd
	group string
	start time.Time
}

// QueueGuard queues on p the script of g, as RunGuard runs it, by its
// digest: a pipeline that runs it with other commands (one round trip).
// Redis lacking the script is told by Result (ErrNoScript): the step did
// not run, and the caller runs it again (RunGuard).
func (l *Log) QueueGuard(ctx context.Context, p redis.Pipeliner, g *AppendGuard, keys []string, args []any, group string) (*GuardCmd, error) {
	return l.queueGuard(ctx, p, g, keys, args, group, false)
}

// ErrNoScript is GuardCmd.Result's error when Redis did not have the
// script cached (NOSCRIPT): nothing ran.
var ErrNoScript = errors.New("progress: script not cached in Redis")

func (l *Log) queueGuard(ctx context.Context, c redis.Scripter, g *AppendGuard, keys []string, args []any, group string, withSource bool) (*GuardCmd, error) {
	if len(keys) != g.keys || len(args) != g.args {
		return nil, fmt.Errorf("%w: the guard takes %d keys and %d args, not %d and %d", ErrInvalid, g.keys, g.args, len(keys), len(args))
	}
	if !ValidGroup(group) {
		return nil, fmt.Errorf("%w: group %q", ErrInvalid, group)
	}
	now := time.Now().UTC()
	allKeys := append(append(make([]string, 0, len(keys)+2), keys...), l.appendKeys(group)...)
	allArgs := append(append(make([]any, 0, len(args)+6), args...),
		newEpoch(), now.Format(time.RFC3339Nano), l.maxLen(group), l.cfg.TTL.Milliseconds(), l.Channel(group), l.publishCmd())
	gc := &GuardCmd{l: l, group: group, start: now}
	if withSource {
		gc.cmd = g.script.Eval(ctx, c, allKeys, allArgs...)
	} else {
		gc.cmd = g.script.EvalSha(ctx, c, allKeys, allArgs...)
	}
	return gc, nil
}

// Result returns, once the command has run, the step's reply and the
// events appended, as RunGuard does.
func (c *GuardCmd) Result() (any, []*Event, error) {
	res, err := c.cmd.Slice()
	if IsNoScript(err) {
		return nil, nil, fmt.Errorf("progress: guarded publish to %s: %w: %w", c.group, ErrNoScript, err)
	}
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("unexpected reply %v", res)
	}
	var out []any
	if err == nil {
		out, _ = res[1].([]any)
		if len(out)%4 != 0 {
			err = fmt.Errorf("unexpected reply %v", res)
		}
	}
	if c.l.cfg.OnPublish != nil {
		c.l.cfg.OnPublish(c.group, len(out)/4, time.Since(c.start), err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("progress: guarded publish to %s: %w", c.group, unavailable(err))
	}
	evs := make([]*Event, 0, len(out)/4)
	for i := 0; i < len(out); i += 4 {
		ev := &Event{Group: c.group, Time: c.start}
		ev.Seq, _ = out[i].(int64)
		ev.Epoch = replyString(out[i+1])
		ev.Name = replyString(out[i+2])
		ev.Data = []byte(replyString(out[i+3]))
		evs = append(evs, ev)
	}
	return res[0], evs, nil
}

// replyString reads a string a script returned: the embedded Redis's Lua
// hands a string that reads as a number (an epoch of digits only, a
// payload such as "3") back as an integer.
func replyString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case int64:
		return strconv.FormatInt(v, 10)
	}
	return ""
}
