package web

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"taskstream/progress"
	"taskstream/web/auth"
	"taskstream/wire"
)

// Close codes the server uses (docs/protocol.md).
const (
	closeNormal    = wire.CloseNormal        // 1000
	closeGoingAway = wire.CloseGoingAway     // 1001: restart, reconnect and resume
	closePolicy    = wire.ClosePolicy        // 1008: bad Origin, not allowed
	closeTooBig    = wire.CloseTooBig        // 1009: frame over the limit
	closeTryAgain  = wire.CloseTryAgain      // 1013: too slow, or Redis unavailable: reconnect later and resume from last seq
	maxSubsPerConn = wire.MaxGroupsPerSocket // groups one socket may watch
	closeWait      = time.Second             // how long a close handshake may take

	// socketReadBuffer is the read buffer every socket keeps for its
	// whole life (gorilla's minimum is 125 bytes, a control frame).
	socketReadBuffer = 512

	// Transports, the label values of the taskstream_sockets gauge.
	transportWebSocket = "websocket"
	transportSSE       = "sse"
	transportLongPoll  = "longpoll"
)

var upgrader = websocket.Upgrader{
	// Client frames are small (subscribes, chat lines): a small read
	// buffer is all an idle socket keeps. A larger frame costs no extra
	// reads: gorilla reads it straight into the message buffer.
	ReadBufferSize:  socketReadBuffer,
	WriteBufferSize: 4096,
	// Write buffers come from a pool and go back after each message, so
	// an idle socket holds none (writer.go).
	WriteBufferPool: &writeBufferPool,
	// Offered to clients that ask for it; any other client speaks v1.
	Subprotocols: []string{wire.SubprotocolV2},
	// Origin is checked by the server before upgrading, so the refusal
	// carries the protocol's JSON error body.
	CheckOrigin: func(*http.Request) bool { return true },
	// A failed handshake (no Upgrade header, bad version or key) answers
	// with the protocol's JSON error body, like every other non-2xx.
	Error: upgradeError,
}

func upgradeError(w http.ResponseWriter, _ *http.Request, status int, reason error) {
	w.Header().Set("Sec-Websocket-Version", "13")
	ae := apiErr(CodeInternal, "internal error") // hijacking failed: nothing the client can fix
	switch status {
	case http.StatusBadRequest:
		ae = apiErr(CodeBadRequest, reason.Error())
	case http.StatusMethodNotAllowed:
		ae = apiErr(CodeMethodNotAllowed, reason.Error())
	case http.StatusForbidden:
		ae = apiErr(CodeForbidden, reason.Error())
	}
	writeJSON(w, ae.Status(), wire.NewErrorBody(ae.Code, ae.Message))
}

func (s *Server) handleSocket(w http.ResponseWriter, r *http.Request) {
	s.serveSocket(w, r, nil)
}

// serveSocket upgrades the request and starts the connection's read pump
// in a goroutine of its own; the handler returns at once. An idle socket
// then keeps only what it needs: not the HTTP handler's goroutine with
// its deep stack under the router and middleware, nor the request, its
// context and the server's buffers for it. initial, when set, is
// subscribed before any client frame is read.
func (s *Server) serveSocket(w http.ResponseWriter, r *http.Request, initial *clientFrame) {
	// The same Origin policy as writes (scheme, host and port): a socket
	// carries the session cookie, so a foreign page must not open one.
	if ae := s.checkOrigin(r); ae != nil {
		s.writeError(w, r, apiErr(CodeForbidden, "cross-origin socket refused: "+strings.TrimPrefix(ae.Message, "cross-origin request refused: ")))
		return
	}
	ip := clientIPOf(r.Context())
	release, slot := s.socketSlot(ip)
	who := principalOf(r)
	c := &conn{s: s, who: who, acting: who, id: newID(), ip: ip, requestID: requestIDOf(r.Context()),
		send: newSendQueue(s.cfg.SendQueue, s.cfg.SendQueueBytes), closed: make(chan struct{})}
	if !s.register(c) {
		if slot {
			release()
		}
		s.writeError(w, r, apiErr(CodeUnavailable, "server is shutting down; retry shortly"))
		return
	}
	ws, out, v2, err := upgradeSocket(w, r)
	if err != nil {
		s.unregister(c)
		s.connsWG.Done()
		if slot {
			release()
		}
		return // the upgrader has answered the client
	}
	c.ws, c.out, c.v2 = ws, out, v2
	if !slot {
		// Refused after the upgrade so that a browser's socket sees the
		// reason: a failed handshake only reports a generic error to it.
		go func() {
			defer s.connsWG.Done()
			c.refuse(closePolicy, fmt.Sprintf("too many sockets from your address (at most %d); close some and retry", s.cfg.Limits.MaxSocketsPerIP))
			s.mx.SocketClosed(closePolicy)
		}()
		return
	}
	if s.logger.Enabled(r.Context(), slog.LevelInfo) { // spare the attributes when info is off (a join storm)
		s.logger.LogAttrs(r.Context(), slog.LevelInfo, "socket opened", c.logAttrs()...)
	}
	// Shutdown waits for this goroutine (connsWG): it owns the socket.
	go c.serve(release, initial)
}

