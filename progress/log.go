package progress

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/wire"
)

// LogConfig configures a Log. The zero value is usable: every field has a
// documented default.
type LogConfig struct {
	// Prefix is prepended to every key and channel the log uses, so several
	// deployments can share one Redis. Default "ts".
	Prefix string
	// MaxLen bounds each group's history: older events are trimmed
	// (approximately on Redis, exactly on miniredis). Default 1000.
	MaxLen int64
	// TTL is how long a group's log lives after its last event. Default 24h.
	TTL time.Duration
	// KindMaxLen overrides MaxLen for the groups of one kind, the part of
	// the name before ":" (e.g. {"chat": 500} for room history).
	KindMaxLen map[string]int64
	// OnPublish, when set, is called after every append step: a Publish,
	// each post of a PublishMany, PublishWith or PublishThen (each with
	// the pipeline's time; not a post a newerGuard superseded), a
	// PublishOnce, and a guarded append (RunGuard, or a QueueGuard's
	// Result: timed from its queueing). It gets the group, how many events
	// the step appended (0 on an error, when PublishOnce found its batch
	// already published, or when a guard appended none), how long the
	// Redis step took and its error (nil on success), so a metrics layer
	// outside this package can count and time publishes without progress
	// importing it. It must be fast and must not block. Default nil
	// (nothing observed).
	OnPublish func(group string, appended int, took time.Duration, err error)
}

func (c LogConfig) withDefaults() LogConfig {
	if c.Prefix == "" {
		c.Prefix = "ts"
	}
	if c.MaxLen <= 0 {
		c.MaxLen = 1000
	}
	if c.TTL <= 0 {
		c.TTL = 24 * time.Hour
	}
	return c
}

// Log is the per-group event log in Redis: a stream of events with a
// monotonically increasing seq, an epoch, bounded length and a TTL, plus
// a pub/sub channel that carries every appended event live.
//
// Keys are Redis-Cluster-safe: both keys of a group share the hash tag
// "{group}", so the append script touches a single slot.
//
// A Log is safe for concurrent use.
//
// On a Redis Cluster (rdb is a *redis.ClusterClient, REDIS_MODE=cluster)
// the log uses sharded pub/sub (Redis 7): events go out with SPUBLISH on
// a channel that carries the group's hash tag too, so each event reaches
// the one shard that holds the group, not every node as a plain PUBLISH
// does (cluster-wide PUBLISH fan-out would cap what more nodes can carry).
// Single servers and Sentinel keep PUBLISH.
type Log struct {
	rdb     redis.UniversalClient
	cfg     LogConfig
	sharded bool // sharded pub/sub: rdb is a Cluster client
}

// NewLog returns a Log on rdb.
func NewLog(rdb redis.UniversalClient, cfg LogConfig) *Log {
	_, sharded := rdb.(*redis.ClusterClient)
	return &Log{rdb: rdb, cfg: cfg.withDefaults(), sharded: sharded}
}

// Sharded reports whether the log publishes with sharded pub/sub
// (SPUBLISH), which it does on a Redis Cluster.
func (l *Log) Sharded() bool { return l.sharded }

