package client

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/wire"
)

// socketSession is one socket of a watch: its groups subscribed in
// batches, its frames read by a goroutine of its own.
type socketSession struct {
	w    *Watcher
	conn *Conn
	tr   tracker

	frames     chan wire.ServerFrame // from the reader; closed when it stops
	stop       chan struct{}         // closed to stop the reader
	readerDone chan struct{}
	readErr    error // why the reader stopped; read after frames is closed

	toSub   []*groupState // waiting to be subscribed, in the order added
	toUnsub []string      // waiting to be unsubscribed
	// leaving counts, per group, the unsubscribes sent and not answered
	// yet. The server holds such a group until it handles the frame, and
	// it does not handle a frame it drops as rate_limited: so the group
	// still counts in active until its unsubscribed answer (a dropped
	// frame is sent again), and is not subscribed again meanwhile.
	leaving map[string]int
	// active is how many groups the server holds for this socket, as far
	// as answers tell: subscribed (or being subscribed), and unsubscribed
	// without an answer yet. It never falls below the server's own count,
	// so a subscribe within MaxGroups is never refused for the cap.
	active   int
	refs     map[string]*sentFrame
	ref      int64
	nextSend time.Time
	timer    *time.Timer
}

// sentFrame is a subscribe (groups) or unsubscribe (unsub) frame whose
// groups are not all answered.
type sentFrame struct {
	groups []*groupState
	unsub  []string
	left   int
}

// runSocket runs one socket until it ends, and says how.
func (w *Watcher) runSocket(ctx context.Context) sessionEnd {
	if err := w.c.ensureSession(ctx); err != nil {
		return w.httpEnd(err)
	}
	ws, res, err := w.c.dialer.DialContext(ctx, w.c.wsURL("/ws", nil), w.c.headers())
	if err != nil {
		end := w.httpEnd(dialError(res, err))
		if !end.terminal && end.retryAfter == 0 && res != nil {
			// Anything else answered instead of an upgrade (400, 404,
			// 426, 501, a proxy's 502): the way to the server does not
			// pass sockets.
			end.fallback = true
		}
		return end
	}
	s := &socketSession{
		w: w, conn: &Conn{ws: ws}, frames: make(chan wire.ServerFrame, 64), stop: make(chan struct{}), readerDone: make(chan struct{}),
		refs: map[string]*sentFrame{}, leaving: map[string]int{}, timer: time.NewTimer(time.Hour),
	}
	s.timer.Stop()
	s.tr = tracker{w: w, ctx: ctx, ended: s.ended}
	for _, st := range w.groups {
		st.active, st.answered = false, false
		s.toSub = append(s.toSub, st)
	}
	slices.SortFunc(s.toSub, func(a, b *groupState) int { return a.id - b.id })
	go s.read()
	end := s.loop(ctx)
	end.progressed = s.tr.progressed
	return end
}

// httpEnd says how a session ends on err from an HTTP answer: a refused
// credential stops the watch, 429 and 503 back off (at least
// TryAgainBackoff, or the Retry-After), anything else retries.
func (w *Watcher) httpEnd(err error) sessionEnd {
	var e *Error
	if !errors.As(err, &e) {
		return sessionEnd{err: err} // no answer: the network; retry
	}
	switch e.Status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return sessionEnd{err: e, terminal: true}
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return sessionEnd{err: e, retryAfter: max(e.RetryAfter, w.cfg.TryAgainBackoff)}
	}
	return sessionEnd{err: e}
}

// read is the socket's reader goroutine.
func (s *socketSession) read() {
	defer close(s.readerDone)
	defer close(s.frames)
	ws := s.conn.ws
	timeout := s.w.cfg.ReadTimeout
	ws.SetPingHandler(func(data string) error {
		_ = ws.SetReadDeadline(time.Now().Add(timeout))
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
			return err
		}
		return nil
	})
	for {
		_ = ws.SetReadDeadline(time.Now().Add(timeout))
		f, err := s.conn.ReadFrame()
		if err != nil {
			s.readErr = err
			return
		}
		select {
		case s.frames <- f:
		case <-s.stop:
			return
		}
	}
}

func (s *socketSession) loop(ctx context.Context) sessionEnd {
	for {
		if err := s.flush(); err != nil {
			s.closeNow()
			return sessionEnd{err: err}
		}
		if s.w.single && len(s.w.groups) == 0 {
			s.shutdown()
			return sessionEnd{}
		}
		select {
		case f, ok := <-s.frames:
			if !ok {
				return s.readEnd()
			}
			if end, stop := s.handle(f); stop {
				s.shutdown()
				return end
			}
		case <-s.w.wake:
			added, removed := s.w.applyChanges()
			s.toSub = append(s.toSub, added...)
			for _, st := range removed {
				s.ended(st, true)
			}
		case <-s.timer.C:
		case <-ctx.Done():
			s.shutdown()
			return sessionEnd{}
		}
	}
}

