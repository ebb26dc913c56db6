package progress

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/wire"
)

// Member is one user present in a group.
type Member struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// PresenceConfig configures a Presence. The zero value is usable.
type PresenceConfig struct {
	// TTL is how long a connection counts as present without a heartbeat:
	// the time it takes to notice that a replica died. Default 30s.
	TTL time.Duration
	// Heartbeat is how often this replica refreshes its connections and
	// sweeps expired ones (any one replica at a time). Default TTL/3.
	Heartbeat time.Duration
	// ListInterval is how often this replica publishes the "presence" list
	// of rooms whose membership it changed: joins and leaves in between
	// are coalesced into one list, so a burst of N arrivals (everyone
	// reconnecting after a restart) costs O(N) events, not O(N²) bytes.
	// Default 250ms.
	ListInterval time.Duration
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
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Presence tracks who is in a group, across tabs and replicas: each
// connection is an entry with an expiry in Redis, refreshed by its replica's
// heartbeat; a user counts once however many entries they have. The first
// entry of a user publishes "join", the last one leaving (or expiring, when
// its replica died) publishes "leave"; within PresenceConfig.ListInterval a
// "presence" event with the whole list follows, so a late subscriber finds
// the current list in the group's history.
//
// Redis keys share the group's hash tag, so every script touches one
// Cluster slot. A Presence is safe for concurrent use; Shutdown removes
// this replica's entries and stops the heartbeat.
type Presence struct {
	rdb     redis.UniversalClient
	log     *Log
	cfg     PresenceConfig
	replica string

	mu    sync.Mutex
	local map[presenceEntry]string // entry → display name
	dirty map[string]bool          // groups whose list must be published

	// op serializes this replica's changes to Redis: without it a
	// heartbeat holding a stale copy of an entry could re-add it right
	// after Leave removed it, and the user would come back as a ghost.
	op sync.Mutex

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

type presenceEntry struct{ group, user, conn string }

// NewPresence starts presence tracking for this replica.
func NewPresence(rdb redis.UniversalClient, log *Log, cfg PresenceConfig) *Presence {
	var b [6]byte
	_, _ = rand.Read(b[:])
	ctx, cancel := context.WithCancel(context.Background())
	p := &Presence{rdb: rdb, log: log, cfg: cfg.withDefaults(), replica: hex.EncodeToString(b[:]), local: map[presenceEntry]string{}, dirty: map[string]bool{}, cancel: cancel}
	p.wg.Add(2)
	go func() { defer p.wg.Done(); p.loop(ctx) }()
	go func() { defer p.wg.Done(); p.listLoop(ctx) }()
	return p
}

func (p *Presence) membersKey(group string) string {
	return p.log.cfg.Prefix + ":{" + group + "}:presence"
}
func (p *Presence) countsKey(group string) string {
	return p.log.cfg.Prefix + ":{" + group + "}:pcount"
}
func (p *Presence) namesKey(group string) string { return p.log.cfg.Prefix + ":{" + group + "}:pnames" }
func (p *Presence) groupsKey() string            { return p.log.cfg.Prefix + ":presence-groups" }

func (p *Presence) keys(group string) []string {
	return []string{p.membersKey(group), p.countsKey(group), p.namesKey(group)}
}

// joinScript adds or refreshes an entry; it returns 1 when the user was
// not present before. The name is set only then: a heartbeat carrying an
// older name must not undo a rename.
var joinScript = redis.NewScript(`
if redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
  return 1
end
return 0
`)

// leaveScript removes an entry; it returns 1 when it was the user's last.
var leaveScript = redis.NewScript(`
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  return 1
end
return 0
`)

// sweepScript removes entries that expired (their replica stopped
// refreshing them) and returns the users who left with them, as id, name
// pairs.
var sweepScript = redis.NewScript(`
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local left = {}
for _, m in ipairs(gone) do
  redis.call('ZREM', KEYS[1], m)
  local uid = string.match(m, '^[^|]*')
  if redis.call('HINCRBY', KEYS[2], uid, -1) <= 0 then
    redis.call('HDEL', KEYS[2], uid)
    table.insert(left, uid)
    table.insert(left, redis.call('HGET', KEYS[3], uid) or uid)
  end
end
return left
`)

func (p *Presence) member(e presenceEntry) string {
	return e.user + "|" + p.replica + "|" + e.conn
}

// Join records that user is in group through connection conn of this
// replica. The user's first entry publishes "join" and "presence".
func (p *Presence) Join(ctx context.Context, group string, user Member, conn string) error {
	if strings.Contains(user.ID, "|") {
		return fmt.Errorf("%w: user id %q", ErrInvalid, user.ID)
	}
	e := presenceEntry{group, user.ID, conn}
	p.op.Lock()
	defer p.op.Unlock()
	p.mu.Lock()
	p.local[e] = user.Name
	p.mu.Unlock()
	return p.refresh(ctx, e, user.Name)
}

func (p *Presence) refresh(ctx context.Context, e presenceEntry, name string) error {
	expiry := time.Now().Add(p.cfg.TTL).UnixMilli()
	joined, err := joinScript.Run(ctx, p.rdb, p.keys(e.group), p.member(e), e.user, expiry, name).Int()
	if err != nil {
		return fmt.Errorf("progress: presence join %s: %w", e.group, err)
	}
	if joined == 1 {
		if err := p.rdb.SAdd(ctx, p.groupsKey(), e.group).Err(); err != nil {
			return fmt.Errorf("progress: presence join %s: %w", e.group, err)
		}
		return p.announce(ctx, e.group, wire.EventJoin, Member{ID: e.user, Name: name})
	}
	return nil
}

// Leave removes connection conn of user from group. The user's last entry
// publishes "leave" and "presence".
func (p *Presence) Leave(ctx context.Context, group, userID, conn string) error {
	e := presenceEntry{group, userID, conn}
	p.op.Lock()
	defer p.op.Unlock()
	p.mu.Lock()
	name, ok := p.local[e]
	delete(p.local, e)
	p.mu.Unlock()
	if !ok {
		return nil
	}
	left, err := leaveScript.Run(ctx, p.rdb, p.keys(group), p.member(e), userID).Int()
	if err != nil {
		return fmt.Errorf("progress: presence leave %s: %w", group, err)
	}
	if left == 1 {
		return p.announce(ctx, group, wire.EventLeave, Member{ID: userID, Name: name})
	}
	return nil
}

// Rename changes user's display name in every group they are present in,
// publishing "rename" {"user", "old"} to each, and a fresh "presence"
// list within ListInterval.
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
		p.markDirty(g)
	}
	return nil
}