// publishCmd is the command the append scripts publish with.
func (l *Log) publishCmd() string {
	if l.sharded {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

// maxLen is the history bound of group.
func (l *Log) maxLen(group string) int64 {
	kind := wire.KindOf(group)
	if n, ok := l.cfg.KindMaxLen[kind]; ok && n > 0 {
		return n
	}
	return l.cfg.MaxLen
}

// Config returns the log's configuration with defaults applied.
func (l *Log) Config() LogConfig { return l.cfg }

func (l *Log) metaKey(group string) string   { return l.cfg.Prefix + ":{" + group + "}:meta" }
func (l *Log) streamKey(group string) string { return l.cfg.Prefix + ":{" + group + "}:log" }

// Channel is the pub/sub channel that carries group's live events. A
// sharded channel carries the group's hash tag, so it lives in the slot
// of the group's keys: the append script may only publish to a channel
// of its own slot, and a subscriber finds it on the shard that holds the
// group. The plain name is kept elsewhere, so processes of an older
// version still hear each other during a rolling upgrade.
func (l *Log) Channel(group string) string {
	if l.sharded {
		return l.cfg.Prefix + ":{" + group + "}:ch"
	}
	return l.cfg.Prefix + ":ch:" + group
}

func (l *Log) groupOf(channel string) (string, bool) {
	if l.sharded {
		rest, ok := strings.CutPrefix(channel, l.cfg.Prefix+":{")
		if !ok {
			return "", false
		}
		return strings.CutSuffix(rest, "}:ch")
	}
	return strings.CutPrefix(channel, l.cfg.Prefix+":ch:")
}

// appendScript does seq+1, XADD (bounded) and PUBLISH (or SPUBLISH, ARGV[8]) in one atomic step.
// The stream id of an event is "SEQ-0", so reading "after seq N" is an
// XRANGE from "N-1" (see afterID). When the meta hash is new (first event, or the log
// was lost) a fresh epoch is stored and any stale stream is dropped so the
// ids can start again at 1.
var appendScript = NewScript(appendBody)

// appendBody is appendScript's source, shared with the scripts that
// append under a condition (presence's newerScript) so that there is one
// append step.
const appendBody = appendFunc + `
local seq, epoch = append_event(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
return {seq, epoch}
`

// appendFunc is the append step as a Lua function, for appendBody and
// the scripts of AppendGuard: append_event(meta, log, new epoch, name,
// data, time, max length, TTL ms, channel, publish command) returns the
// event's seq and epoch.
const appendFunc = `
local function append_event(meta, log, epoch0, name, data, ts, maxlen, ttl, channel, pub)
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local epoch
  if seq == 1 then
    epoch = epoch0
    redis.call('HSET', meta, 'epoch', epoch)
    redis.call('DEL', log)
  else
    epoch = redis.call('HGET', meta, 'epoch')
  end
  redis.call('XADD', log, 'MAXLEN', '~', maxlen, seq .. '-0', 'e', name, 'd', data, 't', ts)
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', log, ttl)
  redis.call(pub, channel, seq .. '\n' .. epoch .. '\n' .. name .. '\n' .. ts .. '\n' .. data)
  return seq, epoch
end
`

// appendKeys and appendArgs are appendScript's KEYS and ARGV for one
// event: written once, so Publish and PublishMany can not drift apart.
func (l *Log) appendKeys(group string) []string {
	return []string{l.metaKey(group), l.streamKey(group)}
}

func (l *Log) appendArgs(group, name string, raw json.RawMessage, ts string) []any {
	return []any{newEpoch(), name, string(raw), ts, l.maxLen(group), l.cfg.TTL.Milliseconds(), l.Channel(group), l.publishCmd()}
}

// ErrInvalid is wrapped by errors for a malformed group, event name or data.
var ErrInvalid = errors.New("progress: invalid argument")

// Publish appends an event named name with payload data (any JSON-encodable
// value, or a json.RawMessage) to group's log and publishes it to the
// group's live subscribers, in one atomic Redis step. It returns the event
// with its seq and epoch.
func (l *Log) Publish(ctx context.Context, group, name string, data any) (*Event, error) {
	if !ValidGroup(group) {
		return nil, fmt.Errorf("%w: group %q", ErrInvalid, group)
	}
	if !ValidEventName(name) {
		return nil, fmt.Errorf("%w: event name %q", ErrInvalid, name)
	}
	raw, err := encodeData(data)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	ts := now.Format(time.RFC3339Nano)
	res, err := appendScript.Run(ctx, l.rdb, l.appendKeys(group), l.appendArgs(group, name, raw, ts)...).Slice()
	if l.cfg.OnPublish != nil {
		appended := 1
		if err != nil {
			appended = 0
		}
		l.cfg.OnPublish(group, appended, time.Since(now), err)
	}
	if err != nil {
		return nil, fmt.Errorf("progress: publish %s %s: %w", group, name, unavailable(err))
	}
	if len(res) != 2 {
		return nil, fmt.Errorf("progress: publish %s: unexpected reply %v", group, res)
	}
	seq, _ := res[0].(int64)
	epoch, _ := res[1].(string)
	return &Event{Group: group, Seq: seq, Epoch: epoch, Name: name, Data: raw, Time: now}, nil
}

// Post is an event for PublishMany: its group, name and payload (as
// Publish takes them).
type Post struct {
	Group string
	Name  string
	Data  any
}

// newerGuard is the condition of a post appended by newerScript: Version
// must be above the one last appended for Field in the hash Key (a key in
// the group's slot), which then becomes Version.
type newerGuard struct {
	Key     string
	Field   string
	Version int64
}

// errSuperseded is a publishMany post's error when its newerGuard found a
// newer one already appended: nothing was appended, as intended.
var errSuperseded = errors.New("progress: superseded by a newer event")

// newerScript is appendScript behind a newerGuard: KEYS[3] is its hash,
// ARGV[9] the field and ARGV[10] the version. It answers {0, ""} without
// appending when the version is not newer. The hash lives as long as the
// log (ARGV[6]).
var newerScript = NewScript(`
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[9]) or '0')
if tonumber(ARGV[10]) <= last then return {0, ''} end
redis.call('HSET', KEYS[3], ARGV[9], ARGV[10])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
` + appendBody)

// PublishMany publishes each post as Publish does, in one round trip to
// Redis (a pipeline) instead of one per event: each is its own atomic
// step, not all of them one, and posts to the same group keep their
// order. It returns, per post, the event or the error (the post's own
// invalid argument, wrapping ErrInvalid, or Redis's).
func (l *Log) PublishMany(ctx context.Context, posts []Post) ([]*Event, []error) {
	return l.publishMany(ctx, posts, nil, nil, nil)
}

// PublishWith is PublishMany with the caller's own commands in the same
// round trip: before queues them on the pipeline ahead of the appends
// (the caller keeps the commands and reads their results once PublishWith
// returns). It saves a round trip where a caller writes something of its
// own and then publishes. The commands are sent once: when Redis lacks
// the append script (a restart) the appends alone go again. Each command
// and each append is its own step, as in a pipeline: one failing does not
// undo the others, and the caller reads each one's error.
func (l *Log) PublishWith(ctx context.Context, before func(redis.Pipeliner), posts ...Post) ([]*Event, []error) {
	return l.publishMany(ctx, posts, nil, before, nil)
}

// PublishThen is PublishWith with the caller's commands queued after the
// appends instead of before them: Redis runs a pipeline in order, so the
// caller's commands see the events appended (a job's end is recorded only
// after its last progress report is in the log). The commands are sent
// once, in the first pipeline; when Redis lacks the append script (a
// restart) the appends alone go again, after them, so the caller that
// needs the order sends its own commands as scripts too (which then miss
// the cache as well, and the caller runs them again after PublishThen).
func (l *Log) PublishThen(ctx context.Context, after func(redis.Pipeliner), posts ...Post) ([]*Event, []error) {
	return l.publishMany(ctx, posts, nil, nil, after)
}

// publishMany is PublishMany where guards[i], when set, appends posts[i]
// only if it is newer than the last one appended under the same key
// (presence's join and leave events: see Presence); a post it refuses
// gets errSuperseded and no event. guards may be nil. before, when set,
// queues the caller's commands ahead of the appends (see PublishWith),
// after, when set, behind them (see PublishThen).
func (l *Log) publishMany(ctx context.Context, posts []Post, guards []*newerGuard, before, after func(redis.Pipeliner)) ([]*Event, []error) {
	evs, errs := make([]*Event, len(posts)), make([]error, len(posts))
	now := time.Now().UTC()
	ts := now.Format(time.RFC3339Nano)
	type pending struct {
		i      int
		script *redis.Script
		keys   []string
		args   []any
	}
	var todo []pending
	for i, p := range posts {
		switch {
		case !ValidGroup(p.Group):
			errs[i] = fmt.Errorf("%w: group %q", ErrInvalid, p.Group)
		case !ValidEventName(p.Name):
			errs[i] = fmt.Errorf("%w: event name %q", ErrInvalid, p.Name)
		default:
			raw, err := encodeData(p.Data)
			if err != nil {
				errs[i] = err
				continue
			}
			evs[i] = &Event{Group: p.Group, Name: p.Name, Data: raw, Time: now}
			t := pending{i, appendScript, l.appendKeys(p.Group), l.appendArgs(p.Group, p.Name, raw, ts)}
			if i < len(guards) && guards[i] != nil {
				g := guards[i]
				t.script = newerScript
				t.keys = append(t.keys, g.Key)
				t.args = append(t.args, g.Field, g.Version)
			}
			todo = append(todo, t)
		}
	}
	// By digest first; the posts that find their script missing from
	// Redis's cache (a new Redis, a restart, SCRIPT FLUSH) go again, in
	// order, once it is loaded (scriptPass): nothing of theirs ran.
	for pass := byDigest; len(todo) > 0 || before != nil || after != nil; {
		cmds := make([]*redis.Cmd, len(todo))
		_, _ = l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			if pass == byDigest && before != nil {
				before(p)
			}
			for j, t := range todo {
				cmds[j] = pass.queue(ctx, p, t.script, t.keys, t.args)
			}
			if pass == byDigest && after != nil {
				after(p)
			}
			return nil
		}) // each command's own error is read below
		var again []pending
		var missing []*redis.Script
		for j, t := range todo {
			res, err := cmds[j].Slice()
			if IsNoScript(err) && pass != bySource {
				again = append(again, t)
				missing = addScript(missing, t.script)
				continue
			}
			if err == nil && len(res) != 2 {
				err = fmt.Errorf("unexpected reply %v", res)
			}
			if err == nil && t.script == newerScript && res[0] == int64(0) {
				errs[t.i], evs[t.i] = errSuperseded, nil
				continue
			}
			if l.cfg.OnPublish != nil {
				l.cfg.OnPublish(evs[t.i].Group, boolInt(err == nil), time.Since(now), err)
			}
			if err != nil {
				errs[t.i] = fmt.Errorf("progress: publish %s %s: %w", evs[t.i].Group, evs[t.i].Name, unavailable(err))
				evs[t.i] = nil
				continue
			}
			evs[t.i].Seq, _ = res[0].(int64)
			evs[t.i].Epoch, _ = res[1].(string)
		}
		if len(again) == 0 {
			break
		}
		todo = again
		pass, _ = pass.retry(ctx, l.rdb, missing)
	}
	return evs, errs
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func encodeData(data any) (json.RawMessage, error) {
	switch d := data.(type) {
	case nil:
		return json.RawMessage("null"), nil
	case json.RawMessage:
		if !json.Valid(d) {
			return nil, fmt.Errorf("%w: data is not valid JSON", ErrInvalid)
		}
		return compact(d)
	default:
		b, err := json.Marshal(d)
		if err != nil {
			return nil, fmt.Errorf("%w: encode data: %w", ErrInvalid, err)
		}
		return b, nil
	}
}

// compact removes insignificant white space, so the data never carries a
// newline into the pub/sub payload's framing and the wire stays small.
func compact(d json.RawMessage) (json.RawMessage, error) {
	var b bytes.Buffer
	b.Grow(len(d))
	if err := json.Compact(&b, d); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return b.Bytes(), nil
}

func newEpoch() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Snapshot is what a group's log holds after some seq.
type Snapshot struct {
	Epoch   string   // "" when the group has no log (never published, or lost)
	LastSeq int64    // the seq of the newest event ever appended in this epoch
	Events  []*Event // retained events with seq > the requested one, in order
}

// readPage bounds one XRANGE; Read loops until it has everything.
const readPage = 500

// errLogChurn is returned by Read when the log kept changing under it
// (replaced or trimmed between pages) more often than it retries: a
// transient condition, worth another read later.
var errLogChurn = errors.New("the log changes faster than it can be read")

// Read returns the group's epoch, last seq and the retained events with
// seq > after. It reads the meta and the stream in one MULTI so the three
// agree with each other.
//
// Every after is valid: a negative one reads from the start, and one at
// or beyond the last seq (up to math.MaxInt64) reads no events, so the
// caller sees LastSeq < after. Errors that mean Redis is unavailable wrap
// ErrUnavailable (see IsUnavailable); the caller may retry those. Any
// other error is permanent for this group.
func (l *Log) Read(ctx context.Context, group string, after int64) (Snapshot, error) {
	return l.ReadN(ctx, group, after, 0)
}

// ReadN is Read that stops after the first n events (every retained event
// when n <= 0): a bounded page of history for a reader that pages on.
func (l *Log) ReadN(ctx context.Context, group string, after int64, n int) (Snapshot, error) {
	return l.readN(ctx, group, after, n, nil)
}

// readN is ReadN that, when extra is set, also queues extra's commands in
// each page's MULTI: what they read is as of the same instant as the
// snapshot's LastSeq. extra returns the function that reads its results
// once the MULTI ran; the last page's results are the ones left.
func (l *Log) readN(ctx context.Context, group string, after int64, n int, extra func(context.Context, redis.Pipeliner) func() error) (Snapshot, error) {
	return l.newRead(group, after, n, extra).finish(ctx)
}

// logRead is one read of a group's log (readN), split into its pages so
// that a page can ride in a MULTI shared with other groups' reads (the
// hub's readBatcher): queue puts the next page's commands on a pipeline,
// take reads their results once it ran, and finish runs the pages left
// on their own.
type logRead struct {
	l     *Log
	group string
	after int64
	n     int
	extra func(context.Context, redis.Pipeliner) func() error

	snap     Snapshot
	from     int64 // the seq the next page starts after
	restarts int

	// the page in flight, set by queue
	meta      *redis.SliceCmd
	rng       *redis.XMessageSliceCmd
	extraDone func() error
}

func (l *Log) newRead(group string, after int64, n int, extra func(context.Context, redis.Pipeliner) func() error) *logRead {
	after = max(after, 0)
	return &logRead{l: l, group: group, after: after, n: n, extra: extra, from: after}
}

// queue puts the next page's commands on p, which must be a MULTI (or
// one that runs them without anything in between).
func (r *logRead) queue(ctx context.Context, p redis.Pipeliner) {
	r.meta = p.HMGet(ctx, r.l.metaKey(r.group), "seq", "epoch")
	r.rng = p.XRangeN(ctx, r.l.streamKey(r.group), afterID(r.from), "+", int64(page(r.n, len(r.snap.Events))))
	r.extraDone = nil
	if r.extra != nil {
		r.extraDone = r.extra(ctx, p)
	}
}

// take reads the results of the page queue put on a pipeline that has
// run, from the page's own commands (so a failing command of another
// group in the same MULTI is not this read's error), and reports whether
// the read is complete (its snapshot is r.snap) or needs another page.
func (r *logRead) take() (done bool, err error) {
	for _, err := range []error{r.meta.Err(), r.rng.Err()} {
		if err != nil && !errors.Is(err, redis.Nil) {
			return false, fmt.Errorf("progress: read %s: %w", r.group, unavailable(err))
		}
	}
	if r.extraDone != nil {
		if err := r.extraDone(); err != nil {
			return false, fmt.Errorf("progress: read %s: %w", r.group, unavailable(err))
		}
	}
	epoch, lastSeq := parseMeta(r.meta.Val())
	msgs := r.rng.Val()
	// Between pages the log may be replaced (a new epoch) or trimmed
	// past this read (the next page does not join up): either would
	// leave a gap that looks like complete history, so start over.
	replaced := r.snap.Epoch != "" && epoch != r.snap.Epoch
	trimmed := len(r.snap.Events) > 0 && len(msgs) > 0 && !strings.HasPrefix(msgs[0].ID, strconv.FormatInt(r.from+1, 10)+"-")
	if replaced || trimmed {
		if r.restarts++; r.restarts > 10 {
			return false, fmt.Errorf("progress: read %s: %w", r.group, errLogChurn)
		}
		r.snap, r.from = Snapshot{}, r.after
		return false, nil
	}
	r.snap.Epoch, r.snap.LastSeq = epoch, lastSeq
	for _, m := range msgs {
		ev, err := decodeEntry(r.group, epoch, m)
		if err != nil {
			return false, err
		}
		r.snap.Events = append(r.snap.Events, ev)
		r.from = ev.Seq
	}
	return len(msgs) < readPage || r.from >= lastSeq || (r.n > 0 && len(r.snap.Events) >= r.n), nil
}

// finish reads the pages left, each in a MULTI of its own, and returns
// the snapshot.
func (r *logRead) finish(ctx context.Context) (Snapshot, error) {
	for {
		_, err := r.l.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			r.queue(ctx, p)
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return Snapshot{}, fmt.Errorf("progress: read %s: %w", r.group, unavailable(err))
		}
		done, err := r.take()
		if err != nil {
			return Snapshot{}, err
		}
		if done {
			return r.snap, nil
		}
	}
}