// serve runs the connection until it ends, then gives back its slot and
// logs its end. It runs in a goroutine of its own, outside net/http and
// the router, so it recovers and logs its own panics (the recoverer
// middleware no longer sees them).
func (c *conn) serve(release func(), initial *clientFrame) {
	defer c.s.connsWG.Done()
	defer release()
	defer c.recovered()
	opened := time.Now()
	// The request's context ends when its handler returns: the socket gets
	// its own, carrying what its calls read from it (the client IP, for
	// the per-address limit on new guests).
	c.run(context.WithValue(context.Background(), clientIPKey{}, c.ip), initial)
	c.ended(opened)
}

// recovered logs a panic of the socket's goroutine (deferred: the
// connection's own defers have closed it by then).
func (c *conn) recovered() {
	v := recover()
	if v == nil {
		return
	}
	stack := debug.Stack()
	if p, ok := v.(*taskPanic); ok {
		v, stack = p.value, p.stack
	}
	c.s.logger.LogAttrs(context.Background(), slog.LevelError, "socket panicked", append(c.logAttrs(), slog.Any("panic", v), slog.String("stack", string(stack)))...)
}

// ended counts and logs the end of a socket that ran.
func (c *conn) ended(opened time.Time) {
	c.s.mx.SocketClosed(c.closeCode)
	if !c.s.logger.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	c.s.logger.LogAttrs(context.Background(), slog.LevelInfo, "socket closed", append(c.logAttrs(),
		slog.Int("code", c.closeCode), slog.String("reason", c.closeText), slog.Int("client_code", c.clientCode),
		slog.Duration("duration", time.Since(opened)))...)
}

// logAttrs are the attributes of the socket's log lines: kept as the few
// strings they are rather than as a logger per socket.
func (c *conn) logAttrs() []slog.Attr {
	return []slog.Attr{slog.String("conn", c.id), slog.String("request_id", c.requestID), slog.String("user", c.who.User.ID), slog.String("ip", c.ip)}
}

