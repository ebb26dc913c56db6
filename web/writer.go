package web

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/wire"
)

// The write side of a socket. Frames wait in the socket's sendQueue; a
// writer runs only while there is something to write (started by the
// push that finds none running, ended when the queue is empty), so an
// idle socket has no writer, no ticker and no write buffer. The writer is
// first the Server's flusher, which writes what is queued without waiting
// (writeDirect) from one of a few goroutines shared by every socket; only
// a socket whose kernel buffer is full, or that has a ping or its close
// to send, gets a goroutine of its own. Everything a writer takes from
// the queue in one go leaves in one write(2) (a writer goroutine: one per
// maxBatchBytes, under one write deadline): under fan-out a socket is
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
//
// A direct batch (beginDirect) is written by whoever queued its frames,
// usually the hub's fan-out, without waiting: its bytes go out in one
// write(2) attempt that never blocks (endDirect). What the kernel did not
// take stays in the open batch (control frames from the read pump queue
// up behind it) until a writer goroutine sends it (finish).
type batchConn struct {
	net.Conn

	mu     sync.Mutex
	open   bool    // a batch is open: writes are collected in buf
	direct bool    // the open batch is direct: collected whole, sent without waiting
	buf    *[]byte // the batch, from batchPool; nil outside a batch
	err    error   // the batch's first failed write

	// The file descriptor under Conn, for writes that must not wait
	// (now.raw; nil: Conn has none), found by canDirect.
	now nowWriter
	// carried counts the direct batches a writer goroutine had to finish
	// (the kernel's buffer was full): how often a socket fell back.
	carried int
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
	b.closeLocked()
	return b.err
}

// closeLocked closes the batch and gives its buffer back. Called with
// b.mu held.
func (b *batchConn) closeLocked() {
	b.open, b.direct = false, false
	buf := b.buf
	b.buf = nil
	if cap(*buf) <= 4*maxBatchBytes {
		*buf = (*buf)[:0]
		batchPool.Put(buf)
	}
}

// errWouldBlock: a direct batch was not sent whole; a writer goroutine
// must finish it.
var errWouldBlock = errors.New("web: the socket's buffer is full")

// canDirect finds the connection's file descriptor and reports whether
// direct batches are possible (a TCP connection has one). Called once,
// when the socket starts writing, before any direct batch.
func (b *batchConn) canDirect() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.now = nowWriter{raw: rawConnOf(b.Conn)}
	return b.now.raw != nil
}

// beginDirect opens a direct batch (canDirect must have said yes). It
// sets no write deadline: the batch never waits.
func (b *batchConn) beginDirect() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.open, b.direct, b.err = true, true, nil
	b.buf = batchPool.Get().(*[]byte)
}

// endDirect tries to send the direct batch with one write(2) that does
// not wait. Sent whole, the batch is closed (nil); otherwise the rest
// stays in the open batch and it returns errWouldBlock (finish sends
// it), or the write's error.
func (b *batchConn) endDirect() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	buf := *b.buf
	n, err := b.now.write(buf)
	if err != nil {
		b.err = err
		b.closeLocked()
		return err
	}
	if n == len(buf) {
		b.closeLocked()
		return nil
	}
	*b.buf = buf[:copy(buf, buf[n:])]
	return errWouldBlock
}

// maxScratch bounds the flusher's buffer kept between sockets: a larger
// batch (a backlog) is framed into a buffer of its own that is let go.
const maxScratch = 4 * maxBatchBytes

// sendNow frames frames as taskstream.v2 messages (appendV2Messages) into
// scratch and tries to send them with one write(2) that does not wait, as
// a direct batch would, but under one hold of the mutex and without a
// batch buffer: what the kernel takes at once is gone (nil). What it does
// not take is kept in an open direct batch and errWouldBlock returned
// (finish sends it); a failed write returns its error. No batch may be
// open.
func (b *batchConn) sendNow(frames [][]byte, scratch *[]byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	buf := appendV2Messages((*scratch)[:0], frames)
	if cap(buf) <= maxScratch {
		*scratch = buf[:0]
	}
	n, err := b.now.write(buf)
	if err != nil {
		return err
	}
	return b.keepLocked(buf[n:])
}

// keepLocked keeps rest, what a direct send left, in an open direct
// batch for a writer goroutine (errWouldBlock); nil when nothing is left.
// Called with b.mu held and no batch open.
func (b *batchConn) keepLocked(rest []byte) error {
	if len(rest) == 0 {
		return nil
	}
	b.open, b.direct, b.err = true, true, nil
	b.buf = batchPool.Get().(*[]byte)
	*b.buf = append((*b.buf)[:0], rest...)
	return errWouldBlock
}

