package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// countingConn counts the bytes read from the connection: everything the
// server sent, WebSocket headers and control frames included. It also
// splits the handshake's response from what follows it: gorilla reads the
// response through its own buffer, which could take frames sent right
// after it; countingConn hands gorilla only the bytes up to the end of
// the response's headers (a 101 has no body) and keeps the rest in the
// socket's pending bytes, where the frame reader (readMessages) starts.
type countingConn struct {
	net.Conn
	s *sock
	// hs is how much of the headers' end ("\r\n\r\n") the last bytes
	// matched; -1 once the response's headers ended.
	hs int
}

var headersEnd = []byte("\r\n\r\n")

func (c *countingConn) Read(p []byte) (int, error) {
	if c.hs < 0 && len(c.s.pending) > 0 {
		// A refused handshake's body, read by gorilla for its error.
		n := copy(p, c.s.pending)
		c.s.pending = c.s.pending[n:]
		return n, nil
	}
	n, err := c.Conn.Read(p)
	c.s.read.Add(int64(n))
	if c.hs < 0 {
		return n, err
	}
	for i := range n {
		switch {
		case p[i] == headersEnd[c.hs]:
			c.hs++
		case p[i] == '\r':
			c.hs = 1
		default:
			c.hs = 0
		}
		if c.hs == len(headersEnd) {
			c.hs = -1
			if i+1 < n {
				c.s.pending = append(c.s.pending[:0], p[i+1:n]...)
				return i + 1, nil // the error, if any, comes again on the next read
			}
			break
		}
	}
	return n, err
}

// framing says how one WebSocket message is cut into frames.
type framing int

const (
	// oneFrame: each message is one frame (taskstream's v1).
	oneFrame framing = iota
	// lineFrames: frames separated by '\n' in one message (gorilla's chat
	// example merging its queue, and taskstream's v2 subprotocol).
	lineFrames
)

// sock is one client socket of the new scenarios. Its plain fields belong
// to the goroutine that reads it; the atomics are read by others.
type sock struct {
	id      int
	ws      *websocket.Conn
	ring    *recvRing    // receives for the socket; nil: read(2) (readSocket)
	read    atomic.Int64 // bytes read on the connection since it opened (over every reconnect)
	pending []byte       // bytes that came right after the handshake's response: the first frames

	// taskstream's protocol state.
	epoch       string
	lastSeq     int64 // seq of the last event seen
	subscribed  bool
	refused     bool         // an error frame answered the subscribe
	refusals    int          // resumes refused (and tried again)
	refusal     string       // the last refusal's frame
	joined      bool         // joined once: later dials resume
	joinRetries int          // failed tries of the first join
	seqSeen     atomic.Int64 // lastSeq, for other goroutines

	// What the reader saw.
	gaps, dups int          // events whose seq did not follow the last one, or repeated it
	delivered  int64        // stamped messages received (under a scenario's count)
	live       atomic.Int64 // delivered, for other goroutines (open loop)
	got        []received   // with keepLat: each stamped message received, in order
	closeCode  int          // the first close: 0 none; -1 the connection was lost without a close frame
	tryAgain   int          // closes with 1013
	resumed    atomic.Bool
	notRecov   bool // a resume answered recovered:false
	perPub     []int64
	outOfOrder int
}

// received is one message a socket received: the stamp's message number
// and when the read returned it (Unix nanoseconds). The open loop keeps
// these (16 bytes a delivery, allocated before the run) and works out
// every delay after the run, so the receive path only appends.
type received struct {
	n, at int64
}

// eachFrame calls fn with every frame of msg.
func eachFrame(msg []byte, f framing, fn func([]byte)) {
	if f == oneFrame {
		fn(msg)
		return
	}
	for len(msg) > 0 {
		i := bytes.IndexByte(msg, '\n')
		if i < 0 {
			fn(msg)
			return
		}
		if i > 0 {
			fn(msg[:i])
		}
		msg = msg[i+1:]
	}
}

