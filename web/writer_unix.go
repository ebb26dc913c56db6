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
// for room. Its callback for the RawConn is bound once per connection:
// a closure per write put its captures on the heap, three allocations per
// delivery in a fan-out. One write at a time (the batchConn's mutex).
type nowWriter struct {
	raw  syscall.RawConn
	p    []byte
	n    int
	err  error
	call func(fd uintptr) bool
}

// write returns the bytes written, and an error only when the write
// failed.
func (w *nowWriter) write(p []byte) (int, error) {
	if w.call == nil {
		w.call = w.do
	}
	w.p = p
	err := w.raw.Write(w.call)
	n, werr := max(w.n, 0), w.err
	w.p, w.n, w.err = nil, 0, nil
	if werr == syscall.EAGAIN {
		werr = nil
	}
	if err == nil {
		err = werr
	}
	return n, err
}

func (w *nowWriter) do(fd uintptr) bool {
	for {
		w.n, w.err = syscall.Write(int(fd), w.p)
		if w.err != syscall.EINTR {
			return true // done, whatever it took: never wait for room
		}
	}
}
