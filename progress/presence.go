package progress

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/wire"
)

// Member is one user present in a group (wire.Member: the "user" of join,
// leave and rename events, and each of a chat subscribed frame's users).
type Member = wire.Member

// PresenceConfig configures a Presence. The zero value is usable.
type PresenceConfig struct {
	// TTL is how long a connection counts as present without a heartbeat:
	// the time it takes to notice that a replica died. Default 30s.
	TTL time.Duration
	// Heartbeat is how often this replica refreshes its connections and
	// sweeps expired ones (any one replica at a time). Default TTL/3.
	Heartbeat time.Duration
	// ListInterval is how often this replica sends the joins and leaves
	// of its connections to Redis and publishes the resulting "join" and
	// "leave" events, every room's in one round trip each: a burst of N
	// arrivals (everyone reconnecting after a restart) costs a few round
	// trips per interval, not several per arrival. It is also how long a
	// change may take to show in List and in the events. Default 250ms.
	ListInterval time.Duration
	// ShutdownGrace is how long this replica's entries stay in Redis after
	// Shutdown (and the Leaves that follow Drain) before any replica's
	// sweep removes them: a user who reconnects to another replica within
	// it (a restart, a scale-down) is never announced as leaving and
	// joining again, so a restart of a replica with N users costs no
	// presence events instead of 2N, each sent to every socket of the
	// room. A user who does not come back leaves within ShutdownGrace plus
	// Heartbeat. Negative: entries are removed at Shutdown, and leaves
	// announced at once. Default 10s.
	ShutdownGrace time.Duration
	// Logger for failures that cannot be returned. Default slog.Default().
	Logger *slog.Logger
}

