package uring

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel's ABI (include/uapi/linux/io_uring.h), the part used here.
const (
	OpPollAdd     = 6  // IORING_OP_POLL_ADD
	OpAsyncCancel = 14 // IORING_OP_ASYNC_CANCEL
	OpSend        = 26 // IORING_OP_SEND
	OpRecv        = 27 // IORING_OP_RECV

	EnterGetEvents = 1 << 0 // IORING_ENTER_GETEVENTS: wait for min_complete completions

	SetupCQSize       = 1 << 3  // IORING_SETUP_CQSIZE: Options.CQEntries holds
	SetupCoopTaskrun  = 1 << 8  // IORING_SETUP_COOP_TASKRUN (5.19)
	SetupSingleIssuer = 1 << 12 // IORING_SETUP_SINGLE_ISSUER (6.0): only the creating thread submits
	SetupDeferTaskrun = 1 << 13 // IORING_SETUP_DEFER_TASKRUN (6.1): completions' work runs only inside a waiting enter

	SQEBufferSelect = 1 << 5 // IOSQE_BUFFER_SELECT: a receive takes a buffer of its group

	RecvMultishot = 1 << 1 // IORING_RECV_MULTISHOT, in SQE.IOPrio (6.0)
	PollAddMulti  = 1 << 0 // IORING_POLL_ADD_MULTI, in SQE.Len

	CQEFBuffer     = 1 << 0 // IORING_CQE_F_BUFFER: the upper 16 bits of Flags name the buffer used
	CQEFMore       = 1 << 1 // IORING_CQE_F_MORE: the request goes on (multishot)
	CQEBufferShift = 16

	offSQRing    = 0          // IORING_OFF_SQ_RING
	offSQEs      = 0x10000000 // IORING_OFF_SQES
	featSingle   = 1 << 0     // IORING_FEAT_SINGLE_MMAP: one mapping holds both rings
	registerPbuf = 22         // IORING_REGISTER_PBUF_RING (5.19)
)

// SQE is a submission queue entry (struct io_uring_sqe), 64 bytes.
type SQE struct {
	Opcode      uint8
	Flags       uint8
	IOPrio      uint16
	Fd          int32
	Off         uint64
	Addr        uint64
	Len         uint32
	OpFlags     uint32 // msg_flags, poll32_events, cancel_flags…
	UserData    uint64
	BufIndex    uint16 // buf_index, or buf_group with SQEBufferSelect
	Personality uint16
	SpliceFdIn  int32
	Addr3       uint64
	_           uint64
}

// CQE is a completion queue entry (struct io_uring_cqe).
type CQE struct {
	UserData uint64
	Res      int32 // the result: bytes, or a negated errno
	Flags    uint32
}

// More reports whether a multishot request goes on after this completion.
func (c CQE) More() bool { return c.Flags&CQEFMore != 0 }

// Buffer is the provided buffer this completion filled, if any.
func (c CQE) Buffer() (id uint16, ok bool) {
	return uint16(c.Flags >> CQEBufferShift), c.Flags&CQEFBuffer != 0
}

type sqOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqOffsets
	cqOff                                                                  cqOffsets
}

// Options are New's settings beyond the submission queue's size.
type Options struct {
	// CQEntries sizes the completion queue (with SetupCQSize in Flags);
	// 0: twice the submission queue, the kernel's default.
	CQEntries uint32
	// Flags are IORING_SETUP_* flags (the Setup constants).
	Flags uint32
}

// Ring is one io_uring: its submission and completion queues mapped into
// this process. Queue fills submission entries in place; Enter hands them
// to the kernel and may wait for completions; Reap reads completions.
type Ring struct {
	fd int

	sqHead, sqTail *uint32
	sqMask         uint32
	sqes           []SQE
	tail           uint32 // the next entry to fill; published to *sqTail by Enter
	published      uint32 // the tail the kernel was last shown

	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           []CQE

	rings, sqeMem []byte // the mappings, for Close
}