// page is the size of the next XRANGE of a read that wants n events (all
// when n <= 0) and has got of them.
func page(n, got int) int {
	if n <= 0 {
		return readPage
	}
	return min(readPage, n-got)
}

// afterID is the first stream id after the event with seq: events have
// the ids "SEQ-0", so "SEQ-1" sorts after seq's own entry and before the
// next one. Unlike "SEQ+1-0" it cannot overflow at math.MaxInt64.
func afterID(seq int64) string { return strconv.FormatInt(seq, 10) + "-1" }

func parseMeta(vals []any) (epoch string, lastSeq int64) {
	if len(vals) != 2 {
		return "", 0
	}
	if s, ok := vals[0].(string); ok {
		lastSeq, _ = strconv.ParseInt(s, 10, 64)
	}
	epoch, _ = vals[1].(string)
	return epoch, lastSeq
}

// seqOfID is the seq of the event stored under stream id ("SEQ-0").
func seqOfID(group, id string) (int64, error) {
	seqStr, _, _ := strings.Cut(id, "-")
	seq, err := strconv.ParseInt(seqStr, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("progress: bad stream id %q in %s: %w", id, group, err)
	}
	return seq, nil
}

func decodeEntry(group, epoch string, m redis.XMessage) (*Event, error) {
	seq, err := seqOfID(group, m.ID)
	if err != nil {
		return nil, err
	}
	name, _ := m.Values["e"].(string)
	data, _ := m.Values["d"].(string)
	tsStr, _ := m.Values["t"].(string)
	ts, _ := time.Parse(time.RFC3339Nano, tsStr)
	if data == "" {
		data = "null"
	}
	return &Event{Group: group, Seq: seq, Epoch: epoch, Name: name, Data: json.RawMessage(data), Time: ts}, nil
}