func (c PresenceConfig) withDefaults() PresenceConfig {
	if c.ListInterval <= 0 {
		c.ListInterval = 250 * time.Millisecond
	}
	if c.TTL <= 0 {
		c.TTL = 30 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = c.TTL / 3
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Presence tracks who is in a group, across tabs and replicas: each
// connection is an entry with an expiry in Redis, refreshed by its replica's
// heartbeat; a user counts once however many entries they have. The first
// entry of a user publishes "join", the last one leaving (or expiring, when
// its replica died) publishes "leave". The whole list is never published:
// a subscriber gets it with its SyncInfo (HubConfig.Presence), or from
// List.
//
// Join and Leave only record the change on this replica; every
// ListInterval the changes go to Redis in one pipeline, in order, and the
// join and leave events they cause are published with Log.PublishMany in
// another. Why a subscriber's list converges:
//
//   - Each change of a user's presence in a group (first entry added, last
//     one removed or swept) takes a version from a per-group counter in the
//     same Redis script that makes the change: versions follow the order of
//     the changes in Redis, across replicas.
//   - A join or leave event is appended only if its version is above the
//     last one appended for that user in that group (newerScript, atomic
//     with the append). So for each user the versions of the appended
//     events increase, and the last change of a user is always appended
//     (nothing newer can precede it): the user's last event in the log says
//     whether they are present now, although it may be appended up to a
//     ListInterval (plus a retry after a Redis error) after the change.
//     A change overtaken by a newer one (another replica published first)
//     is dropped, which is what keeps a stale "leave" from following a
//     fresh "join".
//   - The members in a SyncInfo are read in the same MULTI as the log's
//     LastSeq, so they include every change whose event has seq <= LastSeq
//     (an event is appended after its change). The subscriber then applies
//     every event after its replay's start, itself <= LastSeq, as set
//     operations (join adds, leave removes, rename renames). For a user
//     whose last event comes after the list, that event decides; for
//     anyone else, their last change has its event at or before LastSeq,
//     so the list already shows it. Either way the subscriber ends with
//     the current members, whatever order the list and the events raced
//     in. (If the log was trimmed between the list and the replay's start,
//     recovered false says so; such a gap needs more than the log's length
//     in events during one read.)
//
// Redis keys share the group's hash tag, so every script touches one
// Cluster slot. A Presence is safe for concurrent use; Shutdown hands
// this replica's entries over (see ShutdownGrace) and stops its goroutine.
type Presence struct {
	rdb     redis.UniversalClient
	log     *Log
	cfg     PresenceConfig
	replica string

	mu     sync.Mutex
	local  map[presenceEntry]string // entry → display name: this replica's connections
	users  map[groupUser]int        // entries of local per user and group
	ops    []presenceOp             // changes not sent to Redis yet, in order
	queued map[presenceEntry]int    // index in ops of an entry's unsent join
	unsent []announcement           // events whose publish failed, retried first
	// draining: Drain was called. Leave then keeps a sent entry in Redis,
	// in kept, for Shutdown to give ShutdownGrace.
	draining bool
	kept     []presenceEntry

	// sync serializes this replica's writes to Redis (flush, heartbeat,
	// sweep, shutdown): a heartbeat refreshing an entry while a flush
	// removes it could otherwise bring it back as a ghost.
	sync sync.Mutex

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

type presenceEntry struct{ group, user, conn string }

type groupUser struct{ group, user string }

// presenceOp is a Join or Leave waiting for the next flush.
type presenceOp struct {
	e         presenceEntry
	name      string
	join      bool
	cancelled bool // a join left again before it was sent: nothing to do
	held      bool // a join Enter holds until Settle: not sent yet
}

// NewPresence starts presence tracking for this replica.
func NewPresence(rdb redis.UniversalClient, log *Log, cfg PresenceConfig) *Presence {
	var b [6]byte
	_, _ = rand.Read(b[:])
	ctx, cancel := context.WithCancel(context.Background())
	p := &Presence{rdb: rdb, log: log, cfg: cfg.withDefaults(), replica: hex.EncodeToString(b[:]),
		local: map[presenceEntry]string{}, users: map[groupUser]int{}, queued: map[presenceEntry]int{}, cancel: cancel}
	p.wg.Add(1)
	go func() { defer p.wg.Done(); p.loop(ctx) }()
	return p
}

func (p *Presence) membersKey(group string) string {
	return p.log.cfg.Prefix + ":{" + group + "}:presence"
}
func (p *Presence) countsKey(group string) string {
	return p.log.cfg.Prefix + ":{" + group + "}:pcount"
}
func (p *Presence) namesKey(group string) string { return p.log.cfg.Prefix + ":{" + group + "}:pnames" }

// versionsKey holds the group's change counter (field "#") and, per
// user ("u:ID"), the version of the last join or leave appended.
func (p *Presence) versionsKey(group string) string {
	return p.log.cfg.Prefix + ":{" + group + "}:pversions"
}
func (p *Presence) groupsKey() string { return p.log.cfg.Prefix + ":presence-groups" }

func (p *Presence) keys(group string) []string {
	return []string{p.membersKey(group), p.countsKey(group), p.namesKey(group), p.versionsKey(group)}
}

// joinScript adds or refreshes an entry; when the user was not present
// before it returns the change's version (else 0). The name is set only
// then: a heartbeat carrying an older name must not undo a rename.
var joinScript = NewScript(`
if redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
  local v = redis.call('HINCRBY', KEYS[4], '#', 1)
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
  return v
end
return 0
`)

// leaveScript removes an entry; when it was the user's last it returns
// the change's version (else 0).
var leaveScript = NewScript(`
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  local v = redis.call('HINCRBY', KEYS[4], '#', 1)
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
  return v
end
return 0
`)

// sweepScript removes entries that expired (their replica stopped
// refreshing them) and returns the users who left with them, as id, name,
// version triples.
var sweepScript = NewScript(`
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local left = {}
for _, m in ipairs(gone) do
  redis.call('ZREM', KEYS[1], m)
  local uid = string.match(m, '^[^|]*')
  if redis.call('HINCRBY', KEYS[2], uid, -1) <= 0 then
    redis.call('HDEL', KEYS[2], uid)
    table.insert(left, uid)
    table.insert(left, redis.call('HGET', KEYS[3], uid) or uid)
    table.insert(left, tostring(redis.call('HINCRBY', KEYS[4], '#', 1)))
    redis.call('PEXPIRE', KEYS[4], ARGV[2])
  end
end
return left
`)

func (p *Presence) member(e presenceEntry) string {
	return e.user + "|" + p.replica + "|" + e.conn
}

// Join records that user is in group through connection conn of this
// replica. It is sent to Redis within ListInterval; the user's first entry
// then publishes "join". It fails only for an invalid user id.
func (p *Presence) Join(_ context.Context, group string, user Member, conn string) error {
	_, err := p.enter(group, user, conn, false)
	return err
}

// Enter is Join for a caller that has checks to make before a user's
// first join may be announced: it reports whether conn is the user's only
// connection to group on this replica, and if so the join is held (not
// sent to Redis) until Settle releases it or Leave drops it. A join that
// is not first cannot be the user's first in Redis, so it is sent as
// Join's and the caller may skip those checks. Decided under one lock, so
// of many connections of a user entering at once exactly one is first.
func (p *Presence) Enter(group string, user Member, conn string) (first bool, err error) {
	return p.enter(group, user, conn, true)
}

func (p *Presence) enter(group string, user Member, conn string, hold bool) (first bool, err error) {
	if strings.Contains(user.ID, "|") {
		return false, fmt.Errorf("%w: user id %q", ErrInvalid, user.ID)
	}
	e := presenceEntry{group, user.ID, conn}
	gu := groupUser{group, user.ID}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.local[e]; ok {
		return false, nil // already in: nothing changes
	}
	p.local[e] = user.Name
	p.users[gu]++
	first = p.users[gu] == 1
	p.queued[e] = len(p.ops)
	p.ops = append(p.ops, presenceOp{e: e, name: user.Name, join: true, held: hold && first})
	return first, nil
}

// Settle releases a join that Enter held, under the user's current name:
// it is sent with the next flush.
func (p *Presence) Settle(group string, user Member, conn string) {
	e := presenceEntry{group, user.ID, conn}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.local[e]; !ok {
		return // left meanwhile
	}
	p.local[e] = user.Name
	if i, ok := p.queued[e]; ok {
		p.ops[i].held = false
		p.ops[i].name = user.Name
	}
}

// Has reports whether this replica holds a connection of user userID in
// group (sent to Redis or not yet): a further Join of that user there
// cannot be their first, so its name is not used.
func (p *Presence) Has(group, userID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.users[groupUser{group, userID}] > 0
}

// Leave removes connection conn of user from group, in Redis within
// ListInterval; the user's last entry then publishes "leave". A join not
// sent yet is dropped instead: nothing reaches Redis or the room.
func (p *Presence) Leave(_ context.Context, group, userID, conn string) error {
	e := presenceEntry{group, userID, conn}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.leaveLocked(e)
	return nil
}

func (p *Presence) leaveLocked(e presenceEntry) {
	name, ok := p.local[e]
	if !ok {
		return
	}
	delete(p.local, e)
	gu := groupUser{e.group, e.user}
	if p.users[gu]--; p.users[gu] <= 0 {
		delete(p.users, gu)
	}
	if i, ok := p.queued[e]; ok {
		p.ops[i].cancelled = true
		delete(p.queued, e)
		return
	}
	if p.draining && p.cfg.ShutdownGrace > 0 {
		p.kept = append(p.kept, e)
		return
	}
	p.ops = append(p.ops, presenceOp{e: e, name: name})
}

// Drain says this replica is stopping: the sockets that close from now on
// (their users reconnecting elsewhere) keep their entries in Redis for
// ShutdownGrace after Shutdown, as the ones still open at Shutdown do.
func (p *Presence) Drain() {
	p.mu.Lock()
	p.draining = true
	p.mu.Unlock()
}

// Rename changes user's display name in every group they are present in,
// publishing "rename" {"user", "old"} to each.
func (p *Presence) Rename(ctx context.Context, user Member) error {
	p.mu.Lock()
	for e := range p.local {
		if e.user == user.ID {
			p.local[e] = user.Name
		}
	}
	p.mu.Unlock()
	groups, err := p.rdb.SMembers(ctx, p.groupsKey()).Result()
	if err != nil {
		return fmt.Errorf("progress: presence rename: %w", err)
	}
	for _, g := range groups {
		present, err := p.rdb.HExists(ctx, p.countsKey(g), user.ID).Result()
		if err != nil {
			return fmt.Errorf("progress: presence rename in %s: %w", g, err)
		}
		if !present {
			continue
		}
		old, err := p.rdb.HGet(ctx, p.namesKey(g), user.ID).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("progress: presence rename in %s: %w", g, err)
		}
		if old == user.Name {
			continue
		}
		if err := p.rdb.HSet(ctx, p.namesKey(g), user.ID, user.Name).Err(); err != nil {
			return fmt.Errorf("progress: presence rename in %s: %w", g, err)
		}
		if _, err := p.log.Publish(ctx, g, wire.EventRename, map[string]any{"user": user, "old": old}); err != nil {
			return err
		}
	}
	return nil
}

// List returns the users present in group, sorted by name.
func (p *Presence) List(ctx context.Context, group string) ([]Member, error) {
	var out []Member
	var done func() error
	_, err := p.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		done = p.queueList(ctx, pipe, group, &out)
		return nil
	})
	if err == nil {
		err = done()
	}
	if err != nil {
		return nil, fmt.Errorf("progress: presence list %s: %w", group, unavailable(err))
	}
	return out, nil
}

