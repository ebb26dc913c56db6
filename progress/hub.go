package progress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/wire"
)

// HubConfig configures a Hub. The zero value is usable.
type HubConfig struct {
	// PendingLimit bounds the live events buffered for one subscriber while
	// its history is being read. A subscriber that overflows it is dropped
	// with Sink.Lagged. Default 1024.
	PendingLimit int
	// PingInterval is how long the subscription connection may stay silent
	// before the hub pings Redis to check it. Default 15s.
	PingInterval time.Duration
	// AnswerTimeout bounds how long a new subscriber waits for its first
	// answer (Synced, or Failed). A Redis that is down is noticed at once
	// (a refused connection, a lost pub/sub connection, a failed read);
	// this bound covers one that accepts connections but does not answer
	// (paused, overloaded), whose subscribers then get Failed with
	// ErrUnavailable. Default DefaultAnswerTimeout (5s).
	AnswerTimeout time.Duration
	// TailWait bounds how long a batch of new subscribers of a live group
	// waits for events that a look at the log showed the hub's in-memory
	// tail has not heard yet (usually still on their way over pub/sub),
	// to be served from the tail rather than by a read of the log, which
	// they get when the wait runs out (the events may have been lost with
	// a connection not yet known to be broken). Default 50ms.
	TailWait time.Duration
	// Presence, when set, is read in the same MULTI as the log of every
	// chat group the hub syncs, so each chat SyncInfo carries the room's
	// members as of its LastSeq (SyncInfo.Members): one read per sync,
	// shared by every subscriber it serves, not one per subscriber.
	// Default nil: no member lists.
	Presence *Presence
	// ReadBatch bounds how many groups' history reads share one round
	// trip to Redis: reads requested while one is in flight go out
	// together, in one MULTI, once it is back (a read requested while
	// none is in flight goes out at once). 1 reads each group on its own.
	// On a Redis Cluster every group reads on its own anyway (a MULTI
	// names keys of one slot). Default DefaultReadBatch (64).
	ReadBatch int
	// Logger receives the hub's own diagnostics. Default slog.Default().
	Logger *slog.Logger
}

// The defaults of HubConfig's AnswerTimeout and ReadBatch, exported for
// the settings that set them (cmd/internal/app).
const (
	DefaultAnswerTimeout = 5 * time.Second
	DefaultReadBatch     = 64
)