func (s *Server) register(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	s.connsWG.Add(1)
	return true
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// conn is one socket. Its read pump runs in a goroutine of its own (see
// serveSocket) and owns the subscriptions; a writer goroutine, running
// only while frames wait (writer.go), is the only writer of data frames.
// Hub deliveries and replies go through the bounded
// send queue; when it is full the socket is closed with 1013 instead of
// slowing the hub, so one slow client never delays another.
type conn struct {
	s   *Server
	who auth.Principal // the caller when the socket opened (read by revocation checks)
	// acting is who, once stored if it was a guest that had not acted
	// yet: owned by the read pump, so a guest is stored (and looked up)
	// once per socket, not on every chat frame.
	acting auth.Principal
	id     string // this connection, for presence
	// ip and requestID are the opening request's client address and id:
	// all the socket keeps of the request, for its log lines and limits.
	ip        string
	requestID string
	ws        *websocket.Conn
	send      *sendQueue
	out       *batchConn // under ws: batches the writes (writer.go)
	v2        bool       // the socket speaks taskstream.v2 (wire.SubprotocolV2)

	closeOnce sync.Once
	closed    chan struct{}
	// shut is closed's state as a flag: the fan-out asks it for every
	// delivery, and a load is cheaper than a select on the channel.
	shut       atomic.Bool
	closeCode  int
	closeText  string
	clientCode int // the close code the client sent, if it closed first

	// subsMu guards subs and each groupSink's sub and failed. The read
	// pump adds and removes subscriptions; groupSink.Failed (a hub
	// goroutine) removes a failed one at once, before its error frame is
	// queued, so a frame the client sends after reading that error finds
	// the slot free (docs/protocol.md). Never held while calling into the
	// hub: the hub calls Failed with a group's lock held.
	subsMu sync.Mutex
	subs   []groupSub // a slice: most sockets watch one or two groups
	// closers are the goroutines that close failed subscriptions off the
	// hub's lock (dropFailed); the socket's end waits for them.
	closers sync.WaitGroup
	frames  *rate.Limiter // client frames per second; made when the read pump starts
}

// close asks the write pump to send a close frame with code and end the
// connection. The first call wins; later ones are no-ops.
func (c *conn) close(code int, text string) {
	c.closeOnce.Do(func() {
		c.closeCode, c.closeText = code, text
		c.shut.Store(true)
		close(c.closed)
		c.send.requestClose()
	})
}

// overflowed closes a socket that cannot keep up (1013: reconnect and
// resume), counted once per socket in taskstream_send_queue_overflows_total.
func (c *conn) overflowed(text string) {
	c.closeOnce.Do(func() {
		c.closeCode, c.closeText = closeTryAgain, text
		c.shut.Store(true)
		close(c.closed)
		c.send.requestClose()
		c.s.mx.SendQueueOverflow()
	})
}

func (c *conn) isClosed() bool { return c.shut.Load() }

// enqueue queues a frame for the write pump without ever blocking.
func (c *conn) enqueue(frame []byte) bool {
	if c.isClosed() {
		return false
	}
	if !c.send.push(frame) {
		c.overflowed("send queue full: reconnect and resume from your last seq")
		return false
	}
	return true
}

func (c *conn) run(ctx context.Context, initial *clientFrame) {
	c.startWriting()
	defer func() {
		c.leaveAll()
		c.closers.Wait()
		c.close(closeNormal, "")
		c.send.writers.Wait() // the close frame is out (or the write failed)
		_ = c.ws.Close()
		c.s.unregister(c)
	}()
	if initial != nil {
		c.offStack(func() { c.handle(ctx, *initial) })
	}
	c.readPump(ctx)
}

// leaveAll ends the socket's subscriptions and presence.
func (c *conn) leaveAll() {
	c.subsMu.Lock()
	subs := c.subs
	c.subs = nil
	c.subsMu.Unlock()
	for _, gs := range subs {
		gs.sub.Close()
		c.leave(gs.group)
	}
}

// readPump reads client frames until the socket ends. It is what an idle
// socket's goroutine is parked in, so it keeps its own frame small and
// handles each message off its stack (onMessage).
func (c *conn) readPump(ctx context.Context) {
	ws := c.ws
	ws.SetReadLimit(c.s.cfg.MaxFrameBytes)
	c.frames = rate.NewLimiter(rate.Limit(c.s.cfg.FrameRate), c.s.cfg.FrameBurst)
	c.alive()
	ws.SetPongHandler(func(string) error { c.alive(); return nil })
	for {
		typ, data, err := ws.ReadMessage()
		if err != nil {
			c.readFailed(err)
			return
		}
		if c.isClosed() {
			// Closed by us (slow, revoked, shutting down): read nothing more,
			// or a client that keeps talking would keep the socket alive.
			return
		}
		c.alive()
		c.offStack(func() { c.onMessage(ctx, typ, data) })
	}
}

// alive moves the read deadline: a socket that sends nothing, not even a
// pong, for two ping intervals is dropped.
func (c *conn) alive() { _ = c.ws.SetReadDeadline(time.Now().Add(2 * c.s.cfg.PingInterval)) }

// readFailed records why reading ended.
func (c *conn) readFailed(err error) {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		c.clientCode = ce.Code
	}
	if errors.Is(err, websocket.ErrReadLimit) {
		// gorilla has already sent the 1009 close frame.
		c.close(closeTooBig, "frame too large")
	}
}