// queueList queues the reads of group's list on pipe; the function it
// returns, called once pipe ran, stores the list (non-nil, sorted by
// name) in out.
func (p *Presence) queueList(ctx context.Context, pipe redis.Pipeliner, group string, out *[]Member) func() error {
	counts := pipe.HKeys(ctx, p.countsKey(group))
	names := pipe.HGetAll(ctx, p.namesKey(group))
	return func() error {
		if err := counts.Err(); err != nil {
			return err
		}
		if err := names.Err(); err != nil {
			return err
		}
		list := make([]Member, 0, len(counts.Val()))
		for _, id := range counts.Val() {
			list = append(list, Member{ID: id, Name: names.Val()[id]})
		}
		sort.Slice(list, func(i, j int) bool {
			if list[i].Name != list[j].Name {
				return list[i].Name < list[j].Name
			}
			return list[i].ID < list[j].ID
		})
		*out = list
		return nil
	}
}

// announcement is a join or leave event to publish, with the version of
// its change.
type announcement struct {
	post  Post
	guard *newerGuard
}

func (p *Presence) announcement(group, name string, who Member, v int64) announcement {
	return announcement{Post{Group: group, Name: name, Data: map[string]Member{"user": who}},
		&newerGuard{Key: p.versionsKey(group), Field: "u:" + who.ID, Version: v}}
}