// logState is a cheap look at a group's log, as of one instant: what the
// hub checks before it serves subscribers from its in-memory tail instead
// of reading the log (see tail.check).
type logState struct {
	Epoch   string // "" when the group has no log (never published, or lost)
	LastSeq int64  // the seq of the newest event ever appended in this epoch
	Oldest  int64  // the seq of the oldest retained event; 0 when none is
}

// state reads the group's meta and the id of its oldest retained event in
// one MULTI (one round trip, one slot: both keys carry the group's hash
// tag), so the three agree with each other.
func (l *Log) state(ctx context.Context, group string) (logState, error) {
	var meta *redis.SliceCmd
	var rng *redis.XMessageSliceCmd
	_, err := l.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		meta = p.HMGet(ctx, l.metaKey(group), "seq", "epoch")
		rng = p.XRangeN(ctx, l.streamKey(group), "-", "+", 1)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return logState{}, fmt.Errorf("progress: state of %s: %w", group, unavailable(err))
	}
	var st logState
	st.Epoch, st.LastSeq = parseMeta(meta.Val())
	if msgs := rng.Val(); len(msgs) > 0 {
		if st.Oldest, err = seqOfID(group, msgs[0].ID); err != nil {
			return logState{}, err
		}
	}
	return st, nil
}