// New sets up a ring whose submission queue holds entries (a power of
// two, or rounded up to one by the kernel). Its error wraps
// ErrUnavailable when the kernel gives none. With SetupSingleIssuer,
// only the calling thread may enter it: lock the goroutine to its thread
// first (runtime.LockOSThread).
func New(entries uint32, o Options) (*Ring, error) {
	p := params{flags: o.Flags, cqEntries: o.CQEntries}
	fd, _, errno := syscall.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("%w: io_uring_setup: %w", ErrUnavailable, errno)
	}
	r := &Ring{fd: int(fd)}
	if p.features&featSingle == 0 {
		r.Close()
		return nil, fmt.Errorf("%w: the kernel maps the rings apart (before 5.4)", ErrUnavailable)
	}
	size := max(p.sqOff.array+p.sqEntries*4, p.cqOff.cqes+p.cqEntries*uint32(unsafe.Sizeof(CQE{})))
	var err error
	if r.rings, err = unix.Mmap(r.fd, offSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.Close()
		return nil, fmt.Errorf("%w: mmap the rings: %w", ErrUnavailable, err)
	}
	if r.sqeMem, err = unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*int(unsafe.Sizeof(SQE{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		r.Close()
		return nil, fmt.Errorf("%w: mmap the submissions: %w", ErrUnavailable, err)
	}
	base := unsafe.Pointer(&r.rings[0])
	r.sqHead = (*uint32)(unsafe.Add(base, p.sqOff.head))
	r.sqTail = (*uint32)(unsafe.Add(base, p.sqOff.tail))
	r.sqMask = *(*uint32)(unsafe.Add(base, p.sqOff.ringMask))
	// The index array maps ring slots to entries one to one, once.
	array := unsafe.Slice((*uint32)(unsafe.Add(base, p.sqOff.array)), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.sqes = unsafe.Slice((*SQE)(unsafe.Pointer(&r.sqeMem[0])), p.sqEntries)
	r.tail = atomic.LoadUint32(r.sqTail)
	r.published = r.tail
	r.cqHead = (*uint32)(unsafe.Add(base, p.cqOff.head))
	r.cqTail = (*uint32)(unsafe.Add(base, p.cqOff.tail))
	r.cqMask = *(*uint32)(unsafe.Add(base, p.cqOff.ringMask))
	r.cqes = unsafe.Slice((*CQE)(unsafe.Add(base, p.cqOff.cqes)), p.cqEntries)
	return r, nil
}

// Queue adds e to the submission queue, to go to the kernel with the next
// Enter. It reports false when the queue is full: enter first.
func (r *Ring) Queue(e SQE) bool {
	if r.tail-atomic.LoadUint32(r.sqHead) >= uint32(len(r.sqes)) {
		return false
	}
	r.sqes[r.tail&r.sqMask] = e
	r.tail++
	return true
}

// Queued is how many entries were queued since the last Enter.
func (r *Ring) Queued() int { return int(r.tail - r.published) }

// Enter hands the queued entries to the kernel and, with EnterGetEvents
// in flags, waits until at least minComplete completions are ready. It
// returns how many entries the kernel took: fewer than were queued with
// an error, or when an entry failed to start (it is counted, and its
// error comes as its completion) and the kernel stopped there; the rest
// go with the next Enter, or Withdraw takes them back. A raw system call: the
// runtime is not told, so it must not block for long (a wait for
// completions that are certain to come at once, as non-blocking sends'
// are); EnterBlocking is for waits.
func (r *Ring) Enter(minComplete uint32, flags uint32) (int, syscall.Errno) {
	n := r.publish()
	got, _, errno := syscall.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n), uintptr(minComplete), uintptr(flags), 0, 0)
	return r.took(int(got), errno)
}

// EnterBlocking is Enter for a wait of any length: the runtime may run
// other goroutines on the calling goroutine's P meanwhile.
func (r *Ring) EnterBlocking(minComplete uint32, flags uint32) (int, syscall.Errno) {
	n := r.publish()
	got, _, errno := syscall.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n), uintptr(minComplete), uintptr(flags), 0, 0)
	return r.took(int(got), errno)
}

func (r *Ring) publish() int {
	atomic.StoreUint32(r.sqTail, r.tail)
	return int(r.tail - r.published)
}

func (r *Ring) took(got int, errno syscall.Errno) (int, syscall.Errno) {
	if errno != 0 {
		got = 0
	}
	r.published += uint32(got)
	return got, errno
}

// Withdraw takes back the entries queued that no Enter handed to the
// kernel (after an error), so that they are never submitted.
func (r *Ring) Withdraw() {
	r.tail = r.published
	atomic.StoreUint32(r.sqTail, r.tail)
}

// Reap hands every completion ready to fn, in order, and returns how
// many there were. fn may queue entries, and enter the ring to submit
// them (a full queue) but not to reap: the completions are read in place
// and released only when Reap returns.
func (r *Ring) Reap(fn func(CQE)) int {
	head, tail := atomic.LoadUint32(r.cqHead), atomic.LoadUint32(r.cqTail)
	n := int(tail - head)
	for ; head != tail; head++ {
		fn(r.cqes[head&r.cqMask])
	}
	atomic.StoreUint32(r.cqHead, head)
	return n
}

