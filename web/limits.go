package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"taskstream/wire"
)

// Limits bound what one client, and all clients together, may hold open,
// so slow or idle clients cannot exhaust the process (slowloris, idle
// keep-alives, connection floods). Streams have deadlines of their own:
// sockets their ping interval, SSE its heartbeat writes, long-poll its
// wait; so none of these limits ends a healthy stream. The zero value of
// each field means its default.
type Limits struct {
	// ReadHeaderTimeout bounds reading a request's headers, from the
	// first byte (or from the connection's start). It also bounds how long
	// a connection over a cap may take to be told so. Default 10s.
	ReadHeaderTimeout time.Duration
	// BodyTimeout bounds reading a request's body, from the end of its
	// headers to its last byte: a client that trickles its body is cut
	// (the answer is 400 bad_request if it still listens). Requests
	// without a body (sockets, SSE, long-poll) are not limited by it.
	// Default 30s (a 1 MiB body at 35 KB/s).
	BodyTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that sends no new request
	// for this long. Default 75s (nginx's keepalive_timeout).
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds the request line and headers; beyond, the
	// answer is 431 too_large. Go allows 4 KiB of slack above it.
	// Default 32 KiB (nginx's 4 × 8k large_client_header_buffers).
	MaxHeaderBytes int
	// MaxConns caps the open connections of this process, sockets and
	// streams included. A connection over the cap is answered 429
	// rate_limited and closed. Default 10000 (half of the 20,000 open
	// files a process gets on the hosts this runs on).
	MaxConns int
	// MaxConnsPerIP caps the open connections from one peer address
	// (answered like MaxConns). Peers in Config.TrustedProxies are not
	// capped per address: they carry many clients. Default 256.
	MaxConnsPerIP int
	// MaxSocketsPerIP caps the open sockets (GET /ws and the socket
	// fallback) of one client address, as Server.clientIP sees it
	// (X-Forwarded-For from trusted proxies). A socket over the cap is
	// closed with 1008 and a reason. Default 64.
	MaxSocketsPerIP int
}

// DefaultLimits returns Limits with every default filled in.
func DefaultLimits() Limits { return Limits{}.withDefaults() }

func (l Limits) withDefaults() Limits {
	if l.ReadHeaderTimeout <= 0 {
		l.ReadHeaderTimeout = 10 * time.Second
	}
	if l.BodyTimeout <= 0 {
		l.BodyTimeout = 30 * time.Second
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = 75 * time.Second
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = 32 << 10
	}
	if l.MaxConns <= 0 {
		l.MaxConns = 10000
	}
	if l.MaxConnsPerIP <= 0 {
		l.MaxConnsPerIP = 256
	}
	if l.MaxSocketsPerIP <= 0 {
		l.MaxSocketsPerIP = 64
	}
	return l
}

// maxRejecting bounds the connections over a cap that are being answered
// 429 at once; beyond it they are closed without an answer, so a flood
// cannot hold more than this many extra descriptors.
const maxRejecting = 512

// HTTPServer returns the http.Server for s: the timeouts and header limit
// of Config.Limits, and the 429 answer to connections over a cap. Serve it
// on s.Listener(ln), which counts connections and answers net/http's own
// 400 and 431 with the protocol's JSON error body.
func (s *Server) HTTPServer() *http.Server {
	l := s.cfg.Limits
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		// No ReadTimeout: it would also end the background read net/http
		// keeps on every connection, which cancels the request context of
		// any handler that outlives it (SSE, long-poll). Bodies get their
		// own deadline in limitBody instead. No WriteTimeout either:
		// streams set write deadlines per write.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if lc, ok := c.(*limitedConn); ok && lc.rejected != "" {
				return context.WithValue(ctx, rejectedKey{}, lc.rejected)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
}

// Listener wraps ln so that connections are counted against
// Config.Limits' caps, and net/http's plain-text answers to requests it
// cannot parse become the protocol's JSON error body.
func (s *Server) Listener(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, s: s, perIP: map[netip.Addr]int{}}
}

type rejectedKey struct{}

// limitListener admits connections up to the caps; connections over a cap
// are still accepted, marked, and answered 429 by ServeHTTP, so a client
// learns why instead of seeing a reset.
type limitListener struct {
	net.Listener
	s *Server

	mu        sync.Mutex
	total     int
	perIP     map[netip.Addr]int
	rejecting int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := peerAddr(c.RemoteAddr())
		reason, admitted := l.admit(ip)
		if admitted {
			return &limitedConn{Conn: c, l: l, ip: ip, counted: true}, nil
		}
		if reason == "" {
			_ = c.Close() // too many rejections in flight already
			continue
		}
		// The rejection must be quick: its deadline covers reading the
		// request and writing the answer, and net/http cannot extend it.
		hard := time.Now().Add(l.s.cfg.Limits.ReadHeaderTimeout)
		_ = c.SetDeadline(hard)
		return &limitedConn{Conn: c, l: l, ip: ip, rejected: reason, hard: hard}, nil
	}
}

// admit counts a new connection from ip when the caps allow it. Otherwise
// it returns why, or "" when even the rejection has no room.
func (l *limitListener) admit(ip netip.Addr) (reason string, admitted bool) {
	lim := l.s.cfg.Limits
	l.mu.Lock()
	defer l.mu.Unlock()
	perIP := ip.IsValid() && !l.s.isTrustedProxy(ip)
	switch {
	case l.total >= lim.MaxConns:
		reason = fmt.Sprintf("the server has too many open connections (%d); retry shortly", lim.MaxConns)
	case perIP && l.perIP[ip] >= lim.MaxConnsPerIP:
		reason = fmt.Sprintf("too many open connections from your address (at most %d); close some and retry", lim.MaxConnsPerIP)
	default:
		l.total++
		if perIP {
			l.perIP[ip]++
		}
		return "", true
	}
	if l.rejecting >= maxRejecting {
		return "", false
	}
	l.rejecting++
	return reason, false
}

