package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"taskstream/wire"
)

// WatchConfig tunes Watch and WatchMany. The zero value is usable: every
// field has a documented default.
type WatchConfig struct {
	// MinBackoff is the delay before the first reconnection; each failed
	// attempt doubles it, up to MaxBackoff, and each delay is jittered
	// (a random point in its upper half) so that clients dropped together
	// do not come back together. A connection that got a group
	// subscribed starts over from MinBackoff. Defaults 250 ms and 30 s.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// TryAgainBackoff is the least delay after the server closed with
	// 1013 (too slow a reader, or Redis unavailable) or answered 429 or
	// 503 without Retry-After. Default 2 s.
	TryAgainBackoff time.Duration
	// SSE makes watches use Server-Sent Events (one HTTP stream per
	// group) instead of a socket. Default false: a socket, and SSE only
	// when the socket's upgrade is refused (a proxy that does not pass
	// WebSockets).
	SSE bool
	// SubscribeInterval is the least time between two subscribe or
	// unsubscribe frames on a socket: what is added meanwhile goes out
	// in one frame (up to wire.MaxGroupsPerFrame groups), so watching
	// many new groups a second stays well under the server's frame
	// limit. Default 50 ms (at most 20 frames a second).
	SubscribeInterval time.Duration
	// RateLimitedDelay is how long a socket waits before it sends again
	// a subscribe or unsubscribe frame the server dropped as
	// rate_limited (its per-socket frame limit), so that the server's
	// bucket refills. Default 1 s.
	RateLimitedDelay time.Duration
	// MaxGroups is how many groups one watch subscribes at once; more
	// wait, in the order added, until a slot frees: a job group frees its
	// slot after its last event, any group when removed, once the server
	// answered its unsubscribe (a group the server ends with an error
	// frees its slot with that error). Default wire.MaxGroupsPerSocket,
	// the server's cap.
	MaxGroups int
	// Buffer is how many events may wait for Next; when it is full the
	// watch stops reading (a server that gives up on the slow reader
	// closes with 1013, and the watch resumes). Default 1024.
	Buffer int
	// ReadTimeout is how long a socket may stay silent (the server pings
	// every 25 s by default) before the watch reconnects. Default 60 s.
	ReadTimeout time.Duration
	// Logger gets a debug record for every reconnection: why ("err") and
	// after how long ("delay"). Default slog.Default().
	Logger *slog.Logger
}

