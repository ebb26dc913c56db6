package web

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/wire"
)

// The write side of a socket. Frames wait in the socket's sendQueue; a
// writer goroutine runs only while there is something to write (started
// by the push that finds none running, ended when the queue is empty), so
// an idle socket has no writer, no ticker and no write buffer. Everything
// a writer takes from the queue in one go leaves in one write(2) (one
// per maxBatchBytes), under one write deadline: under fan-out a socket is
// sent many frames at once, and a syscall per frame was most of the CPU.
// One pinger per Server pings every socket each PingInterval.

// maxBatchBytes bounds what one write(2) (and, in taskstream.v2, one
// message) carries: bigger batches leave in pieces of about this size, a
// close asked meanwhile goes out after the piece in flight, and a v2
// client never has to hold a message much larger than a frame.
const maxBatchBytes = 64 << 10

// batchConn is the network connection under a socket's websocket.Conn.
// Outside a batch it passes writes through (the handshake, the pongs and
// close replies gorilla writes from the read pump); while the writer has
// a batch open it collects every write, gorilla's framing included, and
// sends them with one write(2) when the batch ends or holds
// maxBatchBytes. The mutex orders a control frame written from the read
// pump with the batch: it joins the batch, or waits for its write.
type batchConn struct {
	net.Conn

	mu   sync.Mutex
	open bool    // a batch is open: writes are collected in buf
	buf  *[]byte // the batch, from batchPool; nil outside a batch
	err  error   // the batch's first failed write
}

// batchPool recycles batch buffers: a socket holds one only while its
// writer writes.
var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// begin opens a batch whose writes must be done by deadline: the one
// write deadline of the batch (gorilla's per-message ones are ignored
// while it is open).
func (b *batchConn) begin(deadline time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.open, b.err = true, b.Conn.SetWriteDeadline(deadline)
	b.buf = batchPool.Get().(*[]byte)
}

// end sends what the batch collected and closes it.
func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
	b.open = false
	buf := b.buf
	b.buf = nil
	if cap(*buf) <= 4*maxBatchBytes {
		*buf = (*buf)[:0]
		batchPool.Put(buf)
	}
	return b.err
}

// flushLocked writes the collected bytes. Called with b.mu held.
func (b *batchConn) flushLocked() {
	if len(*b.buf) > 0 && b.err == nil {
		_, b.err = b.Conn.Write(*b.buf)
	}
	*b.buf = (*b.buf)[:0]
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return b.Conn.Write(p)
	}
	if b.err != nil {
		return 0, b.err
	}
	if len(*b.buf)+len(p) > maxBatchBytes {
		b.flushLocked()
		if b.err == nil && len(p) >= maxBatchBytes {
			// A large frame goes out as it is, not through a copy.
			_, b.err = b.Conn.Write(p)
			if b.err != nil {
				return 0, b.err
			}
			return len(p), nil
		}
	}
	if b.err != nil {
		return 0, b.err
	}
	*b.buf = append(*b.buf, p...)
	return len(p), nil
}

// SetWriteDeadline is ignored while a batch is open: the batch has one.
func (b *batchConn) SetWriteDeadline(t time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open {
		return nil
	}
	return b.Conn.SetWriteDeadline(t)
}

// batchingWriter hands the upgrader a batchConn when it hijacks the
// request's connection.
type batchingWriter struct {
	http.ResponseWriter
	conn *batchConn
}

func (w *batchingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.conn = &batchConn{Conn: c}
	return w.conn, rw, nil
}

func (w *batchingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// upgradeSocket upgrades r to a socket whose writes are batched, offering
// the taskstream.v2 subprotocol (upgrader.Subprotocols), and reports
// whether the client chose it.
func upgradeSocket(w http.ResponseWriter, r *http.Request) (ws *websocket.Conn, out *batchConn, v2 bool, err error) {
	bw := &batchingWriter{ResponseWriter: w}
	ws, err = upgrader.Upgrade(bw, r, nil)
	if err != nil {
		return nil, nil, false, err
	}
	return ws, bw.conn, ws.Subprotocol() == wire.SubprotocolV2, nil
}

var separator = []byte{wire.FrameSeparator}

// writeBufferPool holds gorilla's write buffers (framing a message), so
// that a socket holds one only while a message is being written.
var writeBufferPool sync.Pool

// startWriting lets the socket's queue start writers, from now on.
func (c *conn) startWriting() { c.send.attach(c.writeLoop) }

// writeLoop is one writer: it writes what the queue hands it until the
// queue is empty (then it ends; the next push starts another), the
// socket is closed (it sends the close frame first) or a write fails.
func (c *conn) writeLoop() {
	defer c.send.writers.Done()
	for {
		step, batch, ping := c.send.next()
		switch step {
		case stepIdle:
			return
		case stepClose:
			c.writeClose()
			return
		}
		if err := c.writeBatch(batch, ping); err != nil {
			c.send.stop()
			c.abort()
			return
		}
	}
}

// writeBatch writes frames (and a ping first when ping) in one batch:
// one frame per message in v1, frames joined by '\n' into messages of up
// to maxBatchBytes in taskstream.v2. It stops early when the socket is
// closed meanwhile: the close frame goes out next, not the backlog.
func (c *conn) writeBatch(frames [][]byte, ping bool) error {
	ws := c.ws
	deadline := time.Now().Add(c.s.cfg.WriteTimeout)
	c.out.begin(deadline)
	err := c.writeFrames(ws, frames, ping, deadline)
	if endErr := c.out.end(); err == nil {
		err = endErr
	}
	return err
}

func (c *conn) writeFrames(ws *websocket.Conn, frames [][]byte, ping bool, deadline time.Time) error {
	if ping {
		if err := ws.WriteControl(websocket.PingMessage, nil, deadline); err != nil {
			return err
		}
	}
	if !c.v2 {
		for _, frame := range frames {
			if c.isClosed() {
				return nil
			}
			if err := ws.WriteMessage(websocket.TextMessage, frame); err != nil {
				return err
			}
		}
		return nil
	}
	for len(frames) > 0 && !c.isClosed() {
		w, err := ws.NextWriter(websocket.TextMessage)
		if err != nil {
			return err
		}
		size := 0
		for i, frame := range frames {
			if i > 0 {
				if size+1+len(frame) > maxBatchBytes {
					break
				}
				if _, err := w.Write(separator); err != nil {
					return err
				}
				size++
			}
			if _, err := w.Write(frame); err != nil {
				return err
			}
			size += len(frame)
			frames = frames[1:]
		}
		if err := w.Close(); err != nil {
			return err
		}
	}
	return nil
}

// pinger pings every open socket each PingInterval, until ctx ends: one
// goroutine and one ticker per Server instead of one each per socket.
// The ping goes out with the socket's next batch (a writer is started
// for it when none runs).
func (s *Server) pinger(ctx context.Context) {
	t := time.NewTicker(s.cfg.PingInterval)
	defer t.Stop()
	var conns []*conn
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		conns = conns[:0]
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			c.send.requestPing()
		}
		clear(conns)
	}
}
