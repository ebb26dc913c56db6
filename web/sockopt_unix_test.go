//go:build unix

package web

import "syscall"

// setRecvBuffer sets the kernel receive buffer of the socket fd (a
// RawConn's descriptor: an int on Unix).
func setRecvBuffer(fd uintptr, bytes int) error {
	return syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, bytes)
}
