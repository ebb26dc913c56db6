package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// The subscribers' read side. The load client shares the two cores with
// the server it measures, so whatever it spends per received frame is
// queueing it adds to every latency it reports, for taskstream and the
// reference alike. gorilla's reader cost two read(2) calls per message
// (the one that returns it and the one that finds the socket empty before
// the goroutine parks), a bufio copy and a goroutine wake-up per message.
// wsReader instead parses the server's frames in place in one large
// buffer, fed by one read(2) per wake-up of the socket (readSocket: on
// unix straight from the descriptor; elsewhere through net.Conn.Read),
// and stamps each message with the time the read that completed it
// returned, as before. gorilla still dials (the handshake) and writes
// (subscribes, pongs, the close reply).

// readBufSize is the reader's buffer: a taskstream.v2 message of up to
// 64 KiB, or many small ones, are parsed where they were read. A longer
// message grows it.
const readBufSize = 64 << 10

// maxMessage bounds a message (one frame, or fragments together): a
// server sending more is broken, and the reader stops rather than grow
// without end.
const maxMessage = 16 << 20

// controlWait bounds the write of a pong or of the close reply.
const controlWait = 5 * time.Second

// wsReader parses the WebSocket frames a server sends (RFC 6455: never
// masked), from bytes handed to feed.
type wsReader struct {
	// control writes a pong or the close reply (gorilla's WriteControl,
	// which may be called while a message is written).
	control func(messageType int, data []byte)
	buf     []byte // buf[r:w] is read and not parsed yet; nil between reads (release)
	r       int
	w       int
	pooled  *[]byte // buf's entry in readBufs, nil when buf was grown past it

	frag    []byte // a fragmented message's payload so far
	inFrag  bool   // a data frame without FIN began a message
	onMsg   func(msg []byte, at time.Time) bool
	stopped bool // onMsg returned false
}

// newWSReader parses frames for onMsg, answering pings and the close
// with control.
func newWSReader(control func(messageType int, data []byte), onMsg func([]byte, time.Time) bool) *wsReader {
	return &wsReader{control: control, onMsg: onMsg}
}

// readBufs holds the readers' buffers. A reader takes one for the reads
// of one wake-up of its socket and gives it back once every byte in it is
// parsed (release), so thousands of mostly idle sockets (a join storm,
// the idle scenario) share a few buffers rather than keep 64 KiB each.
var readBufs = sync.Pool{New: func() any {
	b := make([]byte, readBufSize)
	return &b
}}

// release gives the buffer back when it holds nothing unparsed: the
// messages handed to onMsg were valid only during the call. A buffer
// grown for a large frame is dropped rather than kept.
func (rd *wsReader) release() {
	if rd.buf == nil || rd.r != rd.w {
		return
	}
	if rd.pooled != nil {
		readBufs.Put(rd.pooled)
	}
	rd.buf, rd.pooled, rd.r, rd.w = nil, nil, 0, 0
}

// writeControl is a wsReader's control for ws: a failed write shows as
// the read error that follows.
func writeControl(ws *websocket.Conn) func(int, []byte) {
	return func(messageType int, data []byte) {
		_ = ws.WriteControl(messageType, data, time.Now().Add(controlWait))
	}
}

// space is where the next read goes: after the unparsed bytes, moved to
// the front (or to a larger buffer when a frame needs more) first.
func (rd *wsReader) space() []byte {
	if rd.buf == nil {
		rd.pooled = readBufs.Get().(*[]byte)
		rd.buf, rd.r, rd.w = *rd.pooled, 0, 0
	}
	if rd.r == rd.w {
		rd.r, rd.w = 0, 0
	}
	if len(rd.buf)-rd.w < len(rd.buf)/4 && rd.r > 0 {
		rd.w = copy(rd.buf, rd.buf[rd.r:rd.w])
		rd.r = 0
	}
	return rd.buf[rd.w:]
}

// errStopped ends a read loop whose message callback said stop.
var errStopped = errors.New("loadgen: reader stopped")

// feed takes n bytes just read into space() at time at and handles every
// complete frame. It returns errStopped when the callback said stop, a
// *websocket.CloseError for the server's close, or a protocol error.
func (rd *wsReader) feed(n int, at time.Time) error {
	rd.w += n
	for {
		frame, ok, need, err := rd.next()
		if err != nil {
			return err
		}
		if !ok {
			if need > len(rd.buf) {
				// A frame larger than the buffer: grow it, in steps as
				// the frame's bytes come (its header may claim more).
				nb := make([]byte, min(need, 2*len(rd.buf)))
				rd.w = copy(nb, rd.buf[rd.r:rd.w])
				if rd.pooled != nil {
					readBufs.Put(rd.pooled)
				}
				rd.buf, rd.r, rd.pooled = nb, 0, nil
			}
			return nil
		}
		if err := rd.handle(&frame, at); err != nil {
			return err
		}
	}
}

// feedBytes feeds p, copied in as many pieces as the buffer takes.
func (rd *wsReader) feedBytes(p []byte, at time.Time) error {
	for len(p) > 0 {
		n := copy(rd.space(), p)
		p = p[n:]
		if err := rd.feed(n, at); err != nil {
			return err
		}
	}
	return nil
}

// rawFrame is one frame in the buffer.
type rawFrame struct {
	fin     bool
	opcode  int
	payload []byte // in rd.buf: valid until the next read
}