// onMessage answers one client message.
func (c *conn) onMessage(ctx context.Context, typ int, data []byte) {
	if !c.frames.Allow() {
		// A flood: answer cheaply and drop the frame, so one client
		// cannot turn its frames into Redis work for everyone. The ref
		// lets a client fail the request at once instead of timing out.
		c.reply(replyFrame{Type: wire.TypeError, Ref: refOf(data), Code: CodeRateLimited, Message: "too many frames; slow down"})
		return
	}
	if typ != websocket.TextMessage {
		c.reply(replyFrame{Type: wire.TypeError, Code: CodeBadRequest, Message: "frames must be JSON text"})
		return
	}
	f, aerr := decodeClientFrame(data)
	if aerr != nil {
		c.reply(replyFrame{Type: wire.TypeError, Ref: f.Ref, Code: aerr.Code, Message: aerr.Message})
		return
	}
	c.handle(ctx, f)
}

// offStack runs fn on a goroutine of the Server's stack pool and waits
// for it, so the stack fn grows (a subscribe goes deep: Redis round trips,
// the hub, JSON) is not the read pump's, which an idle socket keeps for
// its whole life: Go shrinks a parked goroutine's stack only at a GC, and
// only while it uses under a quarter of it. The pool's goroutines keep
// their grown stacks between calls, so a subscribe does not grow one
// from 2 KiB each time (stackpool.go). The read pump does nothing while
// fn runs, so the socket's state stays owned by one goroutine at a time.
// A panic in fn is raised again in the caller, with fn's stack.
func (c *conn) offStack(fn func()) {
	if p := c.s.stacks.run(fn); p != nil {
		panic(p)
	}
}

// refuse closes a socket that was never run with code and text, and
// waits up to closeWait for the client's close frame.
func (c *conn) refuse(code int, text string) {
	defer c.s.unregister(c)
	defer c.ws.Close()
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(closeWait))
	_ = c.ws.SetReadDeadline(time.Now().Add(closeWait))
	for {
		if _, _, err := c.ws.NextReader(); err != nil {
			return
		}
	}
}

// abort ends a connection whose writes fail: no close frame can get
// through, so the TCP connection is closed, which also ends the read pump.
func (c *conn) abort() {
	c.close(closeGoingAway, "")
	_ = c.ws.NetConn().Close()
}

// writeClose sends the close frame and gives the client closeWait to
// answer before the read pump's deadline ends the connection.
func (c *conn) writeClose() {
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(c.closeCode, c.closeText), time.Now().Add(closeWait))
	_ = c.ws.SetReadDeadline(time.Now().Add(closeWait))
}

func (c *conn) reply(f replyFrame) { c.enqueue(mustJSON(f)) }

// replyError answers a frame that failed with an error frame carrying its
// ref; the socket stays open. When Redis is unavailable the socket is
// closed with 1013 instead (reconnect later and resume), as a send queue
// overflow is: its subscriptions cannot be trusted to be served, and one
// clear signal beats an error frame for every frame the client sends
// until Redis is back.
func (c *conn) replyError(ref json.RawMessage, group string, err error) {
	ae := c.s.toAPIError(err, "socket", c.id, "group", group)
	if ae.Code == CodeUnavailable {
		c.close(closeTryAgain, tryAgainText(ae))
		return
	}
	c.reply(replyFrame{Type: wire.TypeError, Group: group, Ref: ref, Code: ae.Code, Message: ae.Message})
}

// tryAgainText is the reason of a 1013 close for ae: close reasons are at
// most 123 bytes.
func tryAgainText(ae *APIError) string {
	msg := ae.Message
	if len(msg) > 123 {
		msg = msg[:123]
	}
	return msg
}