// Close lets the ring go: the kernel cancels what is still in flight.
func (r *Ring) Close() {
	unmap(&r.sqeMem)
	unmap(&r.rings)
	if r.fd >= 0 {
		_ = syscall.Close(r.fd)
		r.fd = -1
	}
}

// Buffers is a ring of provided buffers (IORING_REGISTER_PBUF_RING):
// receives submitted with SQEBufferSelect and its group take one of them
// each when data arrives, and the completion names which; Recycle gives
// it back.
type Buffers struct {
	group uint16
	size  int
	mask  uint16
	tail  uint16
	ring  []byte // entries of struct io_uring_buf; the tail is the first's last 2 bytes
	mem   []byte // the buffers, back to back
}

type bufReg struct {
	ringAddr    uint64
	ringEntries uint32
	bgid        uint16
	flags       uint16
	resv        [3]uint64
}

// RegisterBuffers gives the kernel count buffers of size bytes each
// (count a power of two, at most 32,768) as buffer group group, all
// available. The memory is mapped apart from the Go heap; Free unmaps it
// once the ring is closed.
func (r *Ring) RegisterBuffers(group uint16, count, size int) (*Buffers, error) {
	if count <= 0 || count > 1<<15 || count&(count-1) != 0 {
		return nil, fmt.Errorf("uring: %d buffers (a power of two up to 32768)", count)
	}
	b := &Buffers{group: group, size: size, mask: uint16(count - 1)}
	var err error
	if b.ring, err = unix.Mmap(-1, 0, count*16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANONYMOUS|unix.MAP_PRIVATE); err != nil {
		return nil, fmt.Errorf("uring: map the buffer ring: %w", err)
	}
	if b.mem, err = unix.Mmap(-1, 0, count*size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANONYMOUS|unix.MAP_PRIVATE); err != nil {
		b.Free()
		return nil, fmt.Errorf("uring: map the buffers: %w", err)
	}
	reg := bufReg{ringAddr: uint64(uintptr(unsafe.Pointer(&b.ring[0]))), ringEntries: uint32(count), bgid: group}
	_, _, errno := syscall.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), registerPbuf, uintptr(unsafe.Pointer(&reg)), 1, 0, 0)
	if errno != 0 {
		b.Free()
		return nil, fmt.Errorf("%w: register provided buffers: %w", ErrUnavailable, errno)
	}
	for id := range count {
		b.add(uint16(id))
	}
	b.publish()
	return b, nil
}

// Group is the buffer group a receive names in SQE.BufIndex.
func (b *Buffers) Group() uint16 { return b.group }

// Bytes is buffer id's first n bytes, valid until it is recycled.
func (b *Buffers) Bytes(id uint16, n int) []byte {
	off := int(id) * b.size
	return b.mem[off : off+n : off+b.size]
}

// Recycle makes buffer id available to receives again.
func (b *Buffers) Recycle(id uint16) {
	b.add(id)
	b.publish()
}

func (b *Buffers) add(id uint16) {
	e := b.ring[int(b.tail&b.mask)*16:]
	*(*uint64)(unsafe.Pointer(&e[0])) = uint64(uintptr(unsafe.Pointer(&b.mem[int(id)*b.size])))
	*(*uint32)(unsafe.Pointer(&e[8])) = uint32(b.size)
	*(*uint16)(unsafe.Pointer(&e[12])) = id
	b.tail++
}

// publish shows the kernel the buffers added: a release store of the
// tail, as liburing's io_uring_buf_ring_advance. The tail is 16 bits that
// share an aligned 32-bit word with the first entry's buffer id (which
// only this side writes), so the word is stored whole, atomically.
func (b *Buffers) publish() {
	var w [4]byte
	copy(w[:2], b.ring[12:14])
	*(*uint16)(unsafe.Pointer(&w[2])) = b.tail
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&b.ring[12])), *(*uint32)(unsafe.Pointer(&w[0])))
}

// Free unmaps the buffers. Only once no receive can use them: after the
// ring is closed, or after every receive of the group ended.
func (b *Buffers) Free() {
	unmap(&b.ring)
	unmap(&b.mem)
}

// unmap unmaps *m once: Close and Free may be called again.
func unmap(m *[]byte) {
	if *m != nil {
		_ = unix.Munmap(*m)
		*m = nil
	}
}
