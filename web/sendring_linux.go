package web

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"taskstream/internal/uring"
)

// sendRing is one flusher goroutine's io_uring: the sends of many
// sockets' batches go to the kernel in one io_uring_enter(2) instead of
// one write(2) each. On this project's 2-core guest a system call's entry
// and exit cost about as much as the loopback send it carries: in a
// fan-out of 1,000 110-byte sends the writer's CPU per send was 5.7 µs
// with write(2) and 3.2-3.4 µs in submissions of 32 or 64 (BENCHMARKS.md
// §0). Every send carries MSG_DONTWAIT, so it completes within the enter
// that submitted it: what the socket's buffer cannot take comes back as
// a short count or EAGAIN, as from a non-blocking write(2), and the
// caller finishes it the usual way.
//
// A sendRing is used by one goroutine at a time and never shared.
type sendRing struct {
	r *uring.Ring
}

// errNoSendRing: the kernel gave no io_uring (too old, turned off with
// kernel.io_uring_disabled, or refused by a seccomp filter, as container
// runtimes' default profiles do); the flusher writes each socket with
// write(2).
var errNoSendRing = errors.New("web: no io_uring for socket sends")

// newSendRing sets up a ring for at most entries sends per enter
// (flushChunk). It returns an error wrapping errNoSendRing when the
// kernel has none to give.
func newSendRing(entries uint32) (*sendRing, error) {
	r, err := uring.New(entries, uring.Options{})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoSendRing, err)
	}
	return &sendRing{r: r}, nil
}

// send queues a send of p (non-empty, kept unchanged until enter
// returns) on descriptor fd, tagged with tag. At most the entries asked
// of newSendRing may be queued between enters (a flusher's chunk).
func (r *sendRing) send(fd uintptr, p []byte, tag uint64) {
	queued := r.r.Queue(uring.SQE{
		Opcode:   uring.OpSend,
		Fd:       int32(fd),
		Addr:     uint64(uintptr(unsafe.Pointer(&p[0]))),
		Len:      uint32(len(p)),
		OpFlags:  unix.MSG_DONTWAIT | unix.MSG_NOSIGNAL,
		UserData: tag,
	})
	if !queued {
		// More than a chunk between enters: enter would wait for
		// completions of sends that were never queued.
		panic("web: more sends queued than the send ring holds")
	}
}

// enter submits the n sends queued since the last enter and waits for
// their completions (each is immediate: MSG_DONTWAIT), handing each to
// done with its tag and its result: bytes sent, or a negated errno. It
// returns how many the kernel took, in the order they were queued, and
// an error when that is fewer than n (the others were withdrawn: not
// sent, no call to done) or when it could not wait for every completion
// of those it took (their outcome unknown). The descriptors and buffers
// must stay as they are until it returns.
func (r *sendRing) enter(n int, done func(tag uint64, res int32)) (int, error) {
	submitted := 0
	var err error
	for submitted < n {
		// A raw call (uring.Ring.Enter): the sends never block, so the
		// runtime need not hand this goroutine's P to another thread
		// meanwhile. The kernel returns how many it took; an error only
		// when it took none in this call.
		got, errno := r.r.Enter(uint32(n-submitted), uring.EnterGetEvents)
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 {
			err = fmt.Errorf("web: io_uring_enter: %w", errno)
			break
		}
		submitted += got
	}
	if submitted < n {
		r.r.Withdraw()
	}
	cqe := func(c uring.CQE) { done(c.UserData, c.Res) }
	for reaped := 0; reaped < submitted; {
		if got := r.r.Reap(cqe); got > 0 {
			reaped += got
			continue
		}
		// The wait was cut short (a signal: the runtime preempts with
		// SIGURG): wait for the rest.
		if _, errno := r.r.Enter(uint32(submitted-reaped), uring.EnterGetEvents); errno != 0 && errno != syscall.EINTR {
			return submitted, errors.Join(err, fmt.Errorf("web: io_uring_enter: %w", errno))
		}
	}
	return submitted, err
}

// close lets the ring go.
func (r *sendRing) close() { r.r.Close() }