func (c HubConfig) withDefaults() HubConfig {
	if c.PendingLimit <= 0 {
		c.PendingLimit = 1024
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 15 * time.Second
	}
	if c.AnswerTimeout <= 0 {
		c.AnswerTimeout = DefaultAnswerTimeout
	}
	if c.TailWait <= 0 {
		c.TailWait = 50 * time.Millisecond
	}
	if c.ReadBatch <= 0 {
		c.ReadBatch = DefaultReadBatch
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// SyncInfo tells a subscriber where it stands after its history was read.
type SyncInfo struct {
	Epoch     string // the log's epoch ("" when the group has no log yet)
	LastSeq   int64  // the newest seq in the log when it was read
	Replayed  int    // how many events from the log follow this SyncInfo
	Recovered bool   // true when nothing after the subscriber's position was lost
	Initial   bool   // true for the first SyncInfo of a subscription
	// Members is who is in the group (a chat room) as of LastSeq, read
	// atomically with it: non-nil (possibly empty) for chat groups of a
	// hub with HubConfig.Presence, nil otherwise. Applying the join and
	// leave events that follow this SyncInfo to it, as set operations,
	// gives the current members (see Presence). The slice is shared by
	// the subscribers of one sync (and of a group's tail until the room
	// changes) and never modified once handed out: do not modify it.
	Members []Member
}

// Sink receives one subscription's events. The hub calls its methods with
// the group's lock held, in order: one Synced (Initial), then events in
// seq order; later a Synced with Recovered false when the log was lost or
// trimmed past the subscriber's position, followed by the retained history.
// Until Shutdown, every subscription gets a first answer within
// HubConfig.AnswerTimeout: its initial Synced, or Failed.
//
// Methods must not block: a sink whose peer is slow returns false, and the
// hub stops delivering to that subscription (the caller is expected to
// close it, and typically its connection).
type Sink interface {
	Synced(SyncInfo) bool
	Send(*Event) bool
	// Lagged is called once when the hub drops the subscription because
	// more than HubConfig.PendingLimit live events queued up while its
	// history was being read.
	Lagged()
	// Failed is called once when the hub gives up on the subscription:
	// before its initial Synced when Redis is unavailable (err wraps
	// ErrUnavailable: subscribe again later), or at any time when the
	// group's log cannot be read (a permanent error, logged by the hub).
	// Nothing follows it; the caller should Close the subscription.
	Failed(err error)
}

// ErrClosed is returned by Subscribe after Shutdown.
var ErrClosed = errors.New("progress: hub is shut down")

// Hub fans a process's share of group events out to local subscribers.
//
// It holds one Redis pub/sub connection for the whole process (on a Redis
// Cluster, one per shard: see Log's sharded pub/sub) and one
// subscription per group that has at least one local subscriber; the
// subscription is released when the last local subscriber leaves. Every
// (re)subscription confirmed by Redis, including the automatic
// resubscription after a lost connection, triggers a read of the log, so
// subscribers get the events published while the hub was not listening.
//
// Delivery guarantee: within one group each subscriber sees events in seq
// order with no gap and no duplicate, across replay and live delivery, as
// long as the log still holds them; otherwise it gets a SyncInfo with
// Recovered false.
//
// A Hub is safe for concurrent use. Shutdown stops it; it is idempotent.
type Hub struct {
	log     *Log
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // set when the log uses sharded pub/sub
	cfg     HubConfig
	logger  *slog.Logger
	batcher *readBatcher // nil: each group reads its log on its own

	mu     sync.Mutex
	groups map[string]*group
	closed bool
	// feeds are the pub/sub connections: the one plain feed under "", or
	// one per cluster shard under its master's address.
	feeds map[string]*feed
	// discover asks the control loop to (re)learn the cluster's masters,
	// so every shard has a feed (and readiness covers every shard).
	discover bool
	// dirty names the groups added, removed or to be subscribed again
	// since the control loop's last pass, so that a pass over plain
	// pub/sub costs what changed rather than every live group (thousands
	// when many jobs are watched at once). rescan asks it to look at
	// every group instead; on a cluster it always does (placement).
	dirty  map[string]struct{}
	rescan bool

	// delivered counts events handed to subscribers, by group kind, since
	// NewHub; a group holds its kind's counter so delivery costs one
	// atomic add. Guarded by mu (the map, not the counters).
	delivered  map[string]*atomic.Uint64
	replayed   atomic.Uint64 // events delivered from the log rather than live
	reads      atomic.Uint64 // reads of a group's log (history)
	fromTail   atomic.Uint64 // subscriber syncs served from a group's tail
	tailChecks atomic.Uint64 // looks at a group's log before serving from its tail

	ctlWake chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stop    sync.Once
	stopped chan struct{} // closed when wg is done; set by the first Shutdown
}

// feed is one pub/sub connection and the goroutine that reads it. Plain
// pub/sub needs one per process. Sharded pub/sub needs one per shard: a
// shard channel can only be subscribed on the master that holds its
// slot, and one SSUBSCRIBE may only name channels of one slot.
type feed struct {
	addr   string        // the shard's master address; "" for plain pub/sub
	node   *redis.Client // sharded: the shard's client, to open a fresh connection
	ctx    context.Context
	cancel context.CancelFunc // stops its receive loop (shard no longer a master)

	// guarded by hub.mu
	ps      *redis.PubSub // replaced by the receive loop after a sharded connection fails
	conn    connState
	connErr error // why it is down
}

// NewHub starts a hub that reads log's groups through rdb. Call Shutdown to
// stop its goroutines. When log uses sharded pub/sub (a Redis Cluster),
// the hub subscribes each group on its shard.
func NewHub(rdb redis.UniversalClient, log *Log, cfg HubConfig) *Hub {
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	h := &Hub{
		log:     log,
		rdb:     rdb,
		cfg:     cfg,
		logger:  cfg.Logger.With("component", "hub"),
		groups:  make(map[string]*group),
		dirty:   make(map[string]struct{}),
		feeds:   make(map[string]*feed),
		ctlWake: make(chan struct{}, 1),

		delivered: make(map[string]*atomic.Uint64),
		ctx:       ctx,
		cancel:    cancel,
	}
	if log.sharded {
		h.cluster, _ = log.rdb.(*redis.ClusterClient)
		h.discover = true
		h.wakeControl()
	} else {
		h.mu.Lock()
		h.addFeed("", nil, rdb.Subscribe(ctx))
		h.mu.Unlock()
	}
	if !log.sharded && cfg.ReadBatch > 1 {
		h.batcher = newReadBatcher(log.rdb, cfg.ReadBatch)
		h.wg.Add(1)
		go func() { defer h.wg.Done(); h.batcher.run(ctx) }()
	}
	h.wg.Add(1)
	go func() { defer h.wg.Done(); h.controlLoop() }()
	return h
}

// addFeed starts a feed on ps. Called with h.mu held.
func (h *Hub) addFeed(addr string, node *redis.Client, ps *redis.PubSub) *feed {
	ctx, cancel := context.WithCancel(h.ctx)
	f := &feed{addr: addr, node: node, ctx: ctx, cancel: cancel, ps: ps}
	h.feeds[addr] = f
	h.wg.Add(1)
	go func() { defer h.wg.Done(); h.receiveLoop(f) }()
	return f
}

// dropFeed stops a shard's feed. Called with h.mu held.
func (h *Hub) dropFeed(f *feed) {
	delete(h.feeds, f.addr)
	f.cancel()
	_ = f.ps.Close()
}

// Shutdown stops the hub: no new subscriptions, the Redis subscription is
// closed and the hub's goroutines are waited for (or ctx ends). Existing
// Subscriptions get no more events. Safe to call more than once.
func (h *Hub) Shutdown(ctx context.Context) error {
	h.stop.Do(func() {
		h.mu.Lock()
		h.closed = true
		var conns []*redis.PubSub
		for _, f := range h.feeds {
			conns = append(conns, f.ps)
		}
		h.mu.Unlock()
		h.cancel() // first, so the receive loops take the closed connections for the end
		for _, ps := range conns {
			_ = ps.Close()
		}
		h.stopped = make(chan struct{})
		go func() { h.wg.Wait(); close(h.stopped) }()
	})
	select {
	case <-h.stopped:
		return nil
	case <-ctx.Done():
		select {
		case <-h.stopped: // already stopped: a done ctx is no failure
			return nil
		default:
		}
		return fmt.Errorf("progress: hub shutdown: %w", ctx.Err())
	}
}

// HubStats is a point-in-time count of what a hub holds.
type HubStats struct {
	Groups      int // groups with a Redis subscription held by this process
	Subscribers int // local subscriptions across all groups
}

// Stats returns the hub's current counts.
func (h *Hub) Stats() HubStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := HubStats{Groups: len(h.groups)}
	for _, g := range h.groups {
		g.mu.Lock()
		st.Subscribers += len(g.subs)
		g.mu.Unlock()
	}
	return st
}

// HubCounters is what a hub holds, by group kind, and has done since
// NewHub, for metrics: the hub keeps the counters, a collector elsewhere
// reads them (progress does not depend on a metrics library).
type HubCounters struct {
	HubStats
	// SubscribersByKind splits Subscribers by group kind (wire.KindOf).
	SubscribersByKind map[string]int
	// Delivered counts events handed to subscribers, by group kind,
	// replayed ones included: one per event per subscriber.
	Delivered map[string]uint64
	// Replayed counts the events among Delivered that came from the log
	// (a subscriber catching up) rather than from live pub/sub.
	Replayed uint64
	// HistoryReads counts the reads of a group's log (one MULTI per
	// page, the member list included) the hub made.
	HistoryReads uint64
	// TailSyncs counts the subscriber syncs (a new subscriber's replay,
	// or a catch-up after a gap) served from a live group's in-memory
	// tail instead of a read of the log.
	TailSyncs uint64
	// TailChecks counts the looks at a group's log state (one MULTI of
	// its meta and oldest entry) that precede serving subscribers from
	// its tail: one per batch of subscribers, not per subscriber.
	TailChecks uint64
}

// Counters returns the hub's current counts and counters.
func (h *Hub) Counters() HubCounters {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := HubCounters{
		HubStats:          HubStats{Groups: len(h.groups)},
		SubscribersByKind: make(map[string]int),
		Delivered:         make(map[string]uint64, len(h.delivered)),
		Replayed:          h.replayed.Load(),
		HistoryReads:      h.reads.Load(),
		TailSyncs:         h.fromTail.Load(),
		TailChecks:        h.tailChecks.Load(),
	}
	for _, g := range h.groups {
		g.mu.Lock()
		c.Subscribers += len(g.subs)
		c.SubscribersByKind[wire.KindOf(g.name)] += len(g.subs)
		g.mu.Unlock()
	}
	for kind, n := range h.delivered {
		c.Delivered[kind] = n.Load()
	}
	return c
}

// deliveredCounter returns the delivery counter of group's kind. Called
// with h.mu held.
func (h *Hub) deliveredCounter(group string) *atomic.Uint64 {
	kind := wire.KindOf(group)
	n := h.delivered[kind]
	if n == nil {
		n = new(atomic.Uint64)
		h.delivered[kind] = n
	}
	return n
}

// Subscribe adds sink as a local subscriber of group, starting after seq
// after (0 or less: the whole retained history). epoch is the epoch the
// subscriber last saw ("" if none); when it no longer matches the log, or
// after is beyond the log's last seq (a position this log never had, up to
// math.MaxInt64), the subscriber gets the full retained history with
// Recovered false. Events reach sink asynchronously, starting with a
// Synced(Initial) call, or Failed. Subscribe fails at once, with an error
// wrapping ErrUnavailable, while the hub's Redis connection is down.
func (h *Hub) Subscribe(group string, after int64, epoch string, sink Sink) (*Subscription, error) {
	if !ValidGroup(group) {
		return nil, fmt.Errorf("%w: group %q", ErrInvalid, group)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	if err := h.allDown(); err != nil {
		// Nothing can be read or confirmed until the connection is back:
		// say so now rather than after AnswerTimeout.
		return nil, err
	}
	g := h.groups[group]
	if g == nil {
		g = h.newGroup(group)
		h.groups[group] = g
		h.dirty[group] = struct{}{}
		h.wakeControl()
	}
	s := &Subscription{hub: h, group: g, sink: sink, cursor: max(after, 0), epoch: epoch, initial: true}
	g.mu.Lock()
	s.answer = time.AfterFunc(h.cfg.AnswerTimeout, s.answerTimedOut)
	g.subs[s] = struct{}{}
	s.setSyncing(true)
	ready := g.ready
	g.mu.Unlock()
	if ready {
		g.requestSync()
	}
	return s, nil
}

func (h *Hub) wakeControl() {
	select {
	case h.ctlWake <- struct{}{}:
	default:
	}
}

// controlLoop issues SUBSCRIBE and UNSUBSCRIBE (SSUBSCRIBE and
// SUNSUBSCRIBE on a cluster) from one goroutine, so their order on the
// wire follows the order of group changes, and no lock is held during
// network I/O. A new group always gets its own SUBSCRIBE, even when the
// channel is still subscribed from an earlier group of the same name: its
// confirmation is what starts the group's first read.
func (h *Hub) controlLoop() {
	subscribed := make(map[string]*feed) // the feed each group was subscribed on
	var retry <-chan time.Time
	backoff := 50 * time.Millisecond
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-h.ctlWake:
		case <-retry:
		}
		retry = nil
		if err := h.place(); err != nil {
			if h.ctx.Err() != nil {
				return
			}
			h.logger.Warn("cannot learn the cluster's shards; retrying", "err", err)
			retry = time.After(backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		type change struct {
			f     *feed
			ps    *redis.PubSub
			chans []string
			names []string
		}
		var add, remove []change
		batch := func(list []change, f *feed, ch, name string) []change {
			for i := range list {
				if list[i].f == f {
					list[i].chans = append(list[i].chans, ch)
					list[i].names = append(list[i].names, name)
					return list
				}
			}
			return append(list, change{f: f, ps: f.ps, chans: []string{ch}, names: []string{name}})
		}
		h.mu.Lock()
		// A group gone is unsubscribed (unless one of the same name came
		// since: it gets its own SUBSCRIBE below); a group not requested
		// yet is subscribed.
		visit := func(name string) {
			if f, ok := subscribed[name]; ok && h.groups[name] == nil {
				remove = batch(remove, f, h.log.Channel(name), name)
				delete(subscribed, name)
			}
			if g := h.groups[name]; g != nil && !g.requested && g.feed != nil {
				g.requested = true
				subscribed[name] = g.feed
				add = batch(add, g.feed, h.log.Channel(name), name)
			}
		}
		if h.cluster != nil || h.rescan {
			for name := range subscribed {
				visit(name)
			}
			for name := range h.groups {
				visit(name)
			}
			h.rescan = false
		} else {
			for name := range h.dirty {
				visit(name)
			}
		}
		clear(h.dirty)
		h.mu.Unlock()
		// go-redis removes channels from its set before UNSUBSCRIBE, so a
		// failed one is not restored by the reconnect: it heals by itself.
		for _, c := range remove {
			if err := h.unsubscribe(c.ps, c.chans); err != nil && h.ctx.Err() == nil {
				h.logger.Warn("unsubscribe failed; will apply on reconnect", "channels", len(c.chans), "err", err)
			}
		}
		failed := false
		for _, c := range add {
			if err := h.subscribe(c.ps, c.chans); err != nil && h.ctx.Err() == nil {
				// When the write fails, go-redis redials at once, inside
				// Subscribe, with the channel set it had before these were
				// added: the new connection lacks them. Issue them again
				// (a redundant SUBSCRIBE only costs a catch-up read).
				h.logger.Warn("subscribe failed; retrying", "channels", len(c.chans), "shard", c.f.addr, "err", err)
				h.mu.Lock()
				for _, name := range c.names {
					if g := h.groups[name]; g != nil {
						g.requested = false
						h.dirty[name] = struct{}{}
					}
				}
				h.mu.Unlock()
				failed = true
			}
		}
		if failed {
			retry = time.After(backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
	}
}

// subscribe subscribes ps to chans: one SUBSCRIBE, or on a cluster one
// SSUBSCRIBE per channel (one command may only name channels of one slot,
// and every group has a slot of its own).
func (h *Hub) subscribe(ps *redis.PubSub, chans []string) error {
	if h.cluster == nil {
		return ps.Subscribe(h.ctx, chans...)
	}
	for _, ch := range chans {
		if err := ps.SSubscribe(h.ctx, ch); err != nil {
			return err
		}
	}
	return nil
}

// unsubscribe is subscribe's reverse.
func (h *Hub) unsubscribe(ps *redis.PubSub, chans []string) error {
	if h.cluster == nil {
		return ps.Unsubscribe(h.ctx, chans...)
	}
	for _, ch := range chans {
		if err := ps.SUnsubscribe(h.ctx, ch); err != nil {
			return err
		}
	}
	return nil
}

// place gives every group that is not subscribed yet the feed it is to
// be subscribed on: the one plain feed, or on a cluster the feed of the
// master that holds the group's slot, started when missing. When asked
// to (at start and after a shard failed) it first learns the cluster's
// masters, so each has a feed, and stops the feeds of addresses that are
// no longer masters once no group uses them.
func (h *Hub) place() error {
	if h.cluster == nil {
		return nil // newGroup gave every group the plain feed
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	discover := h.discover
	var pending []string
	for name, g := range h.groups {
		if g.feed == nil {
			pending = append(pending, name)
		}
	}
	h.mu.Unlock()
	if discover {
		var mu sync.Mutex
		masters := map[string]*redis.Client{}
		err := h.cluster.ForEachMaster(h.ctx, func(_ context.Context, c *redis.Client) error {
			mu.Lock()
			masters[c.Options().Addr] = c
			mu.Unlock()
			return nil
		})
		if err != nil {
			return fmt.Errorf("progress: cluster masters: %w", err)
		}
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			return nil
		}
		h.discover = false
		for addr, c := range masters {
			if h.feeds[addr] == nil {
				h.addFeed(addr, c, c.SSubscribe(h.ctx))
			}
		}
		used := map[*feed]bool{}
		for _, g := range h.groups {
			used[g.feed] = true
		}
		for addr, f := range h.feeds {
			if masters[addr] == nil && !used[f] {
				h.dropFeed(f)
			}
		}
		h.mu.Unlock()
	}
	for _, name := range pending {
		node, err := h.cluster.MasterForKey(h.ctx, h.log.Channel(name))
		if err != nil {
			return fmt.Errorf("progress: the shard of %s: %w", name, err)
		}
		addr := node.Options().Addr
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			return nil
		}
		f := h.feeds[addr]
		if f == nil {
			f = h.addFeed(addr, node, node.SSubscribe(h.ctx))
		}
		if g := h.groups[name]; g != nil && g.feed == nil {
			g.feed = f
		}
		h.mu.Unlock()
	}
	return nil
}

// reset replaces a shard's failed connection with a fresh one and has the
// control loop place and subscribe its groups again, one channel at a
// time, each confirmation bringing its group up to date from the log.
// go-redis would resubscribe every channel in one SSUBSCRIBE, which a
// cluster refuses unless all share a slot, and a shard that failed over
// may not hold those slots any more. It returns the new connection.
func (h *Hub) reset(f *feed) *redis.PubSub {
	h.cluster.ReloadState(h.ctx)
	h.mu.Lock()
	if h.closed {
		// Shutdown closes the connections it found: open no other.
		defer h.mu.Unlock()
		return f.ps
	}
	old := f.ps
	f.ps = f.node.SSubscribe(f.ctx)
	ps := f.ps
	h.dropTails(f)
	for _, g := range h.groups {
		if g.feed == f {
			g.feed, g.requested = nil, false
		}
	}
	h.discover = true
	h.mu.Unlock()
	_ = old.Close()
	h.wakeControl()
	return ps
}

// connState is the state of the hub's pub/sub connection.
type connState int

const (
	connPending connState = iota // no reply on the current connection yet (starting, or reconnecting)
	connUp                       // the last read from it succeeded
	connDown                     // reconnecting failed: Redis is unavailable
)

// Ready reports whether the hub can serve subscribers: Redis answers a
// PING (within ctx and the client's timeouts) and the hub's pub/sub
// connection is up (on a cluster: every shard's). Its errors wrap
// ErrUnavailable (or ErrClosed after Shutdown) and say why in a few
// address-free words.
func (h *Hub) Ready(ctx context.Context) error {
	h.mu.Lock()
	closed := h.closed
	var pending, down int
	var downErr error
	for _, f := range h.feeds {
		switch f.conn {
		case connPending:
			pending++
		case connDown:
			down++
			downErr = f.connErr
		}
	}
	total := len(h.feeds)
	h.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if err := h.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("%w: redis does not answer PING (%s)", ErrUnavailable, Cause(err))
	}
	switch {
	case h.cluster == nil && down > 0:
		return fmt.Errorf("%w: the pub/sub connection is down (%s)", ErrUnavailable, Cause(downErr))
	case h.cluster == nil && pending > 0:
		return fmt.Errorf("%w: the pub/sub connection is not up yet", ErrUnavailable)
	case total == 0:
		return fmt.Errorf("%w: no shard's pub/sub connection is up yet", ErrUnavailable)
	case down > 0:
		return fmt.Errorf("%w: %d of %d shards' pub/sub connections are down (%s)", ErrUnavailable, down, total, Cause(downErr))
	case pending > 0:
		return fmt.Errorf("%w: %d of %d shards' pub/sub connections are not up yet", ErrUnavailable, pending, total)
	}
	return nil
}

// allDown returns why no subscriber can be served now: the plain feed,
// or every shard's, is down. nil otherwise (a cluster with one shard down
// still serves the groups of the others). Called with h.mu held.
func (h *Hub) allDown() error {
	var why error
	for _, f := range h.feeds {
		if f.conn != connDown {
			return nil
		}
		why = f.connErr
	}
	if why == nil {
		return nil // no feed yet
	}
	return fmt.Errorf("%w: the pub/sub connection is down (%s)", ErrUnavailable, Cause(why))
}

// connBroken records that f's connection broke. The hub reconnects at
// once; only when that fails is Redis unavailable (connDown), so a
// dropped connection alone (a killed client, a network blip) fails no
// subscriber.
func (h *Hub) connBroken(f *feed, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f.conn == connUp {
		h.logger.Warn("redis subscription lost; reconnecting", "shard", f.addr, "err", err)
		f.conn, f.connErr = connPending, err
	}
	h.dropTails(f)
}

// dropTails drops the tails of f's groups: events may have been lost
// with its connection. Called with h.mu held.
func (h *Hub) dropTails(f *feed) {
	for _, g := range h.groups {
		if g.feed != f && h.cluster != nil {
			continue
		}
		g.mu.Lock()
		g.dropTail()
		g.mu.Unlock()
	}
}

// connLost records that f's connection failed and could not be
// reestablished. On the first failure it tells every subscriber on f
// still waiting for its first answer that Redis is unavailable: none can
// get one before the connection is back. Established subscribers stay:
// the hub resubscribes and catches them up when it returns.
func (h *Hub) connLost(f *feed, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f.connErr = err
	h.dropTails(f)
	if f.conn == connDown {
		return
	}
	f.conn = connDown
	h.logger.Warn("redis is unavailable; retrying", "shard", f.addr, "err", err)
	failErr := fmt.Errorf("%w: the pub/sub connection was lost (%s)", ErrUnavailable, Cause(err))
	for _, g := range h.groups {
		if h.cluster != nil && g.feed != f {
			continue
		}
		g.mu.Lock()
		for s := range g.subs {
			if s.initial {
				s.fail(failErr)
			}
		}
		g.mu.Unlock()
	}
}

// connOK records a successful read from f's connection.
func (h *Hub) connOK(f *feed) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f.conn != connUp && f.connErr != nil {
		h.logger.Info("redis subscription restored", "shard", f.addr)
	}
	f.conn, f.connErr = connUp, nil
}

// receiveLoop reads f's connection until f or the hub stops.
func (h *Hub) receiveLoop(f *feed) {
	const maxBackoff = 5 * time.Second
	backoff := 50 * time.Millisecond
	h.mu.Lock()
	ps := f.ps // only this loop replaces it
	h.mu.Unlock()
	// probe: send a PING before the next read. At start and after a
	// failure it (re)connects at once, and its reply proves the connection
	// even when no group is subscribed and nothing else would arrive.
	probe := true
	pinged := false // a ping is unanswered: the next silence means a dead connection
	var up bool     // this loop's view of f.conn == connUp, to skip the lock on every message
	for {
		var msg any
		var err error
		probeFailed := false
		if probe {
			probe = false
			if err = ps.Ping(f.ctx); err == nil {
				pinged = true
			}
			probeFailed = err != nil
		}
		if err == nil {
			if pinged {
				// A half-open connection accepts the ping and never answers.
				// A deadline from the context (rather than a read timeout)
				// makes go-redis treat the silence as a broken connection and
				// redial it, resubscribing every channel.
				ctx, cancel := context.WithTimeout(f.ctx, h.cfg.PingInterval)
				msg, err = ps.Receive(ctx)
				cancel()
			} else {
				msg, err = ps.ReceiveTimeout(f.ctx, h.cfg.PingInterval)
			}
		}
		if f.ctx.Err() != nil {
			return
		}
		if err != nil {
			var ne net.Error
			if !probeFailed && !pinged && errors.As(err, &ne) && ne.Timeout() {
				// Quiet connection: a ping either proves it alive (its
				// reply arrives) or, unanswered, marks it broken.
				_ = ps.Ping(f.ctx)
				pinged = true
				continue
			}
			pinged = false
			var rerr redis.Error
			if errors.As(err, &rerr) {
				// An error reply, e.g. to the resubscription after a reconnect:
				// the connection is fine but some channels may not be
				// subscribed. Issue every group's SUBSCRIBE again (a redundant
				// one only costs a catch-up read). On a cluster (MOVED,
				// CROSSSLOT, CLUSTERDOWN) the shard's groups are placed anew
				// on a fresh connection.
				h.logger.Warn("redis refused a subscription; resubscribing", "shard", f.addr, "err", err)
				if h.cluster != nil {
					ps = h.reset(f)
					probe = true
				} else {
					h.mu.Lock()
					for _, g := range h.groups {
						g.requested = false
					}
					h.rescan = true
					h.dropTails(f) // a channel may have gone unsubscribed: its events missed
					h.mu.Unlock()
					h.wakeControl()
				}
				if IsUnavailable(err) {
					// LOADING and the like: connected, but not serving yet.
					h.connLost(f, err)
					up = false
				}
			} else {
				// Only a failed dial says Redis is unavailable: a connection
				// that breaks (a killed client, a network blip), even a new
				// one, is redialed.
				var op *net.OpError
				if probeFailed && errors.As(err, &op) && op.Op == "dial" {
					h.connLost(f, err)
				} else {
					h.connBroken(f, err)
				}
				if h.cluster != nil && !probeFailed {
					// go-redis has redialed with all channels in one
					// SSUBSCRIBE: start afresh instead.
					ps = h.reset(f)
				}
				wasUp := up
				up = false
				probe = true
				if !probeFailed && wasUp {
					continue // reconnect at once: a dropped connection is no outage
				}
			}
			select {
			case <-f.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, maxBackoff)
			if probeFailed {
				// Redis is down: a dial a second is cheap, and it bounds how
				// long subscribers are refused after Redis is back.
				backoff = min(backoff, time.Second)
			}
			continue
		}
		pinged = false
		if !up {
			h.connOK(f)
			up = true
		}
		backoff = 50 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Subscription:
			switch m.Kind {
			case "subscribe", "ssubscribe":
				h.onSubscribed(m.Channel)
			case "sunsubscribe":
				h.onShardUnsubscribed(f, m.Channel)
			}
		case *redis.Message:
			h.onMessage(m)
		}
	}
}