// readEnd says how the socket ended, once its reader stopped.
func (s *socketSession) readEnd() sessionEnd {
	s.closeNow()
	var ce *CloseError
	if errors.As(s.readErr, &ce) {
		switch {
		case !ce.Resumable():
			return sessionEnd{err: ce, terminal: true}
		case ce.Code == wire.CloseTryAgain:
			return sessionEnd{err: ce, retryAfter: s.w.cfg.TryAgainBackoff}
		}
	}
	return sessionEnd{err: s.readErr}
}

// ended frees the slot of a group that left the watch; unsubscribe says
// the server still holds it.
func (s *socketSession) ended(st *groupState, unsubscribe bool) {
	if !st.active {
		return
	}
	st.active = false
	if unsubscribe {
		s.toUnsub = append(s.toUnsub, st.name) // the slot frees when the server answers
		return
	}
	s.active--
}

// unsubscribed handles the server's answer to an unsubscribe of group:
// it no longer holds the group, so its slot is free.
func (s *socketSession) unsubscribed(group string, ref json.RawMessage) {
	if !s.doneLeaving(group) {
		return // not ours
	}
	s.active--
	s.answered(ref)
}

// doneLeaving uncounts one unsubscribe of group in leaving; false when
// none was counted.
func (s *socketSession) doneLeaving(group string) bool {
	switch n := s.leaving[group]; n {
	case 0:
		return false
	case 1:
		delete(s.leaving, group)
	default:
		s.leaving[group] = n - 1
	}
	return true
}

// unsubscribeDropped handles the refusal of a whole unsubscribe frame:
// the server did not handle it and still holds its groups. One dropped
// as rate_limited is sent again after RateLimitedDelay; any other
// refusal would come again, so its groups stay counted (the server
// holds them until the socket ends).
func (s *socketSession) unsubscribeDropped(sent *sentFrame, e *Error) {
	for _, g := range sent.unsub {
		s.doneLeaving(g)
	}
	if e.Code != wire.CodeRateLimited {
		s.w.cfg.Logger.Warn("taskstream watch: the server refused an unsubscribe; its groups keep their slots on this socket", "err", e, "groups", len(sent.unsub))
		return
	}
	s.toUnsub = append(s.toUnsub, sent.unsub...)
	s.nextSend = time.Now().Add(s.w.cfg.RateLimitedDelay) // let the server's bucket refill
}

// handle takes one frame; stop says the session must end (with end).
func (s *socketSession) handle(f wire.ServerFrame) (end sessionEnd, stop bool) {
	switch f.Type {
	case wire.TypeEvent:
		if !s.current(f.Group) {
			return sessionEnd{}, false
		}
		ok := s.tr.event(wire.EventFrame{Type: f.Type, Group: f.Group, Seq: f.Seq, Epoch: f.Epoch, Event: f.Event, Data: f.Data, TS: f.TS, Skipped: f.Skipped})
		return sessionEnd{}, !ok
	case wire.TypeSubscribed:
		s.answered(f.Ref)
		if !s.current(f.Group) {
			return sessionEnd{}, false
		}
		ok := s.tr.subscribed(wire.SubscribedFrame{Type: f.Type, Group: f.Group, Ref: f.Ref, Epoch: f.Epoch, LastSeq: f.LastSeq, Replayed: f.Replayed, Recovered: f.Recovered, Users: f.Users})
		return sessionEnd{}, !ok
	case wire.TypeUnsubscribed:
		s.unsubscribed(f.Group, f.Ref)
	case wire.TypeError:
		e := &Error{Code: f.Code, Message: f.Message, Group: f.Group}
		if sent := s.refs[string(f.Ref)]; sent != nil && sent.unsub != nil {
			if f.Group != "" {
				s.unsubscribed(f.Group, f.Ref) // refused for that group alone: the server does not hold it
				return sessionEnd{}, false
			}
			delete(s.refs, string(f.Ref))
			s.unsubscribeDropped(sent, e)
			return sessionEnd{}, false
		}
		if f.Group != "" {
			st := s.w.groups[f.Group]
			if st == nil || !st.active {
				return sessionEnd{}, false // removed meanwhile
			}
			// Whether it answers the subscribe or comes later (the server
			// could not go on serving the group), the server no longer
			// holds the group (docs/protocol.md): its slot is free.
			s.answered(f.Ref)
			return s.failed(st, e)
		}
		sent := s.refs[string(f.Ref)]
		if sent == nil {
			return sessionEnd{}, false
		}
		// The whole frame was refused (rate_limited, or bad_request).
		delete(s.refs, string(f.Ref))
		for _, st := range sent.groups {
			if s.w.groups[st.name] == st && st.active && !st.answered {
				if end, stop := s.failed(st, e); stop {
					return end, true
				}
			}
		}
	}
	return sessionEnd{}, false
}