func (l *limitListener) release(c *limitedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !c.counted {
		l.rejecting--
		return
	}
	l.total--
	// Only addresses admit counted are in perIP (never a trusted proxy).
	if n, ok := l.perIP[c.ip]; ok {
		if n <= 1 {
			delete(l.perIP, c.ip)
		} else {
			l.perIP[c.ip] = n - 1
		}
	}
}

// limitedConn is one accepted connection: it gives its slot back when
// closed, keeps a rejected connection's deadline from being extended, and
// turns net/http's plain-text 400/431 into JSON.
type limitedConn struct {
	net.Conn
	l        *limitListener
	ip       netip.Addr
	counted  bool
	rejected string    // why the connection is over a cap; "" when admitted
	hard     time.Time // a rejected connection's deadline
	once     sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c) })
	return err
}

// CloseWrite lets net/http half-close before it closes, so a client still
// sending gets the answer instead of a reset.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *limitedConn) clamp(t time.Time) time.Time {
	if !c.hard.IsZero() && (t.IsZero() || t.After(c.hard)) {
		return c.hard
	}
	return t
}

func (c *limitedConn) SetDeadline(t time.Time) error { return c.Conn.SetDeadline(c.clamp(t)) }
func (c *limitedConn) SetReadDeadline(t time.Time) error {
	return c.Conn.SetReadDeadline(c.clamp(t))
}
func (c *limitedConn) SetWriteDeadline(t time.Time) error {
	return c.Conn.SetWriteDeadline(c.clamp(t))
}

func (c *limitedConn) Write(p []byte) (int, error) {
	if body, ok := rewriteServerError(p); ok {
		if _, err := c.Conn.Write(body); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// serverErrorHeaders is what net/http writes after the status line of the
// answers it sends by itself, before any handler runs, to a request it
// cannot parse (malformed request line or headers, headers over
// MaxHeaderBytes, unknown transfer coding). Handler responses never look
// like this: they carry a Date header first, and their Content-Type and
// Connection come after it.
const serverErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// rewriteServerError returns the JSON version of p when p is one of
// net/http's own plain-text error answers (written in one Write).
func rewriteServerError(p []byte) ([]byte, bool) {
	rest, ok := bytes.CutPrefix(p, []byte("HTTP/1.1 "))
	if !ok {
		return nil, false
	}
	statusLine, text, ok := bytes.Cut(rest, []byte(serverErrorHeaders))
	if !ok || bytes.ContainsAny(statusLine, "\r\n") || bytes.ContainsAny(text, "\r\n") || len(statusLine) < 3 {
		return nil, false
	}
	status, err := strconv.Atoi(string(statusLine[:3]))
	if err != nil || status < 400 {
		return nil, false
	}
	code, msg := CodeBadRequest, "malformed request"
	switch {
	case status == http.StatusRequestHeaderFieldsTooLarge:
		code, msg = CodeTooLarge, "request line and headers are too large"
	case bytes.Contains(text, []byte(": ")):
		// "400 Bad Request: missing required Host header" and the like.
		_, detail, _ := bytes.Cut(text, []byte(": "))
		msg += ": " + string(detail)
	case status == http.StatusNotImplemented:
		msg = "unsupported transfer encoding"
	}
	raw, _ := json.Marshal(wire.NewErrorBody(code, msg))
	raw = append(raw, '\n')
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %s\r\nContent-Type: application/json; charset=utf-8\r\nCache-Control: no-store\r\n"+
		"X-Content-Type-Options: nosniff\r\nConnection: close\r\nContent-Length: %d\r\n\r\n", statusLine, len(raw))
	b.Write(raw)
	return b.Bytes(), true
}

// rejectOverCap answers a request on a connection over a cap with 429
// and closes the connection; it reports whether it did.
func (s *Server) rejectOverCap(w http.ResponseWriter, r *http.Request) bool {
	reason, _ := r.Context().Value(rejectedKey{}).(string)
	if reason == "" {
		return false
	}
	w.Header().Set("Connection", "close")
	s.writeError(w, r, &APIError{Code: CodeRateLimited, Message: reason, RetryAfter: 1})
	return true
}

// limitBody gives a request's body Limits.BodyTimeout to arrive. The
// deadline is lifted once the body is read to its end, so a handler that
// then works long (or streams) is not cut by it.
func (s *Server) limitBody(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return
	}
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(time.Now().Add(s.cfg.Limits.BodyTimeout)); err != nil {
		return // not served by a net/http connection (a test recorder)
	}
	r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
}

// deadlineBody lifts the body's read deadline when the body ends.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// socketSlot takes one of ip's Limits.MaxSocketsPerIP socket slots; the
// returned func gives it back. ok is false when ip has none left.
func (s *Server) socketSlot(ip string) (release func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.socketsPerIP[ip] >= s.cfg.Limits.MaxSocketsPerIP {
		return nil, false
	}
	s.socketsPerIP[ip]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.socketsPerIP[ip]--; s.socketsPerIP[ip] <= 0 {
				delete(s.socketsPerIP, ip)
			}
		})
	}, true
}

// isTrustedProxy reports whether ip is in Config.TrustedProxies.
func (s *Server) isTrustedProxy(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// peerAddr is the IP address of a connection's peer (invalid when it has
// none, as on a unix socket).
func peerAddr(a net.Addr) netip.Addr {
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}