// Tail returns the group's epoch, last seq and its newest n retained
// events, oldest first, in one round trip.
func (l *Log) Tail(ctx context.Context, group string, n int64) (Snapshot, error) {
	pipe := l.rdb.TxPipeline()
	meta := pipe.HMGet(ctx, l.metaKey(group), "seq", "epoch")
	rng := pipe.XRevRangeN(ctx, l.streamKey(group), "+", "-", n)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return Snapshot{}, fmt.Errorf("progress: tail %s: %w", group, unavailable(err))
	}
	var snap Snapshot
	snap.Epoch, snap.LastSeq = parseMeta(meta.Val())
	msgs := rng.Val()
	snap.Events = make([]*Event, len(msgs))
	for i, m := range msgs {
		ev, err := decodeEntry(group, snap.Epoch, m)
		if err != nil {
			return Snapshot{}, err
		}
		snap.Events[len(msgs)-1-i] = ev
	}
	return snap, nil
}

// Last returns the newest of the last scan retained events of group whose
// name is one of names (any name when names is empty), or nil, with the
// log's epoch.
func (l *Log) Last(ctx context.Context, group string, scan int64, names ...string) (*Event, string, error) {
	snap, err := l.Tail(ctx, group, scan)
	if err != nil {
		return nil, "", err
	}
	return snap.Newest(names...), snap.Epoch, nil
}