// current reports whether a subscribed or event frame of group is for
// the watch's group of that name as it stands: not when that group was
// added again and is not subscribed yet, its frame comes from the
// subscription before, which the server serves until it handles the
// unsubscribe (flush sends the new subscribe only after its answer);
// taken for the new one's, it would move its position past the replay
// it was added for.
func (s *socketSession) current(group string) bool {
	st := s.w.groups[group]
	return st == nil || st.active // nil: removed, which the tracker skips
}

// failed handles an error answer for one subscribed group: a dropped
// frame is sent again later, anything else drops the group.
func (s *socketSession) failed(st *groupState, e *Error) (sessionEnd, bool) {
	if e.Code == wire.CodeRateLimited {
		st.active = false
		s.active--
		s.toSub = append(s.toSub, st)
		s.nextSend = time.Now().Add(s.w.cfg.RateLimitedDelay) // let the server's bucket refill
		return sessionEnd{}, false
	}
	if terminal, ok := s.tr.refused(st, e); terminal != nil || !ok {
		return sessionEnd{err: terminal, terminal: terminal != nil}, true
	}
	return sessionEnd{}, false
}

// answered counts one answer to the subscribe frame with ref.
func (s *socketSession) answered(ref json.RawMessage) {
	if sent := s.refs[string(ref)]; sent != nil {
		if sent.left--; sent.left <= 0 {
			delete(s.refs, string(ref))
		}
	}
}

// flush sends what waits, one frame per SubscribeInterval: unsubscribes
// first (their answers free slots), then subscribes for as many groups as
// there are slots, up to wire.MaxGroupsPerFrame a frame. A group whose
// unsubscribe is not answered yet waits: were that unsubscribe dropped
// (rate_limited) and sent again, it would end the new subscription.
func (s *socketSession) flush() error {
	if len(s.toUnsub) == 0 && (len(s.toSub) == 0 || s.active >= s.w.cfg.MaxGroups) {
		return nil
	}
	if wait := time.Until(s.nextSend); wait > 0 {
		s.timer.Reset(wait)
		return nil
	}
	s.ref++
	ref := json.RawMessage(strconv.Quote("w" + strconv.FormatInt(s.ref, 10)))
	if len(s.toUnsub) > 0 {
		n := min(len(s.toUnsub), wire.MaxGroupsPerFrame)
		f := wire.ClientFrame{Op: wire.OpUnsubscribe, Ref: ref}
		if n == 1 {
			f.Group = s.toUnsub[0]
		} else {
			for _, g := range s.toUnsub[:n] {
				f.Groups = append(f.Groups, wire.GroupPosition{Group: g})
			}
		}
		sent := slices.Clone(s.toUnsub[:n])
		s.toUnsub = s.toUnsub[n:]
		for _, g := range sent {
			s.leaving[g]++
		}
		s.refs[string(ref)] = &sentFrame{unsub: sent, left: n}
		return s.send(f)
	}
	room := min(s.w.cfg.MaxGroups-s.active, wire.MaxGroupsPerFrame)
	var batch []*groupState
	kept := s.toSub[:0] // filtered in place
	for i, st := range s.toSub {
		if len(batch) == room {
			kept = append(kept, s.toSub[i:]...)
			break
		}
		switch {
		case s.w.groups[st.name] != st || st.active:
			// removed, or already subscribed
		case s.leaving[st.name] > 0:
			kept = append(kept, st) // once the server answers its unsubscribe
		default:
			st.active, st.answered = true, false
			batch = append(batch, st)
		}
	}
	clear(s.toSub[len(kept):])
	s.toSub = kept
	if len(batch) == 0 {
		return nil
	}
	s.active += len(batch)
	s.refs[string(ref)] = &sentFrame{groups: batch, left: len(batch)}
	f := wire.ClientFrame{Op: wire.OpSubscribe, Ref: ref}
	if len(batch) == 1 {
		// The one-group form: what every server understands.
		after := batch[0].pos.Seq
		f.Group, f.After, f.Epoch = batch[0].name, &after, batch[0].pos.Epoch
	} else {
		for _, st := range batch {
			after := st.pos.Seq
			f.Groups = append(f.Groups, wire.GroupPosition{Group: st.name, After: &after, Epoch: st.pos.Epoch})
		}
	}
	return s.send(f)
}

func (s *socketSession) send(f wire.ClientFrame) error {
	s.nextSend = time.Now().Add(s.w.cfg.SubscribeInterval)
	_ = s.conn.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return s.conn.Send(f)
}

// shutdown closes the socket with a close handshake: it sends the close
// frame and reads (dropping frames) until the server's close or a second.
func (s *socketSession) shutdown() {
	_ = s.conn.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for {
		select {
		case _, ok := <-s.frames:
			if ok {
				continue
			}
		case <-t.C:
		}
		s.closeNow()
		return
	}
}

// closeNow closes the connection and waits for the reader.
func (s *socketSession) closeNow() {
	_ = s.conn.ws.Close()
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.readerDone
	s.timer.Stop()
}
