package uring

import (
	"bytes"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// newTestRing is a ring for a test, or a skip where the kernel gives
// none to every process.
func newTestRing(t *testing.T, entries uint32, o Options) *Ring {
	t.Helper()
	if err := Probe(); err != nil {
		t.Skip(err) // turned off, or refused by a sandbox
	}
	r, err := New(entries, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// socketPair is a connected pair of stream sockets.
func socketPair(t *testing.T) (a, b int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

func waitFor(t *testing.T, r *Ring, n int) []CQE {
	t.Helper()
	var got []CQE
	for len(got) < n {
		if _, errno := r.EnterBlocking(uint32(n-len(got)), EnterGetEvents); errno != 0 && errno != syscall.EINTR {
			t.Fatal(errno)
		}
		r.Reap(func(c CQE) { got = append(got, c) })
	}
	return got
}

// Sends queued in one enter complete in it, in order, with their tags;
// a full submission queue refuses more; withdrawn entries never reach
// the kernel.
func TestQueueEnterReap(t *testing.T) {
	r := newTestRing(t, 4, Options{})
	a, b := socketPair(t)
	msgs := [][]byte{[]byte("one "), []byte("two "), []byte("three")}
	for i, m := range msgs {
		if !r.Queue(SQE{Opcode: OpSend, Fd: int32(a), Addr: uint64(uintptr(unsafe.Pointer(&m[0]))), Len: uint32(len(m)),
			OpFlags: unix.MSG_DONTWAIT, UserData: uint64(i + 1)}) {
			t.Fatalf("queue %d refused", i)
		}
	}
	if r.Queued() != 3 {
		t.Fatalf("queued %d, want 3", r.Queued())
	}
	got := waitFor(t, r, 3)
	for i, c := range got {
		if c.UserData != uint64(i+1) || int(c.Res) != len(msgs[i]) {
			t.Errorf("completion %d: tag %d res %d, want tag %d res %d", i, c.UserData, c.Res, i+1, len(msgs[i]))
		}
	}
	buf := make([]byte, 64)
	n, err := unix.Read(b, buf)
	if err != nil || string(buf[:n]) != "one two three" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}

	one := []byte("x")
	for i := range 4 {
		if !r.Queue(SQE{Opcode: OpSend, Fd: int32(a), Addr: uint64(uintptr(unsafe.Pointer(&one[0]))), Len: 1, UserData: 9}) {
			t.Fatalf("queue %d of 4 refused", i)
		}
	}
	if r.Queue(SQE{Opcode: OpSend}) {
		t.Fatal("a fifth entry in a queue of 4")
	}
	r.Withdraw()
	if r.Queued() != 0 {
		t.Fatalf("%d queued after Withdraw", r.Queued())
	}
	if _, errno := r.Enter(0, EnterGetEvents); errno != 0 {
		t.Fatal(errno)
	}
	if n := r.Reap(func(CQE) {}); n != 0 {
		t.Fatalf("%d completions of withdrawn entries", n)
	}
	if _, err := unix.Read(b, buf); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("withdrawn sends were sent: %v", err)
	}
}

// A multishot receive with provided buffers: each arrival fills a buffer
// the completion names, the receive goes on (CQEFMore), runs out when no
// buffer is left (ENOBUFS, ending it) and ends at the stream's end with 0.
func TestMultishotReceiveWithBuffers(t *testing.T) {
	r := newTestRing(t, 8, Options{})
	// Provided-buffer rings came with Linux 5.19, multishot receives with 6.0.
	var u unix.Utsname
	var major, minor int
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil || major < 6 {
		t.Skipf("kernel %s: multishot receives need 6.0", unix.ByteSliceToString(u.Release[:]))
	}
	bufs, err := r.RegisterBuffers(3, 2, 16)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); bufs.Free() }) // the ring first: no receive may use them after
	a, b := socketPair(t)
	arm := func() {
		r.Queue(SQE{Opcode: OpRecv, Fd: int32(b), IOPrio: RecvMultishot, Flags: SQEBufferSelect, BufIndex: bufs.Group(), UserData: 7})
		if _, errno := r.Enter(0, 0); errno != 0 {
			t.Fatal(errno)
		}
	}
	arm()
	var held []uint16
	for _, m := range []string{"first", "second"} {
		if _, err := unix.Write(a, []byte(m)); err != nil {
			t.Fatal(err)
		}
		c := waitFor(t, r, 1)[0]
		id, ok := c.Buffer()
		if !ok || !c.More() || string(bufs.Bytes(id, int(c.Res))) != m {
			t.Fatalf("completion %+v (buffer %d %v, more %v), want %q", c, id, ok, c.More(), m)
		}
		held = append(held, id)
	}
	// Both buffers are held: the next arrival finds none.
	if _, err := unix.Write(a, []byte("third")); err != nil {
		t.Fatal(err)
	}
	if c := waitFor(t, r, 1)[0]; c.Res != -int32(syscall.ENOBUFS) || c.More() {
		t.Fatalf("with no buffer: %+v, want ENOBUFS and the end of the receive", c)
	}
	for _, id := range held {
		bufs.Recycle(id)
	}
	arm()
	c := waitFor(t, r, 1)[0]
	if id, ok := c.Buffer(); !ok || !bytes.Equal(bufs.Bytes(id, int(c.Res)), []byte("third")) {
		t.Fatalf("after recycling: %+v", c)
	} else {
		bufs.Recycle(id)
	}
	unix.Shutdown(a, unix.SHUT_WR)
	if c := waitFor(t, r, 1)[0]; c.Res != 0 || c.More() {
		t.Fatalf("at the stream's end: %+v, want 0 and the end of the receive", c)
	}
}
