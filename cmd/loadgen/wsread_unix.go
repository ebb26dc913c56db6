//go:build unix

package main

import (
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// readSocket feeds rd from c's descriptor until the socket ends or rd
// stops, with one read(2) per time the socket became readable: a read
// that did not fill the buffer took everything there was, so instead of
// reading again to learn that the socket is empty (what net.Conn.Read
// does, a second syscall per message), it waits for the runtime's poller
// to report new bytes. That is safe because the poller is edge-triggered:
// bytes that arrive after a read raise a new edge, kept for the next wait
// of this one RawConn.Read call (a new call would reset it, so the whole
// life of the socket is one call). A wait that finds nothing new costs a
// read that returns EAGAIN, as before.
func readSocket(c net.Conn, rd *wsReader, read *atomic.Int64) error {
	sc, ok := underlying(c).(syscall.Conn)
	if !ok {
		return readConn(c, rd, read)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return readConn(c, rd, read)
	}
	var ferr error
	err = raw.Read(func(fd uintptr) bool {
		for {
			p := rd.space()
			n, err := syscall.Read(int(fd), p)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				rd.release()
				return false // empty: wait for the next edge
			case err != nil:
				ferr = err
				return true
			case n == 0:
				ferr = io.EOF
				return true
			}
			read.Add(int64(n))
			if ferr = rd.feed(n, time.Now()); ferr != nil {
				return true
			}
			if n < len(p) {
				rd.release()
				return false // took all there was: wait for more
			}
		}
	})
	if ferr != nil {
		return ferr
	}
	return err
}