// List returns the users present in group, sorted by name.
func (p *Presence) List(ctx context.Context, group string) ([]Member, error) {
	pipe := p.rdb.TxPipeline()
	counts := pipe.HKeys(ctx, p.countsKey(group))
	names := pipe.HGetAll(ctx, p.namesKey(group))
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("progress: presence list %s: %w", group, err)
	}
	out := make([]Member, 0, len(counts.Val()))
	for _, id := range counts.Val() {
		out = append(out, Member{ID: id, Name: names.Val()[id]})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// announce publishes a join or leave now; the list follows within
// ListInterval (see publishLists).
func (p *Presence) announce(ctx context.Context, group, name string, who Member) error {
	if _, err := p.log.Publish(ctx, group, name, map[string]Member{"user": who}); err != nil {
		return err
	}
	p.markDirty(group)
	return nil
}

func (p *Presence) markDirty(group string) {
	p.mu.Lock()
	p.dirty[group] = true
	p.mu.Unlock()
}

func (p *Presence) listLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.ListInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := p.publishLists(ctx); err != nil && ctx.Err() == nil {
			p.cfg.Logger.Warn("publishing presence lists failed", "err", err)
		}
	}
}

// publishLists publishes the current list of every group whose
// membership changed since the last call.
func (p *Presence) publishLists(ctx context.Context) error {
	p.mu.Lock()
	groups := p.dirty
	p.dirty = map[string]bool{}
	p.mu.Unlock()
	var errs []error
	for g := range groups {
		list, err := p.List(ctx, g)
		if err == nil {
			_, err = p.log.Publish(ctx, g, wire.EventPresence, map[string][]Member{"users": list})
		}
		if err != nil {
			p.markDirty(g) // try again next time
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (p *Presence) loop(ctx context.Context) {
	t := time.NewTicker(p.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.heartbeat(ctx)
		if err := p.sweep(ctx); err != nil && ctx.Err() == nil {
			p.cfg.Logger.Warn("presence sweep failed", "err", err)
		}
	}
}

// heartbeat refreshes this replica's entries; one that was swept while
// the replica could not reach Redis is added back (and announced).
func (p *Presence) heartbeat(ctx context.Context) {
	p.mu.Lock()
	entries := make(map[presenceEntry]string, len(p.local))
	for e, n := range p.local {
		entries[e] = n
	}
	p.mu.Unlock()
	for e := range entries {
		p.op.Lock()
		p.mu.Lock()
		name, still := p.local[e] // Leave may have removed it meanwhile
		p.mu.Unlock()
		var err error
		if still {
			err = p.refresh(ctx, e, name)
		}
		p.op.Unlock()
		if err != nil && ctx.Err() == nil {
			p.cfg.Logger.Warn("presence heartbeat failed", "group", e.group, "err", err)
			return
		}
	}
}

// sweep drops expired entries of every group; one replica sweeps at a time.
func (p *Presence) sweep(ctx context.Context) error {
	ok, err := p.rdb.SetNX(ctx, p.log.cfg.Prefix+":presence-sweeper", p.replica, p.cfg.Heartbeat).Result()
	if err != nil || !ok {
		return err
	}
	groups, err := p.rdb.SMembers(ctx, p.groupsKey()).Result()
	if err != nil {
		return err
	}
	now := time.Now().UnixMilli()
	for _, g := range groups {
		left, err := sweepScript.Run(ctx, p.rdb, p.keys(g), now).StringSlice()
		if err != nil {
			return fmt.Errorf("sweep %s: %w", g, err)
		}
		for i := 0; i+1 < len(left); i += 2 {
			if err := p.announce(ctx, g, wire.EventLeave, Member{ID: left[i], Name: left[i+1]}); err != nil {
				return err
			}
		}
		if n, err := p.rdb.ZCard(ctx, p.membersKey(g)).Result(); err == nil && n == 0 {
			_ = p.rdb.SRem(ctx, p.groupsKey(), g).Err()
		}
	}
	return nil
}

// Shutdown removes this replica's entries (announcing the users who leave)
// and stops the heartbeat. Safe to call more than once.
func (p *Presence) Shutdown(ctx context.Context) {
	p.once.Do(func() {
		p.cancel()
		p.wg.Wait()
		p.mu.Lock()
		entries := make([]presenceEntry, 0, len(p.local))
		for e := range p.local {
			entries = append(entries, e)
		}
		p.mu.Unlock()
		for _, e := range entries {
			if err := p.Leave(ctx, e.group, e.user, e.conn); err != nil {
				p.cfg.Logger.Warn("presence leave at shutdown failed", "group", e.group, "err", err)
			}
		}
		if err := p.publishLists(ctx); err != nil {
			p.cfg.Logger.Warn("presence lists at shutdown failed", "err", err)
		}
	})
}