// Newest returns the newest event in the snapshot named one of names (any
// when names is empty), or nil.
func (s Snapshot) Newest(names ...string) *Event {
	for i := len(s.Events) - 1; i >= 0; i-- {
		if len(names) == 0 || slices.Contains(names, s.Events[i].Name) {
			return s.Events[i]
		}
	}
	return nil
}

// Draft is an event to append with PublishOnce: a name and its payload
// (as Publish takes them).
type Draft struct {
	Name string
	Data any
}

// publishOnceScript appends a batch of events (and publishes each) in one
// atomic step, unless the batch's key is the last one the group recorded:
// then it appends nothing and returns the seqs the batch got before. ARGV:
// new epoch, key, time, max length, TTL ms, channel, publish command
// (PUBLISH or SPUBLISH), then name and data of each event. Only the last key is kept: a caller retries its own batch
// before it makes another.
var publishOnceScript = NewScript(`
if redis.call('HGET', KEYS[1], 'op') == ARGV[2] then
  return {0, redis.call('HGET', KEYS[1], 'epoch') or '', redis.call('HGET', KEYS[1], 'op_seqs') or ''}
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seqs = {}
for i = 8, #ARGV, 2 do
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  if seq == 1 then
    epoch = ARGV[1]
    redis.call('HSET', KEYS[1], 'epoch', epoch)
    redis.call('DEL', KEYS[2])
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-0', 'e', ARGV[i], 'd', ARGV[i+1], 't', ARGV[3])
  redis.call(ARGV[7], ARGV[6], seq .. '\n' .. epoch .. '\n' .. ARGV[i] .. '\n' .. ARGV[3] .. '\n' .. ARGV[i+1])
  seqs[#seqs+1] = seq
end
redis.call('HSET', KEYS[1], 'op', ARGV[2], 'op_seqs', table.concat(seqs, ','))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {1, epoch, table.concat(seqs, ',')}
`)