func (p *Presence) loop(ctx context.Context) {
	flush := time.NewTicker(p.cfg.ListInterval)
	defer flush.Stop()
	beat := time.NewTicker(p.cfg.Heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-flush.C:
			if err := p.Flush(ctx); err != nil && ctx.Err() == nil {
				p.cfg.Logger.Warn("presence changes not sent; retrying", "err", err)
			}
		case <-beat.C:
			if err := p.heartbeat(ctx); err != nil && ctx.Err() == nil {
				p.cfg.Logger.Warn("presence heartbeat failed", "err", err)
			}
			if err := p.sweep(ctx); err != nil && ctx.Err() == nil {
				p.cfg.Logger.Warn("presence sweep failed", "err", err)
			}
		}
	}
}

// scriptCall is one script run of a pipeline (runScripts).
type scriptCall struct {
	script *redis.Script
	keys   []string
	args   []any
}

// runScripts runs calls in one pipeline, in order, and returns each one's
// reply. Calls that find their script missing from Redis's cache (a new
// Redis, a restart, SCRIPT FLUSH) make every call from the first of them
// go again, in order, in one pipeline, once the missing scripts are
// loaded (scriptPass): the presence scripts are idempotent (an entry
// added or removed twice changes nothing the second time), so rerunning
// the ones that had worked keeps the order of changes. A rerun's reply
// replaces the earlier one only where the earlier one failed.
func (p *Presence) runScripts(ctx context.Context, calls []scriptCall) []*redis.Cmd {
	cmds := make([]*redis.Cmd, len(calls))
	for pass, from := byDigest, 0; ; {
		sent := make([]*redis.Cmd, len(calls)-from)
		_, _ = p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i, c := range calls[from:] {
				sent[i] = pass.queue(ctx, pipe, c.script, c.keys, c.args)
			}
			return nil
		}) // each command's own error is read by the caller
		first := -1
		var missing []*redis.Script
		for i, c := range sent {
			if cmds[from+i] == nil || cmds[from+i].Err() != nil {
				cmds[from+i] = c
			}
			if IsNoScript(c.Err()) {
				if first < 0 {
					first = from + i
				}
				missing = addScript(missing, calls[from+i].script)
			}
		}
		if first < 0 {
			return cmds
		}
		var ok bool
		if pass, ok = pass.retry(ctx, p.rdb, missing); !ok {
			return cmds
		}
		from = first
	}
}