func (c WatchConfig) withDefaults() WatchConfig {
	if c.MinBackoff <= 0 {
		c.MinBackoff = 250 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.TryAgainBackoff <= 0 {
		c.TryAgainBackoff = 2 * time.Second
	}
	if c.SubscribeInterval <= 0 {
		c.SubscribeInterval = 50 * time.Millisecond
	}
	if c.RateLimitedDelay <= 0 {
		c.RateLimitedDelay = time.Second
	}
	if c.MaxGroups <= 0 {
		c.MaxGroups = wire.MaxGroupsPerSocket
	}
	if c.Buffer <= 0 {
		c.Buffer = 1024
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = 60 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Position is a place in a group's history: after Seq of Epoch. The zero
// Position is the start: the whole retained history.
type Position struct {
	Seq   int64
	Epoch string
}

// IsZero reports whether p is the start of the history.
func (p Position) IsZero() bool { return p.Seq == 0 && p.Epoch == "" }

// Event is one event of a group. Skipped, when not 0, says the server
// dropped that many earlier progress events of a job for this socket
// because it fell behind, and this one stands in for them: its seq
// follows the last delivered one by Skipped+1. Lifecycle events are
// never skipped.
type Event struct {
	wire.EventFrame
}

// Time is when the event was published (zero if the server sent none).
func (e Event) Time() time.Time {
	t, _ := time.Parse(time.RFC3339Nano, e.TS)
	return t
}

// Decode decodes the event's data into v.
func (e Event) Decode(v any) error {
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("client: decode %s %s data: %w", e.Group, e.Event, err)
	}
	return nil
}

// Final reports whether the event is a job's last one (result, failed,
// or state canceled): nothing follows it in its group.
func (e Event) Final() bool {
	return wire.KindOf(e.Group) == wire.KindJob && wire.FinalJobEvent(e.Event, e.Data)
}

// Position is the place right after this event.
func (e Event) Position() Position { return Position{Seq: e.Seq, Epoch: e.Epoch} }

// NotRecoveredError is what Next returns when a group's position could
// not be resumed (the server's recovered:false): the log was lost or
// trimmed past it, so events may have been missed. The events that
// follow restart from the group's retained history (their seqs start
// over); reload any snapshot (GET /api/jobs/{id}) and go on calling
// Next. The watch itself goes on. A watch that starts at the zero
// Position asked for whatever is retained, so its first answer is not
// reported; every later one is.
type NotRecoveredError struct {
	Group   string
	From    Position // where the watch stood
	Epoch   string   // the log's epoch now
	LastSeq int64    // the log's last seq now
}

func (e *NotRecoveredError) Error() string {
	return fmt.Sprintf("taskstream: %s: the history after seq %d of epoch %q is gone (recovered:false); events restart from the retained history of epoch %q",
		e.Group, e.From.Seq, e.From.Epoch, e.Epoch)
}

// ErrClosed is returned by Next after Close.
var ErrClosed = errors.New("client: the watch was closed")

// WatchOption changes one watch.
type WatchOption func(*watchOptions)

type watchOptions struct {
	sse          bool
	onSubscribed func(wire.SubscribedFrame)
}

// ViaSSE makes the watch use Server-Sent Events from the start.
func ViaSSE() WatchOption { return func(o *watchOptions) { o.sse = true } }

// OnSubscribed calls f with each subscribed answer (on a socket, or the
// first event of an SSE stream), from the watch's goroutine: for
// programs that must know when a group is attached. f must not block.
func OnSubscribed(f func(wire.SubscribedFrame)) WatchOption {
	return func(o *watchOptions) { o.onSubscribed = f }
}

// Watcher delivers the events of one group (Watch) or of many (WatchMany)
// in order, each once, across reconnects. Its goroutine runs until the
// watch ends; Close stops it.
type Watcher struct {
	c      *Client
	cfg    WatchConfig
	opts   watchOptions
	single bool // Watch: the watch ends with its group

	items  chan item
	cancel context.CancelFunc
	done   chan struct{}
	err    error // why the watch ended; set before items is closed
	closed bool  // Close was called, under mu

	mu      sync.Mutex
	pending []change      // Add and Remove calls not yet applied
	wake    chan struct{} // one-slot signal: pending has changes

	// Owned by the watch's goroutine.
	groups map[string]*groupState
	nextID int // order of adding
}

// item is one thing for Next: an event or a non-terminal error.
type item struct {
	ev  Event
	err error
}

type change struct {
	group  string
	from   Position
	remove bool
}

// groupState is where the watch stands in one group.
type groupState struct {
	name string
	id   int // order of adding: groups wait for a slot in this order
	pos  Position
	job  bool
	// Per session: subscribed (or being subscribed), and answered.
	active   bool
	answered bool
}

// Watch delivers the events of group after from (the zero Position: its
// whole retained history, then live events) until ctx ends, Close is
// called, or the watch cannot go on. It returns at once; Next returns
// the events, and every error. A job group's watch ends after the job's
// last event: Next then returns io.EOF.
func (c *Client) Watch(ctx context.Context, group string, from Position, opts ...WatchOption) (*Watcher, error) {
	if _, err := wire.ParseGroup(group); err != nil {
		return nil, fmt.Errorf("client: watch: %w", err)
	}
	w := c.newWatcher(true, opts)
	w.add(group, from)
	w.start(ctx)
	return w, nil
}

// WatchMany watches any number of groups over one socket: Add them (at
// once, or while the watch runs), and read their events with Next. Each
// group's events come in order, each once; events of different groups
// interleave. Subscribes go out in batches (the many-group subscribe
// frame), at most WatchConfig.MaxGroups at a time; a job group is
// dropped after its last event, which frees its slot for the next. A
// group the server refuses is reported by Next as an *Error with its
// Group, and the others go on. The watch runs until ctx ends, Close is
// called, or it cannot go on.
func (c *Client) WatchMany(ctx context.Context, opts ...WatchOption) *Watcher {
	w := c.newWatcher(false, opts)
	w.start(ctx)
	return w
}

func (c *Client) newWatcher(single bool, opts []WatchOption) *Watcher {
	w := &Watcher{c: c, cfg: c.watch, single: single, done: make(chan struct{}), wake: make(chan struct{}, 1), groups: map[string]*groupState{}}
	for _, o := range opts {
		o(&w.opts)
	}
	w.items = make(chan item, w.cfg.Buffer)
	return w
}

func (w *Watcher) start(ctx context.Context) {
	ctx, w.cancel = context.WithCancel(ctx)
	go func() {
		defer close(w.done)
		w.err = w.run(ctx)
		close(w.items)
	}()
}

// Add watches group from a position (WatchMany). Adding a group already
// watched does nothing. It never blocks.
func (w *Watcher) Add(group string, from Position) error {
	if _, err := wire.ParseGroup(group); err != nil {
		return fmt.Errorf("client: watch: %w", err)
	}
	w.add(group, from)
	return nil
}

func (w *Watcher) add(group string, from Position) {
	w.signal(change{group: group, from: from})
}

// Remove stops watching group; events of it that are already queued for
// Next are still delivered.
func (w *Watcher) Remove(group string) { w.signal(change{group: group, remove: true}) }

func (w *Watcher) signal(ch change) {
	w.mu.Lock()
	w.pending = append(w.pending, ch)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Next returns the next event. Errors that leave the watch running are
// a *NotRecoveredError (reload, then go on) and, in WatchMany, an *Error
// with a Group (that group was refused and dropped). Any other error
// means the watch has ended, and Next returns it from then on: io.EOF
// after a job's last event (Watch of a job group), ErrClosed after
// Close, ctx's error, a *CloseError (the server closed for a policy:
// signed out, token revoked), or an *Error the server answered (such as
// forbidden).
func (w *Watcher) Next(ctx context.Context) (Event, error) {
	select {
	case it, ok := <-w.items:
		if !ok {
			return Event{}, w.err
		}
		return it.ev, it.err
	case <-ctx.Done():
		return Event{}, ctx.Err()
	}
}

// Close stops the watch (a socket is closed with a close handshake) and
// waits for its goroutine.
func (w *Watcher) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.cancel()
	<-w.done
	return nil
}

// Done is closed when the watch has ended; the events still queued can
// be read with Next.
func (w *Watcher) Done() <-chan struct{} { return w.done }

// emit hands an item to Next, waiting while the buffer is full.
func (w *Watcher) emit(ctx context.Context, it item) bool {
	select {
	case w.items <- it:
		return true
	case <-ctx.Done():
		return false
	}
}

// applyChanges applies Add and Remove calls; it returns the groups added
// and removed.
func (w *Watcher) applyChanges() (added []*groupState, removed []*groupState) {
	w.mu.Lock()
	pending := w.pending
	w.pending = nil
	w.mu.Unlock()
	for _, ch := range pending {
		st := w.groups[ch.group]
		switch {
		case ch.remove && st != nil:
			delete(w.groups, ch.group)
			removed = append(removed, st)
		case !ch.remove && st == nil:
			w.nextID++
			st = &groupState{name: ch.group, id: w.nextID, pos: ch.from, job: wire.KindOf(ch.group) == wire.KindJob}
			w.groups[ch.group] = st
			added = append(added, st)
		}
	}
	return added, removed
}

// sessionEnd is how one connection (a socket, or a set of SSE streams)
// ended.
type sessionEnd struct {
	err        error
	terminal   bool          // stop the watch with err
	fallback   bool          // the socket's upgrade was refused: use SSE
	retryAfter time.Duration // wait at least this long
	progressed bool          // a group got subscribed: reset the backoff
}

// run is the watch's goroutine: it connects, and reconnects with backoff,
// until the watch ends; it returns why.
func (w *Watcher) run(ctx context.Context) error {
	sse := w.cfg.SSE || w.opts.sse
	attempt := 0
	for {
		w.applyChanges()
		if w.single && len(w.groups) == 0 {
			return io.EOF
		}
		var end sessionEnd
		if sse {
			end = w.runSSE(ctx)
		} else {
			end = w.runSocket(ctx)
		}
		if ctx.Err() != nil {
			return w.stopErr(ctx)
		}
		if end.terminal {
			return end.err
		}
		if w.single && len(w.groups) == 0 {
			return io.EOF
		}
		if end.fallback {
			w.cfg.Logger.Debug("taskstream watch: the socket's upgrade was refused; using Server-Sent Events", "err", end.err)
			sse = true
			continue
		}
		if end.progressed {
			attempt = 0
		}
		delay := max(w.backoff(attempt), end.retryAfter)
		attempt++
		w.cfg.Logger.Debug("taskstream watch: reconnecting", "err", end.err, "delay", delay, "attempt", attempt)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return w.stopErr(ctx)
		case <-t.C:
		}
	}
}

// stopErr is why a watch whose context ended stopped.
func (w *Watcher) stopErr(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	return ctx.Err()
}

// backoff is the jittered delay before reconnection attempt n (from 0).
func (w *Watcher) backoff(n int) time.Duration {
	d := w.cfg.MinBackoff
	for range min(n, 30) {
		d *= 2
		if d >= w.cfg.MaxBackoff {
			d = w.cfg.MaxBackoff
			break
		}
	}
	return d/2 + rand.N(d/2+1)
}

// tracker is what both transports share: it turns answers and events
// into what Next returns, keeping each group's position.
type tracker struct {
	w          *Watcher
	ctx        context.Context
	progressed bool
	// ended is called when a group is gone from the watch (its job
	// ended, or it was refused): the transport frees its slot.
	ended func(st *groupState, unsubscribe bool)
}

// subscribed handles a group's subscribed answer (or a later
// recovered:false from the server).
func (t *tracker) subscribed(f wire.SubscribedFrame) bool {
	st := t.w.groups[f.Group]
	if st == nil {
		return true // removed meanwhile
	}
	st.answered = true
	t.progressed = true
	if !f.Recovered && !st.pos.IsZero() {
		lost := &NotRecoveredError{Group: f.Group, From: st.pos, Epoch: f.Epoch, LastSeq: f.LastSeq}
		if !t.w.emit(t.ctx, item{err: lost}) {
			return false
		}
	}
	if !f.Recovered {
		st.pos = Position{Epoch: f.Epoch} // the replay starts over
	} else if st.pos.Epoch == "" {
		st.pos.Epoch = f.Epoch
	}
	if t.w.opts.onSubscribed != nil {
		t.w.opts.onSubscribed(f)
	}
	return true
}

// event handles one event frame; it returns false when the watch must
// stop (its context ended).
func (t *tracker) event(f wire.EventFrame) bool {
	st := t.w.groups[f.Group]
	if st == nil {
		return true // removed meanwhile
	}
	if f.Seq <= st.pos.Seq && (st.pos.Epoch == "" || f.Epoch == st.pos.Epoch) {
		return true // already delivered (a replay after a reconnect)
	}
	st.pos = Position{Seq: f.Seq, Epoch: f.Epoch}
	ev := Event{EventFrame: f}
	if !t.w.emit(t.ctx, item{ev: ev}) {
		return false
	}
	if st.job && ev.Final() {
		delete(t.w.groups, st.name)
		t.ended(st, true)
	}
	return true
}

// refused handles an error answer for one group: it is dropped and
// reported. It returns the terminal error for a single-group watch.
func (t *tracker) refused(st *groupState, e *Error) (terminal error, ok bool) {
	delete(t.w.groups, st.name)
	t.ended(st, false)
	if t.w.single {
		return e, true
	}
	return nil, t.w.emit(t.ctx, item{err: e})
}