// onShardUnsubscribed handles an SUNSUBSCRIBE: the hub's own, for a group
// that left, or the shard's, when the group's slot moved to another
// master. A group that is still here is placed and subscribed again.
func (h *Hub) onShardUnsubscribed(f *feed, channel string) {
	name, ok := h.log.groupOf(channel)
	if !ok {
		return
	}
	h.mu.Lock()
	g := h.groups[name]
	moved := g != nil && g.feed == f && g.requested
	if moved {
		g.feed, g.requested = nil, false
	}
	h.mu.Unlock()
	if moved {
		h.cluster.ReloadState(h.ctx)
		h.wakeControl()
	}
}

func (h *Hub) lookup(channel string) *group {
	name, ok := h.log.groupOf(channel)
	if !ok {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.groups[name]
}

func (h *Hub) onSubscribed(channel string) {
	g := h.lookup(channel)
	if g == nil {
		return
	}
	g.mu.Lock()
	g.ready = true
	g.catchup = true
	g.dropTail() // events may have been missed before this (re)subscription
	g.mu.Unlock()
	g.requestSync()
}

func (h *Hub) onMessage(m *redis.Message) {
	g := h.lookup(m.Channel)
	if g == nil {
		return
	}
	ev, err := decodeMessage(g.name, m.Payload)
	if err != nil {
		h.logger.Error("dropping malformed pub/sub message", "group", g.name, "err", err)
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.observe(ev)
	for s := range g.subs {
		s.offer(ev)
	}
}

// group is one group with local subscribers. Its goroutine reads the log
// whenever a subscriber needs history: on join, on a gap in live delivery,
// on an epoch change and after every subscription confirmation.
type group struct {
	name string
	hub  *Hub

	// guarded by hub.mu
	requested bool  // a SUBSCRIBE was issued for this group
	feed      *feed // the connection it is (to be) subscribed on; nil until placed

	delivered *atomic.Uint64 // the hub's counter for this group's kind

	mu      sync.Mutex
	subs    map[*Subscription]struct{}
	ready   bool // Redis confirmed the subscription at least once
	catchup bool // the next read covers every subscriber, not only syncing ones
	// syncing holds the subscribers waiting for a read (Subscription.
	// syncing, and dead ones until a sync drops them), so that a sync
	// looks at them rather than at every subscriber: in a join storm a
	// room of thousands gets a sync for every few new sockets.
	syncing map[*Subscription]struct{}

	// The in-memory tail of the group's history (see tail), and what
	// establishes it: the live events recorded while a read is in flight,
	// and a generation bumped whenever events may have been missed.
	tail      *tail
	gen       uint64
	recording bool
	rec       []*Event
	recOver   bool // more than PendingLimit events arrived during the read
	// heard is closed once the tail has heard seq heardSeq (or is gone),
	// for fromTail waiting on events a look at the log showed; nil when
	// nothing waits.
	heard    chan struct{}
	heardSeq int64

	wake   chan struct{}
	cancel context.CancelFunc
}

// newGroup starts a group. Called with h.mu held.
func (h *Hub) newGroup(name string) *group {
	ctx, cancel := context.WithCancel(h.ctx)
	g := &group{name: name, hub: h, subs: make(map[*Subscription]struct{}), syncing: make(map[*Subscription]struct{}),
		wake: make(chan struct{}, 1), cancel: cancel, delivered: h.deliveredCounter(name)}
	if h.cluster == nil {
		g.feed = h.feeds[""]
	}
	h.wg.Add(1)
	go func() { defer h.wg.Done(); g.syncLoop(ctx) }()
	return g
}

// observe records a live event in the tail and in a read's recording.
// Called with g.mu held.
func (g *group) observe(ev *Event) {
	if g.recording && !g.recOver {
		if len(g.rec) >= g.hub.cfg.PendingLimit {
			g.rec, g.recOver = nil, true
		} else {
			g.rec = append(g.rec, ev)
		}
	}
	if g.tail != nil && !g.tail.add(ev) {
		g.dropTail()
	}
	if g.heard != nil && g.tail != nil && g.tail.last >= g.heardSeq {
		close(g.heard)
		g.heard = nil
	}
}

// dropTail forgets the tail, and has a read in flight establish none.
// Called with g.mu held.
func (g *group) dropTail() {
	g.tail = nil
	g.gen++
	if g.heard != nil {
		close(g.heard) // nothing more to wait for
		g.heard = nil
	}
}

// fromTail brings the targets whose position the tail covers up to date
// from it, once a look at the log (Log.state, one round trip) shows that
// the tail still is the log's (tail.check), and returns the others, which
// need a read. It reads the state only when the tail serves one of them.
func (g *group) fromTail(ctx context.Context, targets []*Subscription) []*Subscription {
	g.mu.Lock()
	t, gen := g.tail, g.gen
	wanted := false
	for _, s := range targets {
		if t != nil && t.serves(s.cursor, s.epoch) {
			wanted = true
			break
		}
	}
	g.mu.Unlock()
	if !wanted {
		return targets
	}
	g.hub.tailChecks.Add(1)
	st, err := g.hub.log.state(ctx, g.name)
	if err != nil {
		return targets // the read says what is wrong
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for waited := false; ; waited = true {
		if g.gen != gen || g.tail != t {
			return targets // dropped meanwhile: events may have been missed
		}
		switch t.check(st) {
		case tailStale:
			g.dropTail()
			return targets
		case tailBehind:
			if waited {
				return targets
			}
			// Every event up to st.LastSeq once heard, the tail holds
			// what st shows (and newer events): as good as a new look.
			heard := make(chan struct{})
			g.heard, g.heardSeq = heard, st.LastSeq
			g.mu.Unlock()
			timer := time.NewTimer(g.hub.cfg.TailWait)
			select {
			case <-heard:
			case <-timer.C:
			case <-ctx.Done():
			}
			timer.Stop()
			g.mu.Lock()
			g.heard = nil
			continue
		}
		break
	}
	rest := targets[:0]
	for _, s := range targets {
		if _, ok := g.subs[s]; !ok || s.dead {
			continue
		}
		if !t.serves(s.cursor, s.epoch) {
			rest = append(rest, s)
			continue
		}
		g.hub.fromTail.Add(1)
		s.apply(t.snapshot(s.cursor), s.cursor, t.memberList())
	}
	return rest
}

func (g *group) requestSync() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *group) syncLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.wake:
		}
		backoff := 50 * time.Millisecond
		failing := false
		for {
			err := g.sync(ctx)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				if failing {
					g.hub.logger.Info("reading group history works again", "group", g.name)
				}
				break
			}
			// Only transient errors come back here (sync has already
			// failed the subscribers a permanent error concerns), and
			// only established subscribers are left waiting: those keep
			// their place and are caught up once Redis answers. Warn once
			// per episode, and not at all while the hub already says that
			// its connection is down.
			if !failing && !g.hub.feedDown(g) {
				g.hub.logger.Warn("reading group history failed; retrying", "group", g.name, "err", err)
			} else {
				g.hub.logger.Debug("reading group history failed; retrying", "group", g.name, "err", err)
			}
			failing = true
			select {
			case <-ctx.Done():
				return
			case <-g.wake: // a new subscriber or a resubscription: try now
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
		}
	}
}

