//go:build linux

package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"
)

// The subscribers' reads on Linux: a few read loops, each an OS thread
// waiting in epoll_wait on many sockets, instead of a goroutine per
// socket. With a goroutine per socket every message woke all 1,000 of
// them through Go's netpoller and scheduler (≈ 9 µs of load-client CPU a
// delivery, on the cores the measured server needs too). A loop pays one
// epoll_wait for all the sockets that became readable and one read(2)
// per socket, then parses the frames in place with the same wsReader and
// stamps each message with the time the read that completed it returned,
// as the goroutine reader does. Both targets are read by this same code.
//
// A socket is handed to a loop after its handshake (and taskstream's
// subscribe) went through gorilla: the loop takes a duplicate of its
// descriptor and closes gorilla's connection, so the Go runtime's poller
// forgets the socket (no second wake-up per message) and the loop is the
// descriptor's only owner: it alone reads, writes and closes it, so a
// closed descriptor's number, reused by a new socket, is never read by
// mistake. The loop answers pings and the server's close itself, with
// masked control frames written straight to the descriptor.

// loopEvents is how many ready sockets one epoll_wait returns at most;
// the others come with the next one.
const loopEvents = 512

// maxControlBacklog bounds the control frames (pongs, the close reply) a
// socket holds while its send buffer is full: a server that sends pings
// and never reads the pongs is broken, and the socket ends.
const maxControlBacklog = 1 << 20

// wakeSlot is the epoll data of a loop's eventfd.
const wakeSlot = -1

// errLoopClosed ends the sockets of a read loop that was closed.
var errLoopClosed = errors.New("loadgen: read loop closed")

// readLoops are the read loops of a swarm; read spreads sockets over them.
type readLoops struct {
	loops []*readLoop
	next  atomic.Uint32
}

// newReadLoops starts n read loops; Close stops them.
func newReadLoops(n int) (*readLoops, error) {
	if n < 1 {
		return nil, fmt.Errorf("loadgen: %d read loops", n)
	}
	ls := &readLoops{}
	for range n {
		l, err := newReadLoop()
		if err != nil {
			ls.Close()
			return nil, err
		}
		ls.loops = append(ls.loops, l)
	}
	return ls, nil
}

// Close stops every loop; the sockets still on them end with
// errLoopClosed.
func (ls *readLoops) Close() {
	for _, l := range ls.loops {
		l.close()
	}
}

// read is readMessages on one of the loops: it hands s's socket to a loop
// and returns when the socket ended (the server closed it, it was lost,
// fn said stop, or ctx ended: net.ErrClosed), with what readMessages
// would return. s's connection is closed when it returns.
func (ls *readLoops) read(ctx context.Context, s *sock, fn func(msg []byte, at time.Time) bool) error {
	l := ls.loops[int(ls.next.Add(1)%uint32(len(ls.loops)))]
	return l.read(ctx, s, fn)
}

// readLoop is one loop: its goroutine (run) owns epfd, the sockets'
// descriptors and every loopConn's plain fields once added.
type readLoop struct {
	epfd int
	wake int           // an eventfd: other goroutines' requests (cancels, close)
	done chan struct{} // closed when run returned

	mu      sync.Mutex
	conns   []*loopConn // by slot (the epoll data); nil: free
	free    []int32
	gen     uint32      // the last generation given out: tells a slot's sockets apart
	cancels []*loopConn // sockets whose context ended
	stop    bool        // closed or failed: no new sockets, no more wake writes
}

// loopConn is one socket on a loop.
type loopConn struct {
	fd        int
	slot, gen int32
	s         *sock
	rd        *wsReader
	out       []byte // control frames not written yet: the send buffer was full
	polledOut bool   // registered for EPOLLOUT, to write out
	ended     bool   // the loop ended it (the loop's goroutine only)
	res       chan error
}

func newReadLoop() (*readLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeSlot}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wake)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	l := &readLoop{epfd: epfd, wake: wake, done: make(chan struct{})}
	go l.run()
	return l, nil
}

// close stops the loop and waits for it.
func (l *readLoop) close() {
	l.mu.Lock()
	if !l.stop {
		l.stop = true
		l.wakeUp()
	}
	l.mu.Unlock()
	<-l.done
}

