package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"taskstream/wire"
)

// sseMsg is what one SSE stream tells its session: a frame, or that it
// ended (err nil: the server ended it).
type sseMsg struct {
	group string
	sub   *wire.SubscribedFrame
	ev    *wire.EventFrame
	end   bool
	err   error
}

// sseSession is a watch over Server-Sent Events: one stream per group,
// GET /api/groups/{group}/events, resumed with after and epoch.
type sseSession struct {
	w       *Watcher
	tr      tracker
	ctx     context.Context
	msgs    chan sseMsg
	streams map[string]context.CancelFunc
	wg      sync.WaitGroup
	queue   []*groupState // waiting for a slot
}

// runSSE runs one SSE session until a stream fails, and says how it
// ended.
func (w *Watcher) runSSE(ctx context.Context) sessionEnd {
	ctx, cancel := context.WithCancel(ctx)
	s := &sseSession{w: w, ctx: ctx, msgs: make(chan sseMsg, 64), streams: map[string]context.CancelFunc{}}
	s.tr = tracker{w: w, ctx: ctx, ended: s.ended}
	defer func() {
		cancel()
		s.wg.Wait()
	}()
	for _, st := range w.groups {
		st.active, st.answered = false, false
		s.queue = append(s.queue, st)
	}
	slices.SortFunc(s.queue, func(a, b *groupState) int { return a.id - b.id })
	end := s.loop()
	end.progressed = s.tr.progressed
	return end
}

func (s *sseSession) loop() sessionEnd {
	for {
		s.startQueued()
		if s.w.single && len(s.w.groups) == 0 {
			return sessionEnd{}
		}
		select {
		case m := <-s.msgs:
			st := s.w.groups[m.group]
			switch {
			case st == nil || !st.active:
				// a stream of a group that left the watch
			case m.sub != nil:
				if !s.tr.subscribed(*m.sub) {
					return sessionEnd{}
				}
			case m.ev != nil:
				if !s.tr.event(*m.ev) {
					return sessionEnd{}
				}
			case m.err != nil:
				var e *Error
				if errors.As(m.err, &e) {
					switch e.Status {
					case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
						if terminal, ok := s.tr.refused(st, e); terminal != nil || !ok {
							return sessionEnd{err: terminal, terminal: terminal != nil}
						}
						continue
					case http.StatusTooManyRequests, http.StatusServiceUnavailable:
						return sessionEnd{err: e, retryAfter: max(e.RetryAfter, s.w.cfg.TryAgainBackoff)}
					}
				}
				return sessionEnd{err: m.err}
			case m.end:
				// The server ended a stream of a group still watched
				// (shutting down, or the reader fell behind): reconnect.
				return sessionEnd{err: fmt.Errorf("client: the event stream of %s ended", m.group)}
			}
		case <-s.w.wake:
			added, removed := s.w.applyChanges()
			s.queue = append(s.queue, added...)
			for _, st := range removed {
				s.ended(st, true)
			}
		case <-s.ctx.Done():
			return sessionEnd{}
		}
	}
}

// startQueued starts streams for queued groups while there are slots.
func (s *sseSession) startQueued() {
	for len(s.queue) > 0 && len(s.streams) < s.w.cfg.MaxGroups {
		st := s.queue[0]
		s.queue = s.queue[1:]
		if s.w.groups[st.name] != st || st.active {
			continue
		}
		st.active = true
		ctx, cancel := context.WithCancel(s.ctx)
		s.streams[st.name] = cancel
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.stream(ctx, st.name, st.pos) }()
	}
}

// ended stops the stream of a group that left the watch.
func (s *sseSession) ended(st *groupState, _ bool) {
	st.active = false
	if cancel := s.streams[st.name]; cancel != nil {
		cancel()
		delete(s.streams, st.name)
	}
}

// tell hands a message to the session unless the stream was stopped.
func (s *sseSession) tell(ctx context.Context, m sseMsg) bool {
	select {
	case s.msgs <- m:
		return true
	case <-ctx.Done():
		return false
	}
}

// stream reads one group's event stream until it ends.
func (s *sseSession) stream(ctx context.Context, group string, from Position) {
	c := s.w.c
	// A stream silent for longer than ReadTimeout (the server sends a
	// comment every 15 s) is dead: stop it, and the session reconnects.
	parent := ctx // the stream's own: canceled when the group leaves
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	idle := time.AfterFunc(s.w.cfg.ReadTimeout, func() { stop(errSilent) })
	defer idle.Stop()
	q := url.Values{"after": {strconv.FormatInt(from.Seq, 10)}}
	if from.Epoch != "" {
		q.Set("epoch", from.Epoch)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(groupPath(group, "/events"), q), nil)
	if err != nil {
		s.tell(parent, sseMsg{group: group, err: err})
		return
	}
	req.Header = c.headers()
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	res, err := c.send(req)
	if err != nil {
		s.tell(parent, sseMsg{group: group, err: err})
		return
	}
	defer res.Body.Close()
	body := &activeReader{r: res.Body, idle: idle, timeout: s.w.cfg.ReadTimeout}
	err = readSSE(body, func(name string, data []byte) bool {
		m := sseMsg{group: group}
		if name == wire.TypeSubscribed {
			m.sub = new(wire.SubscribedFrame)
			err = json.Unmarshal(data, m.sub)
			m.sub.Group = group
		} else {
			m.ev = new(wire.EventFrame)
			err = json.Unmarshal(data, m.ev)
		}
		if err != nil {
			m = sseMsg{group: group, err: fmt.Errorf("client: %s: an SSE %s event that is not a frame: %w", group, name, err)}
		}
		return s.tell(ctx, m) && m.err == nil
	})
	if parent.Err() != nil {
		return
	}
	if errors.Is(context.Cause(ctx), errSilent) {
		err = errSilent
	}
	if err != nil {
		s.tell(parent, sseMsg{group: group, err: fmt.Errorf("client: the event stream of %s: %w", group, err)})
		return
	}
	s.tell(parent, sseMsg{group: group, end: true})
}

// errSilent ends a stream that sent nothing for ReadTimeout.
var errSilent = errors.New("client: the event stream was silent for too long")

// activeReader pushes a stream's idle timer back on every read.
type activeReader struct {
	r       io.Reader
	idle    *time.Timer
	timeout time.Duration
}

func (a *activeReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.idle.Reset(a.timeout)
	}
	return n, err
}

// readSSE parses a text/event-stream and calls fn with each event's name
// ("message" when it has none) and data, until fn returns false or the
// stream ends (nil at EOF).
func readSSE(r io.Reader, fn func(name string, data []byte) bool) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var name string
	var data []byte
	hasData := false
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 { // the blank line dispatches
			if hasData {
				if name == "" {
					name = "message"
				}
				if !fn(name, data) {
					return nil
				}
			}
			name, data, hasData = "", nil, false
			continue
		}
		if line[0] == ':' {
			continue // a comment: the server's heartbeat
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			name = string(value)
		case "data":
			if hasData {
				data = append(data, '\n')
			}
			data = append(data, value...)
			hasData = true
		}
	}
}