// feedUp reports whether g's connection is up: placed, and its last read
// succeeded.
func (h *Hub) feedUp(g *group) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return g.feed != nil && g.feed.conn == connUp
}

// feedDown reports whether g's connection is known to be down.
func (h *Hub) feedDown(g *group) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return g.feed != nil && g.feed.conn == connDown
}

// sync reads the log once, from the lowest position any subscriber that
// needs it holds, and applies it to those subscribers under the lock, so
// live events that arrived meanwhile are deduplicated against it. It
// returns only transient errors, for the caller to retry.
func (g *group) sync(ctx context.Context) error {
	g.mu.Lock()
	if !g.ready {
		g.mu.Unlock()
		return nil // the subscription confirmation will wake us
	}
	catchup := g.catchup
	g.catchup = false
	from := g.syncing
	if catchup {
		from = g.subs
	}
	var targets []*Subscription
	for s := range from {
		if s.dead {
			delete(g.syncing, s) // served nothing more; Close removes it from subs
			continue
		}
		// A catch-up read must not race live delivery: buffer this
		// subscriber's live events until the read is applied, or it
		// would get ahead of the read and take the read for lost history.
		s.setSyncing(true)
		targets = append(targets, s)
	}
	g.mu.Unlock()
	if !catchup && len(targets) > 0 {
		// A catch-up follows a (re)subscription, which dropped the tail.
		targets = g.fromTail(ctx, targets)
	}
	if len(targets) == 0 {
		return nil
	}
	err := g.readFor(ctx, targets, true)
	if err != nil && catchup {
		g.mu.Lock()
		g.catchup = true
		g.mu.Unlock()
	}
	return err
}

