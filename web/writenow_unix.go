//go:build unix && !linux

package web

import "syscall"

// writeNow is write(2) of p on a non-blocking descriptor (Linux makes it
// a raw system call: writenow_linux.go).
func writeNow(fd int, p []byte) (int, error) { return syscall.Write(fd, p) }