// finish sends what a direct batch left (and whatever joined it since)
// by deadline, waiting for room, and closes it; no-op without one.
func (b *batchConn) finish(deadline time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return nil
	}
	b.direct = false
	b.carried++
	b.err = b.Conn.SetWriteDeadline(deadline)
	b.flushLocked()
	b.closeLocked()
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
	if !b.direct && len(*b.buf)+len(p) > maxBatchBytes {
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

// startWriting lets the socket's queue start writers, from now on. A
// connection without a file descriptor at hand (canDirect) always gets a
// writer goroutine.
func (c *conn) startWriting() {
	direct := c.writeDirect
	if !c.out.canDirect() {
		direct = nil
	}
	c.send.attach(c.writeLoop, direct, c.s.flush)
}

// writeDirect writes what is queued without waiting, from one of the
// Server's flusher goroutines: a socket with room in its kernel buffer
// gets its frames with no goroutine of its own started. Under fan-out an
// event otherwise started a goroutine per socket (a thousand for a busy
// room), which queued up on the CPUs ahead of everything else, the next
// event's publish included. It reports directReleased when the batch
// went out whole and the queue is empty (the writer is released),
// directCarry when a writer goroutine must carry on (a full buffer, more
// frames, a ping or a close), directStaged when the batch waits in the
// flusher goroutine's send ring (sendStaged finishes it).
//
// fs is the calling flusher goroutine's: a taskstream.v2 batch without a
// ping, a fan-out's usual delivery, is framed into its buffer and sent
// under one hold of the connection's mutex (batchConn.sendNow), or
// staged for its send ring (batchConn.stage).
func (c *conn) writeDirect(fs *flushState) directStep {
	step, batch, ping := c.send.next()
	switch step {
	case stepIdle:
		return directReleased
	case stepClose:
		return directCarry // the writer's next() hands it the close again
	}
	var err error
	switch {
	case c.v2 && !ping:
		if c.isClosed() {
			break // the close frame goes out next, not the backlog
		}
		if fs.ring != nil && stageable(fs, batch) {
			c.out.stage(fs, c, batch)
			return directStaged
		}
		err = c.out.sendNow(batch, &fs.scratch)
	default:
		c.out.beginDirect()
		if c.v2 {
			err = c.writeV2Direct(batch, ping)
		} else {
			err = c.writeFrames(c.ws, batch, ping, time.Now().Add(c.s.cfg.WriteTimeout))
		}
		if endErr := c.out.endDirect(); err == nil {
			err = endErr
		}
	}
	return c.afterDirect(err)
}

// afterDirect is the step after a direct write that ended with err.
func (c *conn) afterDirect(err error) directStep {
	switch {
	case err == nil:
		if c.send.release() {
			return directReleased
		}
		return directCarry
	case errors.Is(err, errWouldBlock):
		return directCarry
	}
	c.send.stop()
	c.abort()
	return directReleased
}

// writeV2Direct puts frames (after a ping when ping) into the open
// direct batch as taskstream.v2 messages, framed here rather than through
// gorilla's NextWriter: in a fan-out each delivery is one small frame to
// each of many sockets, and gorilla's per-message writer, buffer and
// locks were a tenth of the server's CPU on top of the write(2). The
// bytes are what gorilla would send (a server's frames are not masked),
// except that a message longer than gorilla's 4 KiB write buffer is one
// frame rather than fragments. Control frames still go through gorilla.
func (c *conn) writeV2Direct(frames [][]byte, ping bool) error {
	if ping {
		if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.s.cfg.WriteTimeout)); err != nil {
			return err
		}
	}
	if c.isClosed() {
		return nil // the close frame goes out next, not the backlog
	}
	c.out.appendV2(frames)
	return nil
}

// appendV2 appends frames to the open batch as v2 text messages.
func (b *batchConn) appendV2(frames [][]byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	*b.buf = appendV2Messages(*b.buf, frames)
}

// appendV2Messages appends frames to dst as WebSocket text messages of
// frames joined by '\n', each of at most maxBatchBytes (or one frame,
// when a frame alone is longer), one unfragmented frame each.
func appendV2Messages(dst []byte, frames [][]byte) []byte {
	for len(frames) > 0 {
		size, n := len(frames[0]), 1
		for n < len(frames) && size+1+len(frames[n]) <= maxBatchBytes {
			size += 1 + len(frames[n])
			n++
		}
		dst = appendFrameHeader(dst, websocket.TextMessage, size)
		for i, f := range frames[:n] {
			if i > 0 {
				dst = append(dst, wire.FrameSeparator)
			}
			dst = append(dst, f...)
		}
		frames = frames[n:]
	}
	return dst
}