// readFor reads the log from the lowest cursor of targets and applies it
// to them. On a permanent error with targets at several positions, it
// reads each position on its own (when split), so the error reaches only
// the subscribers whose read fails and never holds the others back.
// Transient errors are returned; those that mean Redis is unavailable
// first fail the targets still waiting for their first answer.
func (g *group) readFor(ctx context.Context, targets []*Subscription, split bool) error {
	g.mu.Lock()
	from, mixed := targets[0].cursor, false
	for _, s := range targets {
		from = min(from, s.cursor)
		mixed = mixed || s.cursor != targets[0].cursor
	}
	// Record the live events from now on, so the read's result and
	// them can form the tail: only if the pub/sub connection is up once
	// gen is taken (a break after that changes gen), or events published
	// before the connection comes back would be missing from it.
	gen := g.gen
	g.recording, g.rec, g.recOver = true, nil, false
	g.mu.Unlock()
	listening := g.hub.feedUp(g)
	var members []Member
	var extra func(context.Context, redis.Pipeliner) func() error
	if pres := g.hub.cfg.Presence; pres != nil && wire.KindOf(g.name) == wire.KindChat {
		extra = func(ctx context.Context, p redis.Pipeliner) func() error {
			return pres.queueList(ctx, p, g.name, &members)
		}
	}
	g.hub.reads.Add(1)
	snap, err := g.hub.readLog(ctx, g.name, from, extra)
	g.mu.Lock()
	// Taking the recording and establishing the tail under one lock: no
	// live event falls between the two.
	rec, recOver := g.rec, g.recOver
	g.recording, g.rec, g.recOver = false, nil, false
	if err == nil {
		defer g.mu.Unlock()
		g.learn(snap, members, extra != nil, rec, listening && !recOver && gen == g.gen)
		for _, s := range targets {
			if _, ok := g.subs[s]; ok && !s.dead {
				s.apply(snap, from, members)
			}
		}
		return nil
	}
	g.mu.Unlock()
	if ctx.Err() != nil {
		return err // the group is gone
	}
	if IsUnavailable(err) {
		g.mu.Lock()
		for _, s := range targets {
			if s.initial {
				s.fail(err)
			}
		}
		g.mu.Unlock()
		return err
	}
	if errors.Is(err, errLogChurn) {
		return err
	}
	if split && mixed {
		byPos := map[int64][]*Subscription{}
		g.mu.Lock()
		for _, s := range targets {
			byPos[s.cursor] = append(byPos[s.cursor], s)
		}
		g.mu.Unlock()
		var retry error
		for _, subs := range byPos {
			if err := g.readFor(ctx, subs, false); err != nil && retry == nil {
				retry = err
			}
		}
		return retry
	}
	g.hub.logger.Error("reading group history failed; dropping its subscribers", "group", g.name, "after", from, "subscribers", len(targets), "err", err)
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range targets {
		s.fail(err)
	}
	return nil
}