// PublishOnce appends events to group's log, and publishes them to its
// live subscribers, as one atomic Redis step that happens at most once
// for key: calling it again with the same key (after an error whose
// outcome is unknown, such as a timeout, or from another process paying
// the same debt) appends nothing and returns the events with the seqs they
// got the first time, and fresh false. The group remembers only its last
// key, so a caller must finish one batch (retry it until it succeeds)
// before it starts another under a new key. Errors that mean Redis is
// unavailable wrap ErrUnavailable.
func (l *Log) PublishOnce(ctx context.Context, group, key string, events ...Draft) (evs []*Event, fresh bool, err error) {
	if !ValidGroup(group) {
		return nil, false, fmt.Errorf("%w: group %q", ErrInvalid, group)
	}
	if key == "" || len(events) == 0 {
		return nil, false, fmt.Errorf("%w: PublishOnce needs a key and events", ErrInvalid)
	}
	now := time.Now().UTC()
	args := []any{newEpoch(), key, now.Format(time.RFC3339Nano), l.maxLen(group), l.cfg.TTL.Milliseconds(), l.Channel(group), l.publishCmd()}
	evs = make([]*Event, len(events))
	for i, d := range events {
		if !ValidEventName(d.Name) {
			return nil, false, fmt.Errorf("%w: event name %q", ErrInvalid, d.Name)
		}
		raw, err := encodeData(d.Data)
		if err != nil {
			return nil, false, err
		}
		args = append(args, d.Name, string(raw))
		evs[i] = &Event{Group: group, Name: d.Name, Data: raw, Time: now}
	}
	res, err := publishOnceScript.Run(ctx, l.rdb, []string{l.metaKey(group), l.streamKey(group)}, args...).Slice()
	if l.cfg.OnPublish != nil {
		appended := 0
		if err == nil && len(res) == 3 && toInt64(res[0]) == 1 {
			appended = len(events)
		}
		l.cfg.OnPublish(group, appended, time.Since(now), err)
	}
	if err != nil {
		return nil, false, fmt.Errorf("progress: publish %s batch %s: %w", group, key, unavailable(err))
	}
	if len(res) != 3 {
		return nil, false, fmt.Errorf("progress: publish %s: unexpected reply %v", group, res)
	}
	epoch, _ := res[1].(string)
	list, _ := res[2].(string)
	if n, ok := res[2].(int64); ok {
		// One seq: the embedded Redis's Lua (gopher-lua) concatenates a
		// one-number table to that number, which goes out as an integer.
		list = strconv.FormatInt(n, 10)
	}
	seqs := strings.Split(list, ",")
	if len(seqs) != len(evs) {
		// A replay whose batch differs in size is the caller's bug: say so
		// rather than pair the wrong seqs with the events.
		return nil, false, fmt.Errorf("%w: batch %s of %s was published with %d events, not %d", ErrInvalid, key, group, len(seqs), len(evs))
	}
	for i, s := range seqs {
		evs[i].Seq, _ = strconv.ParseInt(s, 10, 64)
		evs[i].Epoch = epoch
	}
	return evs, toInt64(res[0]) == 1, nil
}

func toInt64(v any) int64 {
	n, _ := v.(int64)
	return n
}