// appendFrameHeader appends the header of a final, unmasked frame of
// opcode with size bytes of payload (RFC 6455 section 5.2).
func appendFrameHeader(dst []byte, opcode, size int) []byte {
	dst = append(dst, 0x80|byte(opcode))
	switch {
	case size < 126:
		return append(dst, byte(size))
	case size <= 0xffff:
		return append(dst, 126, byte(size>>8), byte(size))
	}
	return binary.BigEndian.AppendUint64(append(dst, 127), uint64(size))
}

// writeLoop is one writer: it writes what the queue hands it until the
// queue is empty (then it ends; the next push starts another), the
// socket is closed (it sends the close frame first) or a write fails.
// It first sends what a direct write left.
func (c *conn) writeLoop() {
	defer c.send.writers.Done()
	if err := c.out.finish(time.Now().Add(c.s.cfg.WriteTimeout)); err != nil {
		c.send.stop()
		c.abort()
		return
	}
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

// flusher runs the direct writes of sockets whose writer was started (see
// writeDirect) on a few goroutines (flushersFor), so a fan-out to many
// sockets costs a list append per socket instead of a goroutine. The
// Server owns it: New starts it, Shutdown closes it; a queue handed to it
// is written before its goroutines end, and once it is closed queues
// start their own writer goroutine again.
type flusher struct {
	mu      sync.Mutex
	wake    *sync.Cond
	list    []*sendQueue // queues waiting for their direct write, oldest first, from head
	head    int          // list[:head] are taken
	waiting int          // goroutines waiting in wake
	closed  bool
	wg      sync.WaitGroup
	rings   bool // each goroutine sends through an io_uring where the kernel gives one
	logger  *slog.Logger
}

// flushersFor is how many flusher goroutines a process with procs Ps
// (GOMAXPROCS) runs: one fewer, and at least one. Go's scheduler polls the
// network only when a P runs out of work (and sysmon every 10 ms): with a
// flusher on every P, a fan-out of a few milliseconds kept every request,
// Redis reply and next event waiting until it was done, or for up to
// 10 ms. The P left over is idle between them and takes each as it
// arrives. On 2 cores, in issue 10's latency scenario, one flusher
// instead of two took the publish call's p50 from 5.2-8.6 ms to
// 3.1-4.5 ms and the server's CPU down a tenth (the two wrote into the
// kernel's loopback against each other), with the same fan-out and join
// figures (BENCHMARKS.md).
func flushersFor(procs int) int { return max(1, procs-1) }

// flushChunk is how many queues a flusher goroutine takes at once: it
// yields the CPU after each chunk, so goroutines woken meanwhile (a
// publish, a Redis reply) wait for a chunk, not for a whole fan-out.
const flushChunk = 32

// newFlusher starts n goroutines; with rings, each sends its chunks'
// batches through a send ring of its own where the kernel gives one
// (newSendRing), and logs to logger (nil: discarded) when it does not.
func newFlusher(n int, rings bool, logger *slog.Logger) *flusher {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &flusher{rings: rings, logger: logger}
	f.wake = sync.NewCond(&f.mu)
	for range n {
		f.wg.Add(1)
		go f.run()
	}
	return f
}

// add hands q (its writer counted as running) to the flusher, or reports
// false once it is closed.
func (f *flusher) add(q *sendQueue) bool {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return false
	}
	f.list = append(f.list, q)
	wake := f.waiting > 0 && len(f.list)-f.head == 1
	f.mu.Unlock()
	if wake {
		f.wake.Signal()
	}
	return true
}

func (f *flusher) run() {
	defer f.wg.Done()
	var chunk []*sendQueue
	fs := newFlushState(f.rings, f.logger)
	defer fs.close()
	for {
		f.mu.Lock()
		for len(f.list) == f.head && !f.closed {
			f.waiting++
			f.wake.Wait()
			f.waiting--
		}
		if len(f.list) == f.head {
			f.mu.Unlock()
			return // closed, and nothing left
		}
		n := min(len(f.list)-f.head, flushChunk)
		chunk = append(chunk[:0], f.list[f.head:f.head+n]...)
		clear(f.list[f.head : f.head+n])
		f.head += n
		if f.head == len(f.list) {
			f.list, f.head = f.list[:0], 0
		} else if f.head > len(f.list)/2 {
			// Taken from the front while more keep coming: move the rest
			// down so the list does not grow for ever.
			rest := copy(f.list, f.list[f.head:])
			clear(f.list[rest:])
			f.list, f.head = f.list[:rest], 0
		}
		more := len(f.list) > f.head && f.waiting > 0
		f.mu.Unlock()
		if more {
			f.wake.Signal() // another goroutine takes the next chunk meanwhile
		}
		for _, q := range chunk {
			q.runDirect(fs)
		}
		fs.sendStaged()
		clear(chunk)
		runtime.Gosched()
	}
}

// close lets the goroutines end once every queue handed over is written,
// and waits for them.
func (f *flusher) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.wake.Broadcast()
	f.wg.Wait()
}