// learn updates the tail from a read of the log: a read that disagrees
// with the tail drops it, and one that can (ok: nothing was missed while
// it was in flight) establishes a tail, unless the current one reaches
// further back. withMembers says the read included the member list.
// Called with g.mu held.
func (g *group) learn(snap Snapshot, members []Member, withMembers bool, rec []*Event, ok bool) {
	if t := g.tail; t != nil && (snap.Epoch != t.epoch || snap.LastSeq < t.last) {
		g.dropTail()
	}
	if !ok || (withMembers && members == nil) {
		return
	}
	if g.tail != nil && g.tail.first <= snap.LastSeq+1 && (len(snap.Events) == 0 || g.tail.first <= snap.Events[0].Seq) {
		return
	}
	if t := newTail(snap, members, rec, g.hub.log.maxLen(g.name)); t != nil {
		g.tail = t
	}
}

// Subscription is one local subscriber of one group. Close it when done.
type Subscription struct {
	hub   *Hub
	group *group
	sink  Sink

	// guarded by group.mu
	cursor  int64  // seq of the last event given to the sink
	epoch   string // epoch of that event ("" before any)
	syncing bool   // waiting for a log read; live events go to pending
	initial bool   // no SyncInfo sent yet
	lost    bool   // the position it held is gone: the next SyncInfo says Recovered false
	dead    bool   // the sink refused an event, lagged or failed: deliver nothing more
	pending []*Event
	closed  bool
	answer  *time.Timer // fails the subscription when its first answer is late
}