// next cuts the next complete frame from the buffer (ok); when it is not
// all there yet, the bytes the whole frame needs.
func (rd *wsReader) next() (f rawFrame, ok bool, need int, err error) {
	b := rd.buf[rd.r:rd.w]
	if len(b) < 2 {
		return f, false, 2, nil
	}
	if b[0]&0x70 != 0 {
		return f, false, 0, fmt.Errorf("loadgen: a frame with reserved bits 0x%x (no extension was negotiated)", b[0]&0x70)
	}
	if b[1]&0x80 != 0 {
		return f, false, 0, errors.New("loadgen: a masked frame from the server")
	}
	head, size := 2, uint64(b[1]&0x7f)
	switch size {
	case 126:
		head = 4
		if len(b) < head {
			return f, false, head, nil
		}
		size = uint64(binary.BigEndian.Uint16(b[2:]))
	case 127:
		head = 10
		if len(b) < head {
			return f, false, head, nil
		}
		size = binary.BigEndian.Uint64(b[2:])
	}
	if size > maxMessage {
		return f, false, 0, fmt.Errorf("loadgen: a frame of %d bytes (at most %d)", size, maxMessage)
	}
	total := head + int(size)
	if len(b) < total {
		return f, false, total, nil
	}
	rd.r += total
	return rawFrame{fin: b[0]&0x80 != 0, opcode: int(b[0] & 0x0f), payload: b[head:total]}, true, 0, nil
}

// handle acts on one frame: a message to the callback, a pong for a ping,
// the close reply and a *websocket.CloseError for a close.
func (rd *wsReader) handle(f *rawFrame, at time.Time) error {
	switch f.opcode {
	case websocket.TextMessage, websocket.BinaryMessage:
		if rd.inFrag {
			return errors.New("loadgen: a new message inside a fragmented one")
		}
		if !f.fin {
			rd.inFrag = true
			rd.frag = append(rd.frag[:0], f.payload...)
			return nil
		}
		return rd.deliver(f.payload, at)
	case 0: // continuation
		if !rd.inFrag {
			return errors.New("loadgen: a continuation frame outside a message")
		}
		if len(rd.frag)+len(f.payload) > maxMessage {
			return fmt.Errorf("loadgen: a message of more than %d bytes", maxMessage)
		}
		rd.frag = append(rd.frag, f.payload...)
		if !f.fin {
			return nil
		}
		rd.inFrag = false
		return rd.deliver(rd.frag, at)
	case websocket.PingMessage:
		if !f.fin || len(f.payload) > 125 {
			return errors.New("loadgen: a fragmented or long ping")
		}
		rd.control(websocket.PongMessage, f.payload) // copied into the pong before it returns
		return nil
	case websocket.PongMessage:
		return nil
	case websocket.CloseMessage:
		return rd.closed(f.payload)
	}
	return fmt.Errorf("loadgen: a frame with opcode %d", f.opcode)
}

func (rd *wsReader) deliver(msg []byte, at time.Time) error {
	if !rd.onMsg(msg, at) {
		rd.stopped = true
		return errStopped
	}
	return nil
}

// closed answers the server's close as gorilla does (the same code back)
// and returns it as gorilla's *websocket.CloseError.
func (rd *wsReader) closed(payload []byte) error {
	ce := &websocket.CloseError{Code: websocket.CloseNoStatusReceived}
	reply := websocket.FormatCloseMessage(websocket.CloseNoStatusReceived, "")
	switch {
	case len(payload) == 1:
		return errors.New("loadgen: a close frame of 1 byte")
	case len(payload) >= 2:
		ce.Code, ce.Text = int(binary.BigEndian.Uint16(payload)), string(payload[2:])
		if !utf8.ValidString(ce.Text) {
			return errors.New("loadgen: a close reason that is not UTF-8")
		}
		reply = websocket.FormatCloseMessage(ce.Code, "")
	}
	rd.control(websocket.CloseMessage, reply)
	return ce
}

// readMessages reads s's socket until it ends, fn returns false or ctx
// ends, calling fn with each message (valid only during the call) and the
// time the read that completed it returned. It returns the error that
// ended the socket (a *websocket.CloseError for the server's close), nil
// when fn said stop. With s.ring the ring receives for it (fn runs on the
// ring's goroutine meanwhile); without, one read(2) per wake-up
// (readSocket), and ctx's end closes the socket.
func (s *sock) readMessages(ctx context.Context, fn func(msg []byte, at time.Time) bool) error {
	rd := newWSReader(writeControl(s.ws), fn)
	// Frames that came with the handshake first.
	pending := s.pending
	s.pending = nil
	if err := rd.feedBytes(pending, time.Now()); err != nil {
		return stopIsNil(err)
	}
	if s.ring != nil {
		return stopIsNil(s.ring.read(ctx, s.ws.NetConn(), rd, &s.read))
	}
	stop := context.AfterFunc(ctx, func() { _ = s.ws.Close() })
	defer stop()
	return stopIsNil(readSocket(s.ws.NetConn(), rd, &s.read))
}

func stopIsNil(err error) error {
	if errors.Is(err, errStopped) {
		return nil
	}
	return err
}

// underlying is the connection a countingConn wraps, for readSocket.
func underlying(c net.Conn) net.Conn {
	if cc, ok := c.(*countingConn); ok {
		return cc.Conn
	}
	return c
}

// readConn feeds rd from c's Read until the socket ends or rd stops:
// the portable loop (a Read that finds the socket empty parks until it
// is readable, then reads again).
func readConn(c net.Conn, rd *wsReader, read *atomic.Int64) error {
	c = underlying(c)
	for {
		n, err := c.Read(rd.space())
		if n > 0 {
			read.Add(int64(n))
			if ferr := rd.feed(n, time.Now()); ferr != nil {
				return ferr
			}
		}
		if err != nil {
			return err
		}
	}
}
