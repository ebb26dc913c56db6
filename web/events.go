package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/gorilla/websocket"

	"taskstream/jobs"
	"taskstream/progress"
	"taskstream/wire"
)

// Fallbacks on the same log (docs/protocol.md): a group's events over a socket
// already subscribed, Server-Sent Events, or JSON long-poll. All three go
// through Hub.Subscribe, the one place that decides what comes after seq N,
// so they share the socket's ordering and resume guarantees.

const (
	longPollDefault = 25 * time.Second
	longPollMax     = 60 * time.Second
	// streamBuffer bounds what one SSE or long-poll client may have queued,
	// replay included; beyond it an SSE stream ends (the client resumes with
	// Last-Event-ID) and a long-poll answer is cut (the client asks again).
	streamBuffer = 4096
)

func (s *Server) handleJobEvents(w http.ResponseWriter, r *http.Request) {
	s.serveEvents(w, r, jobs.Group(chi.URLParam(r, "id")))
}

func (s *Server) handleGroupEvents(w http.ResponseWriter, r *http.Request) {
	// chi matches the escaped path, so "job%3AID" arrives escaped.
	group, err := url.PathUnescape(chi.URLParam(r, "group"))
	if err != nil {
		s.writeError(w, r, apiErr(CodeBadRequest, "the group in the path is not URL-encoded properly"))
		return
	}
	s.serveEvents(w, r, group)
}

// eventsQuery is where a fallback client stands in a group.
type eventsQuery struct {
	after int64
	epoch string
	wait  time.Duration
}

func parseEventsQuery(r *http.Request) (eventsQuery, error) {
	q := eventsQuery{epoch: r.URL.Query().Get("epoch"), wait: longPollDefault}
	after := r.URL.Query().Get("after")
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		after = id // an EventSource reconnecting by itself
	}
	if after != "" {
		n, err := parseSeq(after)
		if err != nil {
			return q, err
		}
		q.after = n
	}
	if v := r.URL.Query().Get("wait"); v != "" {
		secs, err := strconv.ParseFloat(v, 64)
		if err != nil || secs < 0 || secs > longPollMax.Seconds() {
			return q, apiErr(CodeBadRequest, fmt.Sprintf("wait must be from 0 to %.0f seconds", longPollMax.Seconds()))
		}
		q.wait = time.Duration(secs * float64(time.Second))
	}
	return q, nil
}

func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request, group string) {
	if !progress.ValidGroup(group) {
		s.writeError(w, r, apiErr(CodeBadRequest, fmt.Sprintf("bad group name %q", group)))
		return
	}
	if err := s.authorizeGroup(r.Context(), principalOf(r), group); err != nil {
		s.writeError(w, r, err)
		return
	}
	q, err := parseEventsQuery(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	switch {
	case websocket.IsWebSocketUpgrade(r):
		after := q.after
		s.serveSocket(w, r, &clientFrame{ClientFrame: wire.ClientFrame{Op: opSubscribe, Group: group, After: &after, Epoch: q.epoch}})
	case acceptsEventStream(r):
		s.serveSSE(w, r, group, q)
	default:
		s.serveLongPoll(w, r, group, q)
	}
}

func acceptsEventStream(r *http.Request) bool { return accepts(r, "text/event-stream") }

// accepts reports whether the request's Accept header names mediaType
// itself (not through a wildcard).
func accepts(r *http.Request, mediaType string) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(mt), mediaType) {
			return true
		}
	}
	return false
}

// streamItem is a SyncInfo or an event, in the order the hub gave them.
type streamItem struct {
	info *progress.SyncInfo
	ev   *progress.Event
}

// bufferSink collects a subscription's deliveries for a handler goroutine
// that drains them at its own pace, up to a limit.
type bufferSink struct {
	mu     sync.Mutex
	items  []streamItem
	limit  int
	lagged bool
	failed error // from Sink.Failed: the subscription is over
	notify chan struct{}
}

func newBufferSink(limit int) *bufferSink {
	return &bufferSink{limit: limit, notify: make(chan struct{}, 1)}
}

func (b *bufferSink) push(it streamItem) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.items) >= b.limit {
		b.lagged = true
	} else {
		b.items = append(b.items, it)
	}
	select {
	case b.notify <- struct{}{}:
	default:
	}
	return !b.lagged
}

func (b *bufferSink) Synced(info progress.SyncInfo) bool { return b.push(streamItem{info: &info}) }
func (b *bufferSink) Send(ev *progress.Event) bool       { return b.push(streamItem{ev: ev}) }
func (b *bufferSink) Lagged() {
	b.mu.Lock()
	b.lagged = true
	b.mu.Unlock()
	b.wake()
}

func (b *bufferSink) Failed(err error) {
	b.mu.Lock()
	b.failed = err
	b.mu.Unlock()
	b.wake()
}

