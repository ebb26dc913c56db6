package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"taskstream/internal/uring"
)

// recvRing receives for many sockets through one io_uring: a goroutine,
// locked to its thread, keeps a multishot receive armed on each socket
// and parses what each completion brings. With read(2) a delivery cost
// the load client a system call, a wake-up of the socket's goroutine by
// the runtime's poller and a trip through the scheduler: about 6 µs of
// CPU on this 2-core guest, 60 % of it the read(2) (BENCHMARKS.md §0). In
// the ring, the kernel runs every receive that became ready inside the
// thread's one waiting io_uring_enter(2) (IORING_SETUP_DEFER_TASKRUN),
// into buffers it picks from a ring of provided buffers, and the thread
// reads the completions from memory.
//
// The socket's goroutine waits in read while the ring owns the socket's
// reader: its callbacks run on the ring's goroutine, one socket at a
// time. The connection must stay open until read returns (the ring holds
// the descriptor's file while its receive is armed; a close by another
// goroutine would not end the connection), so a reader that must stop
// early cancels read's context instead of closing the socket.
type recvRing struct {
	mu       sync.Mutex
	requests []ringRequest // attaches and cancels for the ring's goroutine
	stopping bool
	wake     int // eventfd: a request is waiting

	started chan error    // the setup's outcome, once
	exited  chan struct{} // closed when the goroutine ended

	// The ring goroutine's own.
	ring   *uring.Ring
	bufs   *uring.Buffers
	socks  map[uint64]*ringSock
	nextID uint64
	woken  bool // the eventfd fired: read it and take the requests
	rearms int  // receives armed again after they ran out of buffers or stopped after data
}

// ringRequest asks the ring to start receiving for rs, or (cancel) to
// stop.
type ringRequest struct {
	rs     *ringSock
	cancel bool
}

// ringSock is one socket in the ring. Its fields belong to the ring's
// goroutine from the attach request until the result is sent.
type ringSock struct {
	fd     int
	rd     *wsReader
	read   *atomic.Int64
	id     uint64
	armed  bool  // a multishot receive is in the kernel
	ending bool  // its cancel was submitted
	err    error // why the socket ends, once known
	result chan error
}

// Ring sizes: submissions per enter before the queue must be flushed;
// completions the kernel can hold before it keeps the overflow aside
// (a fan-out's burst of one receive per socket fits); provided buffers
// (all the receives the kernel can complete before the goroutine
// recycles any) of recvBufSize bytes each.
const (
	recvRingEntries = 256
	recvRingCQ      = 8192
	recvBufCount    = 1024
	recvBufSize     = 16 << 10
)

// User data of the ring's own requests; a socket's is its id, from
// firstSockID.
const (
	tagWake     = 1
	tagCancel   = 2
	firstSockID = 16
)

// errRingClosed: the ring stopped before the socket ended.
var errRingClosed = errors.New("loadgen: receive ring closed")

// newRecvRing starts a ring's goroutine, with buffers provided buffers
// (a power of two; 0: recvBufCount), and waits for its setup. The
// error wraps uring.ErrUnavailable when the kernel refuses what it needs
// (io_uring, or Linux 6.1's deferred task running, which multishot
// receives with provided buffers came before).
func newRecvRing(buffers int) (*recvRing, error) {
	if buffers == 0 {
		buffers = recvBufCount
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("loadgen: eventfd: %w", err)
	}
	rr := &recvRing{wake: wake, started: make(chan error, 1), exited: make(chan struct{}),
		socks: map[uint64]*ringSock{}, nextID: firstSockID}
	go rr.run(buffers)
	if err := <-rr.started; err != nil {
		<-rr.exited
		return nil, err
	}
	return rr, nil
}

// run is the ring's goroutine. The ring is made here: with
// IORING_SETUP_SINGLE_ISSUER only the thread that made it may enter it,
// so the goroutine keeps its thread to the end (and the thread exits
// with it).
func (rr *recvRing) run(buffers int) {
	defer close(rr.exited)
	defer unix.Close(rr.wake)
	runtime.LockOSThread()
	ring, err := uring.New(recvRingEntries, uring.Options{CQEntries: recvRingCQ,
		Flags: uring.SetupCQSize | uring.SetupSingleIssuer | uring.SetupDeferTaskrun})
	if err != nil {
		rr.started <- err
		return
	}
	rr.ring = ring
	defer ring.Close()
	if rr.bufs, err = ring.RegisterBuffers(1, buffers, recvBufSize); err != nil {
		rr.started <- err
		return
	}
	rr.armWake()
	rr.started <- nil
	for {
		if _, errno := ring.EnterBlocking(1, uring.EnterGetEvents); errno != 0 && !retryEnter(errno) {
			// Nothing here can recover a ring the kernel refuses to
			// enter: end every socket with the error.
			rr.endAll(fmt.Errorf("loadgen: io_uring_enter: %w", errno))
			return
		}
		ring.Reap(rr.complete)
		if rr.woken && rr.takeRequests() {
			rr.endAll(errRingClosed)
			return
		}
	}
}

