package web

import (
	"log/slog"
	"net"
	"syscall"
)

// flushState is one flusher goroutine's own: the buffer deliveries are
// framed into and, where the kernel gives one, its send ring with the
// sends staged for it. A chunk of queues stages the fan-out's usual
// deliveries (writeDirect), then sendStaged sends them all with one
// io_uring_enter(2) and finishes each socket's turn.
type flushState struct {
	scratch []byte    // a socket's batch sent at once (sendNow)
	ring    *sendRing // nil: each socket's batch goes out with its own write(2)
	staged  []stagedSend
	sbuf    []byte                      // the staged batches, back to back
	done    func(tag uint64, res int32) // fs.complete, bound once
	logger  *slog.Logger

	// holdFrom's state: holdCall is holdDescriptor, bound once (a
	// closure per descriptor would be an allocation per delivery);
	// holdAt is the staged send whose descriptor Control is holding;
	// submitted and ringErr are the enter's outcome.
	holdCall  func(fd uintptr)
	holdAt    int
	submitted int
	ringErr   error
}

// stagedSend is one socket's staged batch: its bytes are
// sbuf[off:end], and its connection's mutex is held until
// sendStaged finishes it.
type stagedSend struct {
	c        *conn
	off, end int
	fd       uintptr
	open     bool  // the descriptor is held open (RawConn.Control) for the enter
	order    int   // its place among the sends handed to the ring
	complete bool  // the ring completed it: res is its result
	res      int32 // bytes sent, or a negated errno
}

// newFlushState is a flusher goroutine's state, with a send ring when
// rings and the kernel gives one; logger (nil: discarded) hears why not.
func newFlushState(rings bool, logger *slog.Logger) *flushState {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	fs := &flushState{logger: logger}
	fs.done, fs.holdCall = fs.complete, fs.holdDescriptor
	if !rings {
		return fs
	}
	r, err := newSendRing(flushChunk)
	if err != nil {
		fs.logger.Info("socket writes go out one write(2) each", "why", err)
		return fs
	}
	fs.ring = r
	return fs
}

// close lets the ring go.
func (fs *flushState) close() {
	if fs.ring != nil {
		fs.ring.close()
		fs.ring = nil
	}
}

// maxStaged bounds one socket's staged batch. A fan-out's delivery is a
// frame or a few; a larger batch (a join's replay of a room's history, a
// backlog) goes out at once with its own write (sendNow), as without a
// ring: staged, the chunk's buffer held every socket's replay at once,
// and a join storm of 5,000 sockets took 2.6 s instead of 1.6 and left
// 5 KiB more per socket in the heap (bench/compare, 17:42 UTC).
const maxStaged = 8 << 10

// stageable reports whether frames may be staged in fs: small, and the
// chunk's buffer still within maxScratch. A batch that is not goes out
// at once (sendNow, framed in fs.scratch, not in the staged buffer).
func stageable(fs *flushState, frames [][]byte) bool {
	size := 0
	for _, f := range frames {
		size += len(f) + 1
		if size > maxStaged {
			return false
		}
	}
	return len(fs.sbuf)+size <= maxScratch
}

// stage frames frames as taskstream.v2 messages into fs's buffer for its
// send ring and keeps the connection's mutex until sendStaged sent them,
// as sendNow keeps it for its write. No batch may be open.
func (b *batchConn) stage(fs *flushState, c *conn, frames [][]byte) {
	b.mu.Lock()
	off := len(fs.sbuf)
	fs.sbuf = appendV2Messages(fs.sbuf, frames)
	fs.staged = append(fs.staged, stagedSend{c: c, off: off, end: len(fs.sbuf)})
}

// sendStaged sends every staged batch and ends each socket's turn as
// writeDirect would have: released, carried on by a writer goroutine
// (what the kernel did not take), or closed (a failed send).
func (fs *flushState) sendStaged() {
	if len(fs.staged) == 0 {
		return
	}
	fs.holdFrom(0)
	submitted, err := fs.submitted, fs.ringErr
	fs.submitted, fs.ringErr = 0, nil
	if err != nil {
		fs.logger.Warn("socket writes go out one write(2) each from now on: the send ring failed", "err", err)
		fs.close()
	}
	for i := range fs.staged {
		st := &fs.staged[i]
		b := st.c.out
		p := fs.sbuf[st.off:st.end]
		var err error
		switch {
		case !st.open:
			err = net.ErrClosed // closed before the send
		case st.complete && st.res >= 0:
			err = b.keepLocked(p[st.res:])
		case st.complete && syscall.Errno(-st.res) == syscall.EAGAIN:
			err = b.keepLocked(p)
		case st.complete:
			err = syscall.Errno(-st.res)
		case st.order >= submitted:
			// Withdrawn: never sent. Written now, as without a ring.
			var n int
			if n, err = b.now.write(p); err == nil {
				err = b.keepLocked(p[n:])
			}
		default:
			// Taken by the kernel but its outcome unknown: rather than
			// risk sending it twice, the socket closes and its client
			// resumes from its last seq.
			err = net.ErrClosed
		}
		b.mu.Unlock()
		st.c.send.directDone(st.c.afterDirect(err))
	}
	clear(fs.staged)
	fs.staged = fs.staged[:0]
	if cap(fs.sbuf) <= maxScratch {
		fs.sbuf = fs.sbuf[:0]
	} else {
		fs.sbuf = nil
	}
}

// holdFrom holds the descriptors of staged[i:] open, each inside the one
// before it (RawConn.Control keeps a descriptor from being closed and
// reused while its callback runs), and hands the sends to the ring from
// the innermost: the kernel reads each descriptor during the enter. A
// socket closed meanwhile is left out. The enter's outcome is left in
// fs.submitted and fs.ringErr.
func (fs *flushState) holdFrom(i int) {
	for ; i < len(fs.staged); i++ {
		fs.holdAt = i
		if fs.staged[i].c.out.now.raw.Control(fs.holdCall) == nil {
			return // the rest were held and sent inside
		}
	}
	fs.submitted, fs.ringErr = fs.submit()
}

// holdDescriptor is holdFrom's RawConn.Control callback: with fd held,
// the rest are held and the sends handed over.
func (fs *flushState) holdDescriptor(fd uintptr) {
	i := fs.holdAt
	fs.staged[i].fd, fs.staged[i].open = fd, true
	fs.holdFrom(i + 1)
}

// submit hands every held send to the ring and waits for them.
func (fs *flushState) submit() (int, error) {
	n := 0
	for i := range fs.staged {
		st := &fs.staged[i]
		if !st.open {
			continue
		}
		if st.off == st.end {
			st.complete = true // nothing to send
			continue
		}
		st.order = n
		n++
		fs.ring.send(st.fd, fs.sbuf[st.off:st.end], uint64(i))
	}
	if n == 0 {
		return 0, nil
	}
	return fs.ring.enter(n, fs.done)
}

// complete records a send's result (the ring's done callback).
func (fs *flushState) complete(tag uint64, res int32) {
	st := &fs.staged[tag]
	st.complete, st.res = true, res
}
