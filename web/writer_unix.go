//go:build unix

package web

import (
	"net"
	"syscall"
)

// rawConnOf is the syscall.RawConn under c (through the listener's
// limitedConn), or nil.
func rawConnOf(c net.Conn) syscall.RawConn {
	if lc, ok := c.(*limitedConn); ok {
		c = lc.Conn
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// nowWriter writes what the kernel takes of p at once, without waiting
// for room: write(2) on the socket's non-blocking descriptor, called
// under RawConn.Control, which keeps the descriptor open for the call.
// RawConn.Write would also take the poller's write lock and check the
// write deadline on every delivery of a fan-out; a write that never waits
// needs neither, and the batchConn's mutex already orders the socket's
// writes. Its callback for the RawConn is bound once per connection: a
// closure per write put its captures on the heap, three allocations per
// delivery in a fan-out.
type nowWriter struct {
	raw  syscall.RawConn
	p    []byte
	n    int
	err  error
	call func(fd uintptr)
}

// write returns the bytes written, and an error only when the write
// failed.
func (w *nowWriter) write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if w.call == nil {
		w.call = w.do
	}
	w.p = p
	err := w.raw.Control(w.call)
	n, werr := max(w.n, 0), w.err
	w.p, w.n, w.err = nil, 0, nil
	if werr == syscall.EAGAIN {
		werr = nil
	}
	if err == nil && werr != nil {
		err = werr
	}
	return n, err
}

func (w *nowWriter) do(fd uintptr) {
	for {
		w.n, w.err = writeNow(int(fd), w.p)
		if w.err != syscall.EINTR {
			return // whatever it took: never wait for room
		}
	}
}