// Group returns the subscription's group name.
func (s *Subscription) Group() string { return s.group.name }

// Close removes the subscription; when it was the group's last local
// subscriber, the hub releases the group's Redis subscription. After Close
// returns the sink receives nothing more. Safe to call more than once.
func (s *Subscription) Close() {
	h, g := s.hub, s.group
	h.mu.Lock()
	defer h.mu.Unlock()
	g.mu.Lock()
	if s.closed {
		g.mu.Unlock()
		return
	}
	s.closed = true
	s.dead = true
	s.answer.Stop()
	delete(g.subs, s)
	delete(g.syncing, s)
	empty := len(g.subs) == 0
	g.mu.Unlock()
	if empty && h.groups[g.name] == g {
		delete(h.groups, g.name)
		h.dirty[g.name] = struct{}{}
		g.cancel()
		h.wakeControl()
	}
}

// fail ends the subscription with err: Sink.Failed and nothing more.
// Called with group.mu held.
func (s *Subscription) fail(err error) {
	if s.dead {
		return
	}
	s.dead, s.pending = true, nil
	s.answer.Stop()
	s.sink.Failed(err)
}

// answerTimedOut fails a subscription that got no first answer within
// HubConfig.AnswerTimeout: Redis accepted the request but did not answer.
func (s *Subscription) answerTimedOut() {
	g := s.group
	g.mu.Lock()
	defer g.mu.Unlock()
	if !s.initial || s.hub.ctx.Err() != nil {
		return
	}
	s.fail(fmt.Errorf("%w: no answer within %v", ErrUnavailable, s.hub.cfg.AnswerTimeout))
}