// wakeUp makes the loop's epoll_wait return; l.mu held and the loop not
// stopped (its eventfd is open).
func (l *readLoop) wakeUp() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	// EAGAIN only when the counter is at its maximum: a wake-up is due
	// anyway.
	_, _ = unix.Write(l.wake, one[:])
}

func (l *readLoop) read(ctx context.Context, s *sock, fn func(msg []byte, at time.Time) bool) error {
	fd, err := takeFD(s.ws)
	if err != nil {
		return err
	}
	c := &loopConn{fd: fd, s: s, res: make(chan error, 1)}
	c.rd = newWSReader(c.control, fn)
	// Frames that came with the handshake first, here: the loop does not
	// have the socket yet.
	pending := s.pending
	s.pending = nil
	if err := c.rd.feedBytes(pending, time.Now()); err != nil {
		_ = c.flush()
		_ = unix.Close(fd)
		return stopIsNil(err)
	}
	c.rd.release()
	if err := l.add(c); err != nil {
		_ = unix.Close(fd)
		return err
	}
	stop := context.AfterFunc(ctx, func() { l.cancel(c) })
	defer stop()
	return stopIsNil(<-c.res)
}

// takeFD duplicates ws's descriptor and closes ws: the runtime's poller
// lets go of the socket, which stays open through the duplicate (close(2)
// of one descriptor does not end a socket another one refers to). The
// duplicate shares the socket's non-blocking mode.
func takeFD(ws *websocket.Conn) (int, error) {
	defer ws.Close()
	sc, ok := underlying(ws.NetConn()).(syscall.Conn)
	if !ok {
		return -1, errors.New("loadgen: a connection without a descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, dupErr := -1, error(nil)
	if err := raw.Control(func(f uintptr) { fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, os.NewSyscallError("fcntl", dupErr)
	}
	return fd, nil
}

// add registers c with the loop.
func (l *readLoop) add(c *loopConn) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop {
		return errLoopClosed
	}
	var slot int32
	if n := len(l.free); n > 0 {
		slot, l.free = l.free[n-1], l.free[:n-1]
	} else {
		slot = int32(len(l.conns))
		l.conns = append(l.conns, nil)
	}
	l.gen++
	c.slot, c.gen = slot, int32(l.gen)
	c.polledOut = len(c.out) > 0
	ev := unix.EpollEvent{Events: c.events(), Fd: c.slot, Pad: c.gen}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		l.free = append(l.free, slot)
		return os.NewSyscallError("epoll_ctl", err)
	}
	l.conns[slot] = c
	return nil
}

// events is what the loop waits for on c: level-triggered, so one read
// per readiness suffices (what it leaves is reported again).
func (c *loopConn) events() uint32 {
	if c.polledOut {
		return unix.EPOLLIN | unix.EPOLLOUT
	}
	return unix.EPOLLIN
}

// cancel asks the loop to end c (its context ended), if it is still on
// the loop.
func (l *readLoop) cancel(c *loopConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop || int(c.slot) >= len(l.conns) || l.conns[c.slot] != c {
		return
	}
	l.cancels = append(l.cancels, c)
	l.wakeUp()
}

// run is the loop: wait for ready sockets, read each once, repeat. It
// stays on one OS thread: it blocks only in epoll_wait, never on a Go
// channel or lock held for long, so the thread is not handed around.
func (l *readLoop) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(l.done)
	events := make([]unix.EpollEvent, loopEvents)
	ready := make([]*loopConn, loopEvents)
	for {
		n, err := unix.EpollWait(l.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			l.shutdown(os.NewSyscallError("epoll_wait", err))
			return
		}
		// One lock for the batch: which socket each event is for (a
		// socket ended and its slot reused since is told by gen).
		woken := false
		l.mu.Lock()
		for i, ev := range events[:n] {
			ready[i] = nil
			switch {
			case ev.Fd == wakeSlot:
				woken = true
			case int(ev.Fd) < len(l.conns) && l.conns[ev.Fd] != nil && l.conns[ev.Fd].gen == ev.Pad:
				ready[i] = l.conns[ev.Fd]
			}
		}
		var cancels []*loopConn
		stop := false
		if woken {
			var b [8]byte
			_, _ = unix.Read(l.wake, b[:])
			cancels, l.cancels, stop = l.cancels, nil, l.stop
		}
		l.mu.Unlock()
		if stop {
			l.shutdown(errLoopClosed)
			return
		}
		for _, c := range cancels {
			if !c.ended {
				l.end(c, net.ErrClosed)
			}
		}
		for i, ev := range events[:n] {
			if c := ready[i]; c != nil && !c.ended {
				l.serve(c, ev.Events)
			}
		}
	}
}