// retryEnter: an enter that did nothing and is tried again. EINTR: a
// signal (the runtime's preemption); EBUSY: the completion queue's
// overflow is being flushed; EAGAIN: the kernel could not allocate a
// request this time.
func retryEnter(errno syscall.Errno) bool {
	return errno == syscall.EINTR || errno == syscall.EBUSY || errno == syscall.EAGAIN
}

// armWake arms a multishot poll of the eventfd that read's requests
// write to.
func (rr *recvRing) armWake() {
	rr.queue(uring.SQE{Opcode: uring.OpPollAdd, Fd: int32(rr.wake), Len: uring.PollAddMulti, OpFlags: pollIn, UserData: tagWake})
}

// pollIn is POLLIN as the kernel reads poll32_events: on a big-endian
// machine it swaps the field's 16-bit halves.
var pollIn = func() uint32 {
	if binary.NativeEndian.Uint16([]byte{0, 1}) == 1 {
		return unix.POLLIN<<16 | unix.POLLIN>>16
	}
	return unix.POLLIN
}()

// queue adds e to the next enter, submitting what is queued first when
// the submission queue is full.
func (rr *recvRing) queue(e uring.SQE) {
	for !rr.ring.Queue(e) {
		if _, errno := rr.ring.EnterBlocking(0, 0); errno != 0 && !retryEnter(errno) {
			panic(fmt.Sprintf("loadgen: io_uring_enter to submit: %v", errno)) // a ring it just entered
		}
	}
}

// arm starts (again) a multishot receive on rs's socket.
func (rr *recvRing) arm(rs *ringSock) {
	rr.queue(uring.SQE{Opcode: uring.OpRecv, Fd: int32(rs.fd), IOPrio: uring.RecvMultishot,
		Flags: uring.SQEBufferSelect, BufIndex: rr.bufs.Group(), UserData: rs.id})
	rs.armed = true
}

// complete handles one completion.
func (rr *recvRing) complete(c uring.CQE) {
	switch c.UserData {
	case tagWake:
		rr.woken = true
		if !c.More() {
			rr.armWake()
		}
		return
	case tagCancel:
		return // the receive's own completion says how it ended
	}
	rs := rr.socks[c.UserData]
	if rs != nil && !c.More() {
		rs.armed = false // so that a failing feed below cancels nothing
	}
	if id, ok := c.Buffer(); ok {
		if rs != nil && rs.err == nil && c.Res > 0 {
			rs.read.Add(int64(c.Res))
			if err := rs.rd.feedBytes(rr.bufs.Bytes(id, int(c.Res)), time.Now()); err != nil {
				rr.fail(rs, err)
			} else {
				rs.rd.release()
			}
		}
		rr.bufs.Recycle(id)
	}
	if rs == nil || c.More() || rr.socks[rs.id] != rs {
		return // goes on, or the failed feed above already finished rs
	}
	// The receive ended: by a cancel, at the end of the stream, on an
	// error, or because the buffers ran out (ENOBUFS) or the kernel
	// stopped it after data: those two are armed again.
	switch {
	case rs.err != nil:
	case c.Res == 0:
		rs.err = io.EOF
	case c.Res == -int32(syscall.ENOBUFS) || c.Res > 0:
		rr.rearms++
		rr.arm(rs)
		return
	default:
		rs.err = syscall.Errno(-c.Res)
	}
	rr.finish(rs)
}

// fail ends rs with err: its receive is cancelled, and its result sent
// when the kernel reports the receive ended.
func (rr *recvRing) fail(rs *ringSock, err error) {
	if rs.err == nil {
		rs.err = err
	}
	if !rs.armed {
		rr.finish(rs)
		return
	}
	if !rs.ending {
		rs.ending = true
		rr.queue(uring.SQE{Opcode: uring.OpAsyncCancel, Fd: -1, Addr: rs.id, UserData: tagCancel})
	}
}

// finish sends rs's result: the socket is the caller's again.
func (rr *recvRing) finish(rs *ringSock) {
	delete(rr.socks, rs.id)
	rs.rd.release()
	rs.result <- rs.err
}