// closeCodeOf is the close code of a read error: the server's close
// frame's code, or -1 when the connection ended without one.
func closeCodeOf(err error) int {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

// dialSock opens a socket with d to url, from the loopback address from
// (nil: the default), counting what it reads into s.
func dialSock(ctx context.Context, d websocket.Dialer, url string, from net.IP, s *sock) error {
	_, err := dialSockHeader(ctx, d, url, nil, from, s)
	return err
}

// dialSockHeader is dialSock with request headers; it returns the upgrade
// response (its body closed) when there was one.
func dialSockHeader(ctx context.Context, d websocket.Dialer, url string, header http.Header, from net.IP, s *sock) (*http.Response, error) {
	var nd net.Dialer
	if from != nil {
		nd.LocalAddr = &net.TCPAddr{IP: from}
	}
	s.pending = nil
	d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := nd.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, s: s}, nil
	}
	ws, res, err := d.DialContext(ctx, url, header)
	if res != nil && res.Body != nil {
		_ = res.Body.Close()
	}
	if err != nil {
		if res != nil {
			return res, errors.New(err.Error() + " (HTTP " + res.Status + ")")
		}
		return nil, err
	}
	s.ws = ws
	return res, nil
}

// dialCookies is one user's Cookie header for its socket dials, made from
// the user's cookie jar once and again only when an upgrade response sets
// a cookie, instead of by the jar on every dial: the jar's lookup (a
// lock, a key made from the host, a sort) was 8 % of the load client's
// CPU in a join of 5,000 sockets.
type dialCookies struct {
	jar    http.CookieJar
	u      *url.URL
	header atomic.Pointer[http.Header]
}

func newDialCookies(jar http.CookieJar, rawURL string) (*dialCookies, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	c := &dialCookies{jar: jar, u: u}
	c.load()
	return c, nil
}

// load makes the header from the jar's cookies for the socket URL.
func (c *dialCookies) load() {
	var parts []string
	for _, ck := range c.jar.Cookies(c.u) {
		parts = append(parts, ck.String()) // name=value, as Request.AddCookie writes it
	}
	h := http.Header{}
	if len(parts) > 0 {
		h.Set("Cookie", strings.Join(parts, "; "))
	}
	c.header.Store(&h)
}

// get is the header to dial with; it is shared: do not modify it.
func (c *dialCookies) get() http.Header { return *c.header.Load() }

// saw takes the cookies an upgrade response set (a renewed session) into
// the jar, as the dialer's own Jar would, and remakes the header.
func (c *dialCookies) saw(res *http.Response) {
	if res == nil {
		return
	}
	if set := res.Cookies(); len(set) > 0 {
		c.jar.SetCookies(c.u, set)
		c.load()
	}
}

// The stamp every published message starts with, so that a receiver
// finds who sent it, which of that sender's messages it is and when it
// was sent, in any frame format, with a byte scan: "~LG<pub>.<n>.<unix
// nanoseconds>." then 'x' up to the payload size.
var stampMark = []byte("~LG")

// stampText makes a message of size bytes (more when the stamp alone is
// longer) stamped with publisher pub, its message n and sent.
func stampText(dst []byte, pub int, n int64, sent time.Time, size int) []byte {
	dst = append(dst[:0], stampMark...)
	dst = strconv.AppendInt(dst, int64(pub), 10)
	dst = append(dst, '.')
	dst = strconv.AppendInt(dst, n, 10)
	dst = append(dst, '.')
	dst = strconv.AppendInt(dst, sent.UnixNano(), 10)
	dst = append(dst, '.')
	for len(dst) < size {
		dst = append(dst, 'x')
	}
	return dst
}

// stampOf finds the stamp in a frame.
func stampOf(frame []byte) (pub int, n, sent int64, ok bool) {
	i := bytes.Index(frame, stampMark)
	if i < 0 {
		return 0, 0, 0, false
	}
	rest := frame[i+len(stampMark):]
	var v [3]int64
	for k := range v {
		j := bytes.IndexByte(rest, '.')
		if j <= 0 {
			return 0, 0, 0, false
		}
		x, ok := atoi(rest[:j])
		if !ok {
			return 0, 0, 0, false
		}
		v[k], rest = x, rest[j+1:]
	}
	return int(v[0]), v[1], v[2], true
}

// atoi parses a non-negative decimal without allocating.
func atoi(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var x int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		x = x*10 + int64(c-'0')
	}
	return x, true
}

// Byte patterns of taskstream's frames (docs/protocol.md). They hold in
// v1 and in the v2 subprotocol's lean frames alike: a subscribed frame
// keeps its type, an event frame is the one with a "seq".
var (
	patSubscribed = []byte(`"type":"subscribed"`)
	patErrorFrame = []byte(`{"type":"error"`)
	patSeq        = []byte(`"seq":`)
	patLeanEvent  = []byte(`{"group":`)       // v2's lean event frame starts so (no type)
	patEventFrame = []byte(`{"type":"event"`) // v1's event frame
	patLastSeq    = []byte(`"last_seq":`)
	patEpoch      = []byte(`"epoch":"`)
	patSeqEpoch   = []byte(`,"epoch":"`) // an event's epoch, right after its seq
	patCommaSeq   = []byte(`,"seq":`)    // a lean event's seq, right after its group
	patRecovered  = []byte(`"recovered":true`)
)