// Flush sends the changes recorded since the last flush to Redis, in
// order, and publishes the joins and leaves they caused (with any that
// failed to publish before, first). What fails is kept for the next flush.
// The loop calls it every ListInterval; a caller that needs a change to
// have landed (a test) may call it too.
func (p *Presence) Flush(ctx context.Context) error {
	p.sync.Lock()
	defer p.sync.Unlock()
	p.mu.Lock()
	ops, posts := p.ops, p.unsent
	p.ops, p.unsent, p.queued = nil, nil, map[presenceEntry]int{}
	// Held joins wait for the next flush, still cancellable.
	var held []presenceOp
	for _, op := range ops {
		if op.held && !op.cancelled {
			p.queued[op.e] = len(held)
			held = append(held, op)
		}
	}
	p.ops = held
	p.mu.Unlock()

	var calls []scriptCall
	var sent []presenceOp
	joined := map[string]bool{}
	expiry := time.Now().Add(p.cfg.TTL).UnixMilli()
	ttl := p.log.cfg.TTL.Milliseconds()
	for _, op := range ops {
		if op.cancelled || op.held {
			continue
		}
		sent = append(sent, op)
		if op.join {
			joined[op.e.group] = true
			calls = append(calls, scriptCall{joinScript, p.keys(op.e.group), []any{p.member(op.e), op.e.user, expiry, op.name, ttl}})
		} else {
			calls = append(calls, scriptCall{leaveScript, p.keys(op.e.group), []any{p.member(op.e), op.e.user, ttl}})
		}
	}
	var errs []error
	if len(joined) > 0 {
		// The sweeper's list of groups to look at; a group is dropped
		// from it once empty.
		groups := make([]any, 0, len(joined))
		for g := range joined {
			groups = append(groups, g)
		}
		if err := p.rdb.SAdd(ctx, p.groupsKey(), groups...).Err(); err != nil {
			errs = append(errs, err)
			calls, sent = nil, nil // try the whole batch again next time
			p.requeue(ops)
		}
	}
	var failed []presenceOp
	for i, cmd := range p.runScripts(ctx, calls) {
		v, err := cmd.Int64()
		if err != nil {
			failed = append(failed, sent[i])
			errs = append(errs, err)
			continue
		}
		if v > 0 {
			op := sent[i]
			name := wire.EventLeave
			if op.join {
				name = wire.EventJoin
			}
			posts = append(posts, p.announcement(op.e.group, name, Member{ID: op.e.user, Name: op.name}, v))
		}
	}
	p.requeue(failed)
	if err := p.publish(ctx, posts); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("progress: presence: %w", errors.Join(errs...))
	}
	return nil
}

// requeue puts ops that could not be sent back in front of the ones
// recorded since, for the next flush: still in order.
func (p *Presence) requeue(ops []presenceOp) {
	if len(ops) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var keep []presenceOp
	for _, op := range ops {
		if !op.cancelled {
			keep = append(keep, op)
		}
	}
	p.ops = append(keep, p.ops...)
	// Joins sent again are no longer cancellable: their indexes moved.
	p.queued = map[presenceEntry]int{}
	for i, op := range p.ops {
		if op.join && !op.cancelled {
			p.queued[op.e] = i
		}
	}
	// A queued join may have been cancelled by a Leave since it was
	// taken: that Leave queued a leave op after it (the join was not in
	// queued then), so both run, in order.
}

// publish appends posts in one round trip; those that fail (not the
// superseded ones, which are dropped on purpose) are kept for the next
// flush.
func (p *Presence) publish(ctx context.Context, posts []announcement) error {
	if len(posts) == 0 {
		return nil
	}
	batch, guards := make([]Post, len(posts)), make([]*newerGuard, len(posts))
	for i, a := range posts {
		batch[i], guards[i] = a.post, a.guard
	}
	_, errs := p.log.publishMany(ctx, batch, guards, nil, nil)
	var retry []announcement
	var failures []error
	for i, err := range errs {
		if err == nil || errors.Is(err, errSuperseded) {
			continue
		}
		if errors.Is(err, ErrInvalid) {
			failures = append(failures, err) // cannot succeed later
			continue
		}
		retry = append(retry, posts[i])
		failures = append(failures, err)
	}
	if len(retry) > 0 {
		p.mu.Lock()
		p.unsent = append(retry, p.unsent...)
		p.mu.Unlock()
	}
	return errors.Join(failures...)
}

// heartbeatBatch bounds the entries refreshed in one pipeline.
const heartbeatBatch = 1000