// takeRequests resets the eventfd and takes the requests waiting; it
// reports whether the ring is stopping.
func (rr *recvRing) takeRequests() bool {
	rr.woken = false
	var n [8]byte
	_, _ = unix.Read(rr.wake, n[:]) // EAGAIN: already reset
	rr.mu.Lock()
	reqs, stopping := rr.requests, rr.stopping
	rr.requests = nil
	rr.mu.Unlock()
	for _, req := range reqs {
		rs := req.rs
		switch {
		case !req.cancel:
			rs.id = rr.nextID
			rr.nextID++
			rr.socks[rs.id] = rs
			rr.arm(rs)
		case rr.socks[rs.id] == rs:
			rr.fail(rs, context.Canceled)
		}
	}
	return stopping
}

// endAll ends every socket still in the ring with err, and lets the ring
// go. The buffers are unmapped only when no receive was armed (the usual
// end: every socket's reader returned before the swarm closed its
// rings); a receive cut off by the ring's close could still be writing
// into them, so then they stay mapped until the process exits.
func (rr *recvRing) endAll(err error) {
	armed := false
	for _, rs := range rr.socks {
		armed = armed || rs.armed
	}
	rr.ring.Close() // the kernel cancels every receive
	if !armed {
		rr.bufs.Free()
	}
	for _, rs := range rr.socks {
		rs.armed = false
		if rs.err == nil {
			rs.err = err
		}
		rr.finish(rs)
	}
	rr.mu.Lock()
	rr.stopping = true
	reqs := rr.requests
	rr.requests = nil
	rr.mu.Unlock()
	for _, req := range reqs {
		if !req.cancel {
			req.rs.result <- err
		}
	}
}

// request hands req to the ring's goroutine; false when the ring stopped.
// The eventfd is written under the lock: once the ring stopped it is
// closed.
func (rr *recvRing) request(req ringRequest) bool {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if rr.stopping {
		return false
	}
	rr.requests = append(rr.requests, req)
	rr.poke()
	return true
}

// poke wakes the ring's goroutine (rr.mu held, the ring not stopped).
func (rr *recvRing) poke() {
	one := [8]byte{1}
	_, _ = unix.Write(rr.wake, one[:]) // EAGAIN only at 2^64-2 unread writes
}

// read feeds rd from c's socket until the socket ends, rd stops or ctx
// ends (then with ctx's error), counting the bytes into read. It takes
// the socket: c is closed at once and the socket (a duplicate of its
// descriptor) when read returns. Closing c takes the socket out of the
// runtime's poller, which would otherwise wake a thread for every
// arrival with nothing to do (13 % of the client's CPU in the latency
// scenario); rd's pongs and close reply go out on the duplicate.
func (rr *recvRing) read(ctx context.Context, c net.Conn, rd *wsReader, read *atomic.Int64) error {
	c = underlying(c)
	sc, ok := c.(syscall.Conn)
	if !ok {
		return errors.New("loadgen: the receive ring needs a socket with a descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return err
	}
	if derr != nil {
		return fmt.Errorf("loadgen: dup the socket: %w", derr)
	}
	defer unix.Close(fd)
	_ = c.Close()
	rd.control = func(messageType int, data []byte) { writeControlFd(fd, messageType, data) }
	rs := &ringSock{fd: fd, rd: rd, read: read, result: make(chan error, 1)}
	if !rr.request(ringRequest{rs: rs}) {
		return errRingClosed
	}
	select {
	case err := <-rs.result:
		return err
	case <-ctx.Done():
		rr.request(ringRequest{rs: rs, cancel: true})
		err := <-rs.result
		if errors.Is(err, context.Canceled) {
			err = ctx.Err()
		}
		return err
	}
}

// writeControlFd writes a control frame (a pong, the close reply) on a
// socket's descriptor, masked as a client's frames must be. The socket is
// non-blocking, and this runs on a ring's thread, which must not wait
// for one socket: a frame its full send buffer cannot take at all is
// dropped (the server's ping timeout or close handshake tells); one it
// took only in part shuts the socket for writing, since half a frame
// would corrupt every frame after it (the server sees the connection
// end).
func writeControlFd(fd int, messageType int, data []byte) {
	key := rand.Uint32()
	b := make([]byte, 0, 6+len(data)) // control payloads are at most 125 bytes
	b = append(b, 0x80|byte(messageType), 0x80|byte(len(data)), byte(key>>24), byte(key>>16), byte(key>>8), byte(key))
	for i, c := range data {
		b = append(b, c^b[2+i%4])
	}
	whole := len(b)
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			if len(b) < whole {
				_ = unix.Shutdown(fd, unix.SHUT_WR)
			}
			return
		}
		b = b[n:]
	}
}

// close stops the ring's goroutine; sockets still in it end with
// errRingClosed. Idempotent.
func (rr *recvRing) close() {
	rr.mu.Lock()
	if !rr.stopping {
		rr.stopping = true
		rr.poke()
	}
	rr.mu.Unlock()
	<-rr.exited
}