func (c *conn) handle(ctx context.Context, f clientFrame) {
	switch f.Op {
	case opPing:
		c.reply(replyFrame{Type: wire.TypePong, Ref: f.Ref})
	case opSubscribe, opUnsubscribe:
		if f.Groups == nil {
			c.handleGroup(ctx, f.Op, f.Ref, wire.GroupPosition{Group: f.Group, After: f.After, Epoch: f.Epoch})
			return
		}
		// Many groups in one frame: each is answered on its own, so one
		// group the caller may not watch does not affect the others.
		for i, g := range f.Groups {
			if c.isClosed() {
				return // Redis went away (1013): the rest cannot be served
			}
			if err := f.GroupErrs[i]; err != nil {
				c.reply(replyFrame{Type: wire.TypeError, Group: g.Group, Ref: f.Ref, Code: err.Code, Message: err.Message})
				continue
			}
			c.handleGroup(ctx, f.Op, f.Ref, g)
		}
	case opPublish:
		who, err := c.s.publish(ctx, c.acting, f.Group, f.Data)
		c.acting = who
		if err != nil {
			c.replyError(f.Ref, f.Group, err)
			return
		}
		c.reply(replyFrame{Type: wire.TypePublished, Group: f.Group, Ref: f.Ref})
	}
}

// handleGroup subscribes or unsubscribes one group and answers for it.
func (c *conn) handleGroup(ctx context.Context, op string, ref json.RawMessage, g wire.GroupPosition) {
	if op == opSubscribe {
		if err := c.subscribe(ctx, ref, g); err != nil {
			c.replyError(ref, g.Group, err)
		}
		return
	}
	// A group that is not subscribed (never, or its subscription failed)
	// is answered the same: the client's view and ours agree either way.
	if sub := c.takeSub(g.Group); sub != nil {
		sub.Close()
		c.leave(g.Group)
	}
	c.reply(replyFrame{Type: wire.TypeUnsubscribed, Group: g.Group, Ref: ref})
}

func (c *conn) subscribe(ctx context.Context, ref json.RawMessage, f wire.GroupPosition) error {
	if err := c.s.authorizeGroup(ctx, c.who, f.Group); err != nil {
		return err
	}
	rejoin := false
	c.subsMu.Lock()
	old := c.takeSubLocked(f.Group)
	n := len(c.subs)
	c.subsMu.Unlock()
	if old != nil {
		old.Close() // a new subscribe to the same group restarts it
		rejoin = true
	} else if n >= maxSubsPerConn {
		return apiErr(CodeBadRequest, "too many groups on one socket")
	}
	// A chat socket joins the room's presence (recorded here, sent to
	// Redis within the presence interval). Only the user's first socket
	// in the room on this replica can be announced, so only it pays for
	// what an announcement needs: a stored guest, the join rate limit and
	// the current name. The user's other sockets (more tabs, or all of
	// them at once in a reconnect storm) cost no Redis round trip here.
	if isChat(f.Group) && c.s.pres != nil && !rejoin {
		first, err := c.s.pres.Enter(f.Group, progress.Member{ID: c.who.User.ID, Name: c.who.User.Name}, c.id)
		if err != nil {
			return err
		}
		if first {
			if err := c.firstJoin(ctx, f.Group); err != nil {
				c.leave(f.Group) // its join was held: nothing reaches Redis
				return err
			}
		}
	}
	var after int64
	if f.After != nil {
		after = *f.After
	}
	sink := &groupSink{c: c, group: f.Group, ref: ref, job: wire.KindOf(f.Group) == wire.KindJob}
	sub, err := c.s.hub.Subscribe(f.Group, after, f.Epoch, sink)
	if err != nil {
		// Not in the room any more (a rejoin closed its old subscription).
		c.leave(f.Group)
		return hubError(err)
	}
	c.subsMu.Lock()
	if sink.failed {
		// The hub failed it before it was recorded, and its error frame is
		// queued: it is over, and never took a slot.
		c.subsMu.Unlock()
		sub.Close()
		c.leave(f.Group)
		return nil
	}
	sink.sub = sub
	c.subs = append(c.subs, groupSub{group: f.Group, sub: sub})
	c.subsMu.Unlock()
	return nil
}