// serve reads c once (it was reported readable, hung up or failed) and
// writes its control frames if the socket takes them again.
func (l *readLoop) serve(c *loopConn, events uint32) {
	if events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		p := c.rd.space()
		n, err := unix.Read(c.fd, p)
		for err == unix.EINTR {
			n, err = unix.Read(c.fd, p)
		}
		at := time.Now()
		switch {
		case err == unix.EAGAIN:
			c.rd.release()
		case err != nil:
			l.end(c, os.NewSyscallError("read", err))
			return
		case n == 0:
			l.end(c, io.EOF)
			return
		default:
			c.s.countRead(n)
			if err := c.rd.feed(n, at); err != nil {
				l.end(c, err)
				return
			}
			c.rd.release()
		}
	}
	if len(c.out) > 0 {
		if err := c.flush(); err != nil {
			l.end(c, err)
			return
		}
		if len(c.out) > maxControlBacklog {
			l.end(c, fmt.Errorf("loadgen: %d bytes of control frames the server does not take", len(c.out)))
			return
		}
	}
	if want := len(c.out) > 0; want != c.polledOut {
		c.polledOut = want
		ev := unix.EpollEvent{Events: c.events(), Fd: c.slot, Pad: c.gen}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, c.fd, &ev); err != nil {
			l.end(c, os.NewSyscallError("epoll_ctl", err))
		}
	}
}

// end closes c's socket and hands err to its read. The close reply, if
// still queued, gets one more try first (as gorilla's reader closes the
// connection right after writing it).
func (l *readLoop) end(c *loopConn, err error) {
	c.ended = true
	_ = c.flush()
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	_ = unix.Close(c.fd)
	l.mu.Lock()
	if int(c.slot) < len(l.conns) && l.conns[c.slot] == c {
		l.conns[c.slot] = nil
		l.free = append(l.free, c.slot)
	}
	l.mu.Unlock()
	c.res <- err
}

// shutdown ends every socket still on the loop with err and closes the
// loop's descriptors. stop is set first, under mu, so no other goroutine
// writes to the eventfd once it is closed.
func (l *readLoop) shutdown(err error) {
	l.mu.Lock()
	l.stop = true
	conns := l.conns
	l.mu.Unlock()
	for _, c := range conns {
		if c != nil && !c.ended {
			l.end(c, err)
		}
	}
	_ = unix.Close(l.epfd)
	_ = unix.Close(l.wake)
}

// control is c's wsReader control: the pong or the close reply, masked
// as a client's frames must be, written now or, when the send buffer is
// full, once the socket takes it (serve).
func (c *loopConn) control(messageType int, data []byte) {
	c.out = appendControlFrame(c.out, messageType, data, rand.Uint32())
	// A failed write shows as the read error that follows, as with
	// gorilla's WriteControl.
	_ = c.flush()
}

// flush writes what it can of c.out.
func (c *loopConn) flush() error {
	for len(c.out) > 0 {
		n, err := unix.Write(c.fd, c.out)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return nil
		case err != nil:
			return os.NewSyscallError("write", err)
		}
		c.out = c.out[:copy(c.out, c.out[n:])]
	}
	return nil
}

// appendControlFrame appends a client's control frame (RFC 6455 5.5: FIN,
// at most 125 bytes of payload, masked with key). The key need not be
// unpredictable here: masking defends proxies against a browser's
// scripts, and this client talks to loopback servers only.
func appendControlFrame(dst []byte, opcode int, payload []byte, key uint32) []byte {
	dst = append(dst, 0x80|byte(opcode), 0x80|byte(len(payload)))
	dst = binary.BigEndian.AppendUint32(dst, key)
	var k [4]byte
	binary.BigEndian.PutUint32(k[:], key)
	for i, b := range payload {
		dst = append(dst, b^k[i%4])
	}
	return dst
}