// setSyncing marks the subscriber as waiting for a read of the log (its
// live events queue up in pending), or no longer. Called with group.mu
// held.
func (s *Subscription) setSyncing(on bool) {
	s.syncing = on
	if on {
		s.group.syncing[s] = struct{}{}
	} else {
		delete(s.group.syncing, s)
	}
}

// offer delivers a live event, or queues it while the subscriber syncs.
// Called with group.mu held.
func (s *Subscription) offer(ev *Event) {
	if s.dead {
		return
	}
	if s.syncing {
		if len(s.pending) >= s.hub.cfg.PendingLimit {
			s.dead = true
			s.pending = nil
			s.sink.Lagged()
			return
		}
		s.pending = append(s.pending, ev)
		return
	}
	if (s.epoch != "" && ev.Epoch != s.epoch) || ev.Seq > s.cursor+1 {
		// A gap or a new log: read the log before delivering further.
		s.setSyncing(true)
		s.pending = append(s.pending, ev)
		s.group.requestSync()
		return
	}
	if ev.Seq <= s.cursor {
		return // already delivered by replay
	}
	s.send(ev)
}

func (s *Subscription) send(ev *Event) {
	if !s.sink.Send(ev) {
		s.dead = true
		s.pending = nil
		return
	}
	s.group.delivered.Add(1)
	s.cursor, s.epoch = ev.Seq, ev.Epoch
}

// apply brings the subscriber up to date from a log read that started at
// seq from. Called with group.mu held.
func (s *Subscription) apply(snap Snapshot, from int64, members []Member) {
	if (s.epoch != "" && s.epoch != snap.Epoch) || s.cursor > snap.LastSeq {
		// The history this subscriber knows is gone (log lost, replaced,
		// or the client claims a position the log never reached).
		s.cursor, s.epoch, s.lost = 0, "", true
		s.setSyncing(true)
		if from > 0 {
			s.group.requestSync() // needs a read from the start
			return
		}
	}
	recovered := !s.lost
	replay := replayAfter(snap.Events, s.cursor)
	if len(replay) > 0 && replay[0].Seq != s.cursor+1 {
		recovered = false // trimmed past the subscriber's position
	}
	if len(replay) == 0 && snap.LastSeq > s.cursor {
		recovered = false
	}
	if s.initial || !recovered {
		info := SyncInfo{Epoch: snap.Epoch, LastSeq: snap.LastSeq, Replayed: len(replay), Recovered: recovered, Initial: s.initial, Members: members}
		if !s.sink.Synced(info) {
			s.dead, s.pending = true, nil
			return
		}
	}
	if s.initial {
		s.answer.Stop()
	}
	s.initial, s.lost = false, false
	s.epoch = snap.Epoch
	for _, ev := range replay {
		if s.send(ev); s.dead {
			return
		}
		s.hub.replayed.Add(1)
	}
	if snap.LastSeq > s.cursor {
		s.cursor = snap.LastSeq
	}
	pending := s.pending
	s.pending = nil
	s.setSyncing(false)
	for _, ev := range pending {
		if snap.Epoch != "" && ev.Epoch != snap.Epoch {
			continue // from a log this read has already replaced
		}
		// With no log at read time (snap.Epoch ""), the pending events
		// belong to a log created after the read: offer checks their order.
		s.offer(ev)
	}
}

// replayAfter is the events of events after seq cursor. A log read and
// the tail give them in seq order, so that is a suffix of events, shared
// rather than copied (a join storm replays ~250 events to each of
// thousands of sockets); events out of order are filtered into a copy.
func replayAfter(events []*Event, cursor int64) []*Event {
	i := 0
	for i < len(events) && events[i].Seq <= cursor {
		i++
	}
	for _, ev := range events[i:] {
		if ev.Seq <= cursor {
			var replay []*Event
			for _, ev := range events {
				if ev.Seq > cursor {
					replay = append(replay, ev)
				}
			}
			return replay
		}
	}
	return events[i:len(events):len(events)]
}

// connState is the state of the plain feed, or connDown when every
// shard's is down, for tests and diagnostics.
func (h *Hub) connState() connState {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.allDown() != nil {
		return connDown
	}
	if f := h.feeds[""]; f != nil {
		return f.conn
	}
	return connPending
}