// dropFailed ends the subscription of a sink the hub failed, so that it
// no longer takes a slot of the socket's groups: called by Failed
// before the error frame is queued. The read pump may be handling a
// frame of the same group meanwhile; the subscription is matched by
// identity under subsMu, so an unsubscribe or a new subscribe of the
// group that got there first is left alone, and the room's presence is
// left here only while the group's entry is removed, before the read
// pump can enter it again. The hub subscription is closed by a goroutine
// of the socket (Failed runs under the hub's group lock, which Close
// takes).
func (c *conn) dropFailed(g *groupSink) {
	c.subsMu.Lock()
	defer c.subsMu.Unlock()
	g.failed = true
	if g.sub == nil {
		return // not recorded yet: the read pump sees failed and closes it
	}
	for i := range c.subs {
		if c.subs[i].sub != g.sub {
			continue
		}
		c.dropSub(i)
		c.leave(g.group)
		sub := g.sub
		c.closers.Add(1)
		go func() {
			defer c.closers.Done()
			sub.Close()
		}()
		return
	}
}

// firstJoin does what the user's first socket in a chat room on this
// replica needs before its join (held by Enter) can be announced: the
// guest stored (presence is state), the per-user join rate limit (churn
// is bounded so subscribe/unsubscribe cycles cannot wash a room's history
// away: a refused join never reaches Redis), and the current name (the
// socket's principal was read when it opened). In a join storm every
// user's first socket does this while Redis is busiest: it is one round
// trip (Server.act), where it was four in a row.
func (c *conn) firstJoin(ctx context.Context, group string) error {
	who, m, err := c.s.act(ctx, c.acting, "join:"+c.who.User.ID, 1, 20, "joining rooms too often; wait a moment")
	c.acting = who
	if err != nil {
		return err
	}
	c.s.pres.Settle(group, m, c.id)
	return nil
}

// groupSub is one of a socket's subscriptions. A socket keeps them in a
// slice: a map costs ten times the bytes of one entry, and a socket holds
// at most maxSubsPerConn, looked up only when a client subscribes or
// unsubscribes, or the hub fails one.
type groupSub struct {
	group string
	sub   *progress.Subscription
}

// takeSub removes group's subscription from c.subs and returns it, or
// nil when the socket does not hold the group.
func (c *conn) takeSub(group string) *progress.Subscription {
	c.subsMu.Lock()
	defer c.subsMu.Unlock()
	return c.takeSubLocked(group)
}

// takeSubLocked is takeSub with subsMu held.
func (c *conn) takeSubLocked(group string) *progress.Subscription {
	for i := range c.subs {
		if c.subs[i].group == group {
			sub := c.subs[i].sub
			c.dropSub(i)
			return sub
		}
	}
	return nil
}

// dropSub removes c.subs[i] (order does not matter); subsMu held.
func (c *conn) dropSub(i int) {
	last := len(c.subs) - 1
	c.subs[i] = c.subs[last]
	c.subs[last] = groupSub{}
	c.subs = c.subs[:last]
}

// leave ends the connection's presence in a chat room.
func (c *conn) leave(group string) {
	if !isChat(group) || c.s.pres == nil {
		return
	}
	// Recorded on this replica only (Redis gets it within the presence
	// interval), so a closing socket never waits for Redis here.
	if err := c.s.pres.Leave(context.Background(), group, c.who.User.ID, c.id); err != nil {
		c.s.logger.Warn("presence leave failed", "group", group, "err", err)
	}
}

