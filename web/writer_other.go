//go:build !unix

package web

import (
	"errors"
	"net"
	"syscall"
)

// rawConnOf says no direct writes where write(2) on the socket's
// descriptor is not at hand (Windows): every batch goes through a writer
// goroutine, as a socket's large batches, pings and closes do everywhere.
func rawConnOf(net.Conn) syscall.RawConn { return nil }

// nowWriter is never used without a RawConn.
type nowWriter struct{ raw syscall.RawConn }

func (*nowWriter) write([]byte) (int, error) {
	return 0, errors.New("web: direct writes are not supported on this system")
}