// tsFrame is what a byte scan of one taskstream frame found.
type tsFrame struct {
	kind      byte // 's' subscribed, 'e' event, 'x' error, 0 other
	seq       int64
	epoch     []byte // nil when the frame has none
	recovered bool
}

// scanTS reads a taskstream frame's kind, seq (an event's, or a
// subscribed frame's last_seq), epoch and recovered flag without decoding
// it. The frame's own fields come before its data, so the first match is
// the frame's.
func scanTS(frame []byte) tsFrame {
	var f tsFrame
	switch {
	case bytes.HasPrefix(frame, patLeanEvent) || bytes.HasPrefix(frame, patEventFrame):
		// An event, the frame nearly every read carries: its seq is near
		// the start, and no scan of the whole frame (its data may even
		// quote another frame's fields) is needed to tell its kind.
		seq, end, ok := leanSeq(frame)
		if !ok {
			seq, end, ok = intAt(frame, patSeq)
		}
		if !ok {
			return f
		}
		f.kind, f.seq = 'e', seq
		// The encoders (wire.AppendLeanEvent, progress.Event.Frame) put
		// an event's epoch right after its seq, when it has one: looking
		// only there spares a scan of the whole frame for a field most
		// lean events do not carry (in a join, ~250 per socket).
		if rest := frame[end:]; bytes.HasPrefix(rest, patSeqEpoch) {
			rest = rest[len(patSeqEpoch):]
			if j := bytes.IndexByte(rest, '"'); j >= 0 {
				f.epoch = rest[:j]
			}
		}
		return f
	case bytes.Contains(frame, patSubscribed):
		f.kind = 's'
		f.seq, _ = intAfter(frame, patLastSeq)
		f.recovered = bytes.Contains(frame, patRecovered)
	case bytes.HasPrefix(frame, patErrorFrame):
		f.kind = 'x'
		return f
	default:
		seq, ok := intAfter(frame, patSeq)
		if !ok {
			return f
		}
		f.kind, f.seq = 'e', seq
	}
	if i := bytes.Index(frame, patEpoch); i >= 0 {
		rest := frame[i+len(patEpoch):]
		if j := bytes.IndexByte(rest, '"'); j >= 0 {
			f.epoch = rest[:j]
		}
	}
	return f
}

// leanSeq reads the seq of a lean event frame where its encoder puts it:
// right after the group's string, which has no escaped quote in the
// groups the load client makes. Not found there (ok false), the caller
// looks for "seq": anywhere; this spares the search on the 1.25 million
// join events of a join.
func leanSeq(frame []byte) (n int64, end int, ok bool) {
	if !bytes.HasPrefix(frame, patLeanEvent) || len(frame) < len(patLeanEvent)+1 || frame[len(patLeanEvent)] != '"' {
		return 0, 0, false
	}
	start := len(patLeanEvent) + 1
	q := bytes.IndexByte(frame[start:], '"')
	if q < 0 || frame[start+q-1] == '\\' {
		return 0, 0, false
	}
	at := start + q + 1
	if !bytes.HasPrefix(frame[at:], patCommaSeq) {
		return 0, 0, false
	}
	return digitsAt(frame, at+len(patCommaSeq))
}

// intAfter parses the integer right after the first pat in b.
func intAfter(b, pat []byte) (int64, bool) {
	n, _, ok := intAt(b, pat)
	return n, ok
}

// intAt parses the integer right after the first pat in b; end is the
// index in b just past its digits.
func intAt(b, pat []byte) (n int64, end int, ok bool) {
	i := bytes.Index(b, pat)
	if i < 0 {
		return 0, 0, false
	}
	return digitsAt(b, i+len(pat))
}

// digitsAt parses the integer that starts at b[start]; end is the index
// in b just past its digits.
func digitsAt(b []byte, start int) (n int64, end int, ok bool) {
	end = start
	for end < len(b) && b[end] >= '0' && b[end] <= '9' {
		end++
	}
	n, ok = atoi(b[start:end])
	return n, end, ok
}