func (b *bufferSink) wake() {
	select {
	case b.notify <- struct{}{}:
	default:
	}
}

// take returns what has queued up, whether the sink overflowed, and the
// error that ended the subscription, if one did.
func (b *bufferSink) take() ([]streamItem, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	items := b.items
	b.items = nil
	return items, b.lagged, b.failed
}

// firstAnswer waits for the subscription's first answer: its initial
// SyncInfo (left in the sink for the caller to take) or the error that
// ended it. The hub gives every subscription an answer within its
// AnswerTimeout, so this ends; ok is false when the request ended first.
func (s *Server) firstAnswer(ctx context.Context, sink *bufferSink) (ok bool, err error) {
	for {
		sink.mu.Lock()
		ready, failed := len(sink.items) > 0 || sink.lagged, sink.failed
		sink.mu.Unlock()
		if failed != nil {
			return true, failed
		}
		if ready {
			sink.wake() // what is queued is the caller's to take
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, nil
		case <-s.stopping():
			return true, apiErr(CodeUnavailable, "server is shutting down; retry shortly")
		case <-sink.notify:
		}
	}
}

// stopping is closed when the server shuts down, so streams end and
// http.Server.Shutdown does not wait on them.
func (s *Server) stopping() <-chan struct{} { return s.stopCh }

func (s *Server) serveSSE(w http.ResponseWriter, r *http.Request, group string, q eventsQuery) {
	ctx, done := s.trackStream(r, transportSSE)
	defer done()
	rc := http.NewResponseController(w)
	sink := newBufferSink(streamBuffer)
	sub, err := s.hub.Subscribe(group, q.after, q.epoch, sink)
	if err != nil {
		s.writeError(w, r, hubError(err))
		return
	}
	defer sub.Close()
	// The status line waits for the hub's first answer, so a subscription
	// that cannot start (Redis unavailable) is a 503 with Retry-After, not
	// a stream that ends at once and that EventSource retries blindly.
	if ok, err := s.firstAnswer(ctx, sink); !ok {
		if r.Context().Err() == nil { // revoked or disconnected, not gone
			s.writeError(w, r, endedBy(ctx))
		}
		return
	} else if err != nil {
		s.writeError(w, r, hubError(err))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx and friends: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	write := func(chunk string) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		if _, err := fmt.Fprint(w, chunk); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write("retry: 2000\n\n") {
		return
	}
	isJob := wire.KindOf(group) == wire.KindJob
	heartbeat := time.NewTicker(s.cfg.SSEHeartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stopping():
			return
		case <-heartbeat.C:
			if !write(": ping\n\n") {
				return
			}
		case <-sink.notify:
			items, lagged, failed := sink.take()
			var b strings.Builder
			final := false
			for _, it := range items {
				if it.info != nil {
					fmt.Fprintf(&b, "event: subscribed\ndata: %s\n\n", subscribedJSON(group, nil, *it.info))
					continue
				}
				fmt.Fprintf(&b, "id: %d\nevent: %s\ndata: %s\n\n", it.ev.Seq, it.ev.Name, it.ev.Frame())
				if isJob && jobs.FinalEvent(it.ev.Name, it.ev.Data) {
					final = true
					break
				}
			}
			// lagged: the client reconnects with Last-Event-ID. failed: the
			// log cannot be read any more (the hub logged why); the
			// reconnection gets the error as its status.
			if !write(b.String()) || final || lagged || failed != nil {
				return
			}
		}
	}
}

// longPollAnswer is the JSON long-poll body.
type longPollAnswer struct {
	Events    []json.RawMessage `json:"events"`
	LastSeq   int64             `json:"last_seq"`
	Epoch     string            `json:"epoch"`
	Recovered bool              `json:"recovered"`
}