// newID returns 16 random hex digits: ids of sockets, requests and chat
// messages.
func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// authorizeGroup decides whether who may watch group: a job only its
// owner (403 for someone else's existing job: ids are unguessable, so
// hiding existence buys nothing and 403 is clearer to the owner's other
// programs), a user group only that user, chat rooms anyone with a
// session, the dashboard signed-in users.
func (s *Server) authorizeGroup(ctx context.Context, who auth.Principal, group string) error {
	g, err := wire.ParseGroup(group)
	if err != nil {
		return apiErr(CodeBadRequest, err.Error())
	}
	switch g.Kind {
	case wire.KindJob:
		return s.checkJobOwner(ctx, g.ID, who.User.ID)
	case wire.KindChat:
		return nil
	case wire.KindDashboard:
		if who.User.Guest {
			return apiErr(CodeForbidden, "the dashboard is for signed-in users")
		}
		return nil
	case wire.KindUser:
		if g.ID != who.User.ID && !who.Admin {
			return apiErr(CodeForbidden, "a user group is for its user only")
		}
		return nil
	}
	return apiErr(CodeBadRequest, "unknown group kind "+g.Kind)
}

// isChat reports whether group, already validated, is a chat room's.
func isChat(group string) bool { return wire.KindOf(group) == wire.KindChat }

// groupSink adapts one subscription to the connection's send queue.
// Hub calls on one sink are serialized (the group's lock), so replayLeft
// needs no lock of its own.
type groupSink struct {
	c          *conn
	group      string
	ref        json.RawMessage
	job        bool   // a job group: its events are conflated for a slow reader
	replayLeft int    // events of the last SyncInfo's replay still to come
	synced     bool   // the initial SyncInfo was sent
	epoch      string // the last epoch the socket was given for the group (taskstream.v2)
	// Guarded by c.subsMu: the subscription once the read pump recorded
	// it in c.subs, and whether the hub failed it (dropFailed).
	sub    *progress.Subscription
	failed bool
}

func (g *groupSink) Synced(info progress.SyncInfo) bool {
	var ref json.RawMessage
	if info.Initial {
		ref = g.ref
	}
	g.synced = true
	g.replayLeft = info.Replayed
	g.epoch = info.Epoch
	g.c.send.reserve(1 + info.Replayed) // this frame and the replay behind it
	return g.c.enqueue(subscribedJSON(g.group, ref, info))
}

func (g *groupSink) Send(ev *progress.Event) bool {
	replay := g.replayLeft > 0
	if replay {
		g.replayLeft--
	}
	form := g.form(ev)
	if g.job {
		// A job's stream is conflated for a reader that falls behind
		// rather than cut (sendQueue.pushJob).
		if g.c.isClosed() {
			return false
		}
		if !g.c.send.pushJob(ev, replay, form) {
			g.c.overflowed("send queue full: reconnect and resume from your last seq")
			return false
		}
		return true
	}
	if replay {
		if g.c.isClosed() {
			return false
		}
		if !g.c.send.pushReplay(eventFrame(ev, form, 0)) {
			g.c.overflowed("send queue full: reconnect and resume from your last seq")
			return false
		}
		return true
	}
	return g.c.enqueue(eventFrame(ev, form, 0))
}

// form says how ev is encoded for this socket: v1's full frame, or in
// taskstream.v2 the lean frame, with the epoch only when it differs from
// the last one this socket was given for the group.
func (g *groupSink) form(ev *progress.Event) frameForm {
	if !g.c.v2 {
		return formV1
	}
	if ev.Epoch == g.epoch {
		return formLean
	}
	g.epoch = ev.Epoch
	return formLeanEpoch
}

func (g *groupSink) Lagged() {
	g.c.overflowed("too slow: reconnect and resume from your last seq")
}

// Failed answers a subscription the hub gave up on: 1013 when Redis is
// unavailable (reconnect later and resume), else an error frame for the
// group, with the subscribe's ref when it never got its subscribed frame.
// Either way the subscription is over: it leaves the socket's groups
// first (dropFailed), so the error frame tells the client its slot is
// free. The hub calls it with the group's lock held: it only queues.
func (g *groupSink) Failed(err error) {
	g.c.dropFailed(g)
	var ref json.RawMessage
	if !g.synced {
		ref = g.ref
	}
	g.c.replyError(ref, g.group, err)
}