// heartbeat refreshes this replica's entries that Redis already has; one
// that was swept while the replica could not reach Redis is added back
// (and announced).
func (p *Presence) heartbeat(ctx context.Context) error {
	p.sync.Lock()
	defer p.sync.Unlock()
	p.mu.Lock()
	type entry struct {
		e    presenceEntry
		name string
	}
	entries := make([]entry, 0, len(p.local))
	for e, n := range p.local {
		if _, unsent := p.queued[e]; !unsent {
			// An unsent join is added by the next flush: refreshing it now
			// would add it to Redis where a Leave cancelling it could not
			// remove it.
			entries = append(entries, entry{e, n})
		}
	}
	p.mu.Unlock()
	expiry := time.Now().Add(p.cfg.TTL).UnixMilli()
	ttl := p.log.cfg.TTL.Milliseconds()
	var posts []announcement
	for len(entries) > 0 {
		batch := entries[:min(heartbeatBatch, len(entries))]
		entries = entries[len(batch):]
		calls := make([]scriptCall, len(batch))
		for i, x := range batch {
			calls[i] = scriptCall{joinScript, p.keys(x.e.group), []any{p.member(x.e), x.e.user, expiry, x.name, ttl}}
		}
		for i, cmd := range p.runScripts(ctx, calls) {
			v, err := cmd.Int64()
			if err != nil {
				return fmt.Errorf("progress: presence heartbeat: %w", err)
			}
			if v > 0 {
				x := batch[i]
				posts = append(posts, p.announcement(x.e.group, wire.EventJoin, Member{ID: x.e.user, Name: x.name}, v))
			}
		}
	}
	return p.publish(ctx, posts)
}

// sweep drops expired entries of every group; one replica sweeps at a time.
func (p *Presence) sweep(ctx context.Context) error {
	p.sync.Lock()
	defer p.sync.Unlock()
	ok, err := p.rdb.SetNX(ctx, p.log.cfg.Prefix+":presence-sweeper", p.replica, p.cfg.Heartbeat).Result()
	if err != nil || !ok {
		return err
	}
	groups, err := p.rdb.SMembers(ctx, p.groupsKey()).Result()
	if err != nil {
		return err
	}
	now := time.Now().UnixMilli()
	ttl := p.log.cfg.TTL.Milliseconds()
	calls := make([]scriptCall, len(groups))
	for i, g := range groups {
		calls[i] = scriptCall{sweepScript, p.keys(g), []any{now, ttl}}
	}
	var posts []announcement
	var errs []error
	for i, cmd := range p.runScripts(ctx, calls) {
		left, err := cmd.StringSlice()
		if err != nil {
			errs = append(errs, fmt.Errorf("sweep %s: %w", groups[i], err))
			continue
		}
		for j := 0; j+2 < len(left); j += 3 {
			v, _ := strconv.ParseInt(left[j+2], 10, 64)
			posts = append(posts, p.announcement(groups[i], wire.EventLeave, Member{ID: left[j], Name: left[j+1]}, v))
		}
		if n, err := p.rdb.ZCard(ctx, p.membersKey(groups[i])).Result(); err == nil && n == 0 {
			_ = p.rdb.SRem(ctx, p.groupsKey(), groups[i]).Err()
		}
	}
	if err := p.publish(ctx, posts); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Shutdown stops the goroutine and hands this replica's entries over:
// with a ShutdownGrace they expire after it (any replica's sweep then
// announces the users who did not come back elsewhere), else they are
// removed and the users who leave with them announced at once. Either
// way it costs a pipeline or two, however many connections there were.
// Safe to call more than once.
func (p *Presence) Shutdown(ctx context.Context) {
	p.once.Do(func() {
		p.cancel()
		p.wg.Wait()
		p.mu.Lock()
		p.draining = true
		for e := range p.local {
			p.leaveLocked(e)
		}
		kept := p.kept
		p.kept = nil
		p.mu.Unlock()
		if err := p.Flush(ctx); err != nil {
			p.cfg.Logger.Warn("presence leave at shutdown failed", "err", err)
		}
		if err := p.expire(ctx, kept); err != nil {
			p.cfg.Logger.Warn("presence hand-over at shutdown failed", "err", err)
		}
	})
}

// expire makes entries expire after ShutdownGrace, unless they are gone
// already (XX): the heartbeat no longer refreshes them.
func (p *Presence) expire(ctx context.Context, entries []presenceEntry) error {
	if len(entries) == 0 {
		return nil
	}
	at := float64(time.Now().Add(p.cfg.ShutdownGrace).UnixMilli())
	cmds, err := p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, e := range entries {
			pipe.ZAddXX(ctx, p.membersKey(e.group), redis.Z{Score: at, Member: p.member(e)})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("progress: presence hand-over of %d entries (%d commands): %w", len(entries), len(cmds), err)
	}
	return nil
}
