package web

import (
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
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
	fd int

	sqHead, sqTail *uint32
	sqMask         uint32
	sqes           []ringSQE
	tail           uint32 // the next SQE to fill; published to *sqTail by enter

	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           []ringCQE

	rings, sqeMem []byte // the mappings, for close
}

// The kernel's ABI (include/uapi/linux/io_uring.h).
const (
	ioUringOffSQRing  = 0
	ioUringOffSQEs    = 0x10000000
	ioUringOpSend     = 26
	ioUringGetEvents  = 1 << 0
	ioUringFeatSingle = 1 << 0 // IORING_FEAT_SINGLE_MMAP: one mapping holds both rings
)

type ringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	addr3       uint64
	_           uint64
}

type ringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

type ringSQOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type ringCQOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type ringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  ringSQOffsets
	cqOff                                                                  ringCQOffsets
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
	var p ringParams
	fd, _, errno := syscall.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("%w: io_uring_setup: %w", errNoSendRing, errno)
	}
	r := &sendRing{fd: int(fd)}
	if p.features&ioUringFeatSingle == 0 {
		r.close()
		return nil, fmt.Errorf("%w: the kernel maps the rings apart (before 5.4)", errNoSendRing)
	}
	size := max(p.sqOff.array+p.sqEntries*4, p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(ringCQE{})))
	var err error
	if r.rings, err = unix.Mmap(r.fd, ioUringOffSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.close()
		return nil, fmt.Errorf("%w: mmap the rings: %w", errNoSendRing, err)
	}
	if r.sqeMem, err = unix.Mmap(r.fd, ioUringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(ringSQE{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.close()
		return nil, fmt.Errorf("%w: mmap the submissions: %w", errNoSendRing, err)
	}
	base := unsafe.Pointer(&r.rings[0])
	r.sqHead = (*uint32)(unsafe.Add(base, p.sqOff.head))
	r.sqTail = (*uint32)(unsafe.Add(base, p.sqOff.tail))
	r.sqMask = *(*uint32)(unsafe.Add(base, p.sqOff.ringMask))
	// The index array maps ring slots to SQEs one to one, once.
	array := unsafe.Slice((*uint32)(unsafe.Add(base, p.sqOff.array)), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.sqes = unsafe.Slice((*ringSQE)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.tail = atomic.LoadUint32(r.sqTail)
	r.cqHead = (*uint32)(unsafe.Add(base, p.cqOff.head))
	r.cqTail = (*uint32)(unsafe.Add(base, p.cqOff.tail))
	r.cqMask = *(*uint32)(unsafe.Add(base, p.cqOff.ringMask))
	r.cqes = unsafe.Slice((*ringCQE)(unsafe.Add(base, p.cqOff.cqes)), p.cqEntries)
	return r, nil
}

// send queues a send of p (non-empty, kept unchanged until enter
// returns) on descriptor fd, tagged with tag. At most the entries asked
// of newSendRing may be queued between enters (a flusher's chunk).
func (r *sendRing) send(fd uintptr, p []byte, tag uint64) {
	r.sqes[r.tail&r.sqMask] = ringSQE{
		opcode:   ioUringOpSend,
		fd:       int32(fd),
		addr:     uint64(uintptr(unsafe.Pointer(&p[0]))),
		len:      uint32(len(p)),
		opFlags:  unix.MSG_DONTWAIT | unix.MSG_NOSIGNAL,
		userData: tag,
	}
	r.tail++
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
	start := r.tail - uint32(n)
	atomic.StoreUint32(r.sqTail, r.tail)
	submitted := 0
	var err error
	for submitted < n {
		// A raw call: the sends never block, so the runtime need not
		// hand this goroutine's P to another thread meanwhile. The
		// kernel returns how many it took; an error only when it took
		// none in this call.
		got, _, errno := syscall.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n-submitted), uintptr(n-submitted), ioUringGetEvents, 0, 0)
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 {
			err = fmt.Errorf("web: io_uring_enter: %w", errno)
			break
		}
		submitted += int(got)
	}
	if submitted < n {
		r.tail = start + uint32(submitted)
		atomic.StoreUint32(r.sqTail, r.tail)
	}
	for reaped := 0; reaped < submitted; {
		head, tail := atomic.LoadUint32(r.cqHead), atomic.LoadUint32(r.cqTail)
		if head == tail {
			// The wait was cut short (a signal: the runtime preempts
			// with SIGURG): wait for the rest.
			_, _, errno := syscall.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 0, uintptr(submitted-reaped), ioUringGetEvents, 0, 0)
			if errno != 0 && errno != syscall.EINTR {
				return submitted, errors.Join(err, fmt.Errorf("web: io_uring_enter: %w", errno))
			}
			continue
		}
		for ; head != tail; head++ {
			c := r.cqes[head&r.cqMask]
			done(c.userData, c.res)
			reaped++
		}
		atomic.StoreUint32(r.cqHead, head)
	}
	return submitted, err
}

// close lets the ring go.
func (r *sendRing) close() {
	if r.sqeMem != nil {
		_ = unix.Munmap(r.sqeMem)
		r.sqeMem = nil
	}
	if r.rings != nil {
		_ = unix.Munmap(r.rings)
		r.rings = nil
	}
	_ = syscall.Close(r.fd)
}
