package web

import "syscall"

// setRecvBuffer sets the kernel receive buffer of the socket fd (a
// RawConn's descriptor: a Handle on Windows).
func setRecvBuffer(fd uintptr, bytes int) error {
	return syscall.SetsockoptInt(syscall.Handle(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, bytes)
}