func (s *Server) serveLongPoll(w http.ResponseWriter, r *http.Request, group string, q eventsQuery) {
	ctx, done := s.trackStream(r, transportLongPoll)
	defer done()
	sink := newBufferSink(streamBuffer)
	sub, err := s.hub.Subscribe(group, q.after, q.epoch, sink)
	if err != nil {
		s.writeError(w, r, hubError(err))
		return
	}
	defer sub.Close()
	ans := longPollAnswer{Events: []json.RawMessage{}, LastSeq: q.after, Epoch: q.epoch, Recovered: true}
	// wait starts now, but an answer always waits for the hub's first
	// one (bounded by its AnswerTimeout), so wait=0 still answers with
	// what the log holds instead of nothing.
	wait := time.NewTimer(q.wait)
	defer wait.Stop()
	synced, waited := false, false
	// replayLeft counts the events the last SyncInfo announced that have
	// not arrived yet: the hub delivers them right behind it, but this
	// goroutine may take the SyncInfo alone, and an answer cut there would
	// report a last_seq the client never got events up to.
	replayLeft := 0
	cut := false // the sink overflowed: answer with what it holds
	for {
		select {
		case <-ctx.Done():
			if r.Context().Err() == nil { // revoked or disconnected, not gone
				s.writeError(w, r, endedBy(ctx))
			}
			return
		case <-s.stopping():
			s.writeError(w, r, apiErr(CodeUnavailable, "server is shutting down; poll again"))
			return
		case <-wait.C:
			waited = true
		case <-sink.notify:
			items, lagged, failed := sink.take()
			if failed != nil {
				s.writeError(w, r, hubError(failed))
				return
			}
			for _, it := range items {
				if it.info != nil {
					synced = true
					ans.Epoch = it.info.Epoch
					if !it.info.Recovered {
						// History restarts: what was collected belongs to
						// what the client must now forget.
						ans.Recovered, ans.Events = false, ans.Events[:0]
					}
					if it.info.Replayed == 0 {
						ans.LastSeq = it.info.LastSeq
					}
					replayLeft = it.info.Replayed
					continue
				}
				replayLeft = max(replayLeft-1, 0)
				ans.Events = append(ans.Events, it.ev.Frame())
				ans.LastSeq, ans.Epoch = it.ev.Seq, it.ev.Epoch
			}
			if lagged {
				waited, cut = true, true
			}
		}
		if synced && (replayLeft == 0 || cut) && (waited || len(ans.Events) > 0) {
			writeJSON(w, http.StatusOK, ans)
			return
		}
	}
}

func subscribedJSON(group string, ref json.RawMessage, info progress.SyncInfo) []byte {
	if info.Members == nil {
		return mustJSON(subscribedFrame{Type: wire.TypeSubscribed, Group: group, Ref: ref, Epoch: info.Epoch,
			LastSeq: info.LastSeq, Replayed: info.Replayed, Recovered: info.Recovered})
	}
	return subscribedUsers.frame(group, ref, info)
}

// subscribedUsers remembers the member list last encoded for a subscribed
// frame, and the last whole frame made with it. The hub hands the same
// slice to every subscriber of one sync (and of a group's in-memory tail,
// until the room changes) and never changes a slice it handed out, so a
// join storm encodes a room's members (about 13 KB for 250) once per
// batch of new sockets instead of once per socket; and the sockets that
// subscribe with the same ref to the same state of the room (a join storm
// between two presence flushes) share one frame, instead of each copying
// the list into a frame of its own (5,000 sockets: 60 MB to allocate,
// copy and collect). Frames are never changed once queued (event frames,
// too, are shared by every subscriber). Holding the slice keeps its
// address from going to another list.
var subscribedUsers usersCache

type usersCache struct {
	mu   sync.Mutex
	list []progress.Member
	json []byte // shared: callers copy it

	key       subscribedKey // what last was made with list
	lastFrame []byte        // shared, read-only; nil when none was made with list
}

// subscribedKey is what, besides the member list, a subscribed frame says.
type subscribedKey struct {
	group, ref, epoch string
	lastSeq           int64
	replayed          int
	recovered         bool
}

// frame is the subscribed frame of group for info (info.Members not nil):
// json.Marshal's bytes with "users", the frame's last field, set.
func (c *usersCache) frame(group string, ref json.RawMessage, info progress.SyncInfo) []byte {
	key := subscribedKey{group: group, ref: string(ref), epoch: info.Epoch, lastSeq: info.LastSeq,
		replayed: info.Replayed, recovered: info.Recovered}
	c.mu.Lock()
	defer c.mu.Unlock()
	users := c.encodeLocked(info.Members)
	if c.lastFrame != nil && c.key == key {
		return c.lastFrame
	}
	b := mustJSON(subscribedFrame{Type: wire.TypeSubscribed, Group: group, Ref: ref, Epoch: info.Epoch,
		LastSeq: info.LastSeq, Replayed: info.Replayed, Recovered: info.Recovered})
	out := make([]byte, 0, len(b)+len(`,"users":`)+len(users)+1)
	out = append(out, b[:len(b)-1]...)
	out = append(out, `,"users":`...)
	out = append(out, users...)
	out = append(out, '}')
	c.key, c.lastFrame = key, out
	return out
}

// encodeLocked is list's JSON, made again only for another list. Called
// with c.mu held.
func (c *usersCache) encodeLocked(list []progress.Member) []byte {
	if c.json != nil && len(list) == len(c.list) && (len(list) == 0 || &list[0] == &c.list[0]) {
		return c.json
	}
	c.list, c.json, c.lastFrame = list, mustJSON(list), nil
	return c.json
}

// hubError maps an error from the hub (Subscribe, or Sink.Failed) to
// what the client is told: shutting down and Redis unavailable are 503
// (the latter through writeError's mapping), anything else is internal.
func hubError(err error) error {
	if errors.Is(err, progress.ErrClosed) {
		return apiErr(CodeUnavailable, "server is shutting down")
	}
	return err
}
