// Package uring is the part of Linux's io_uring(7) that taskstream's hot
// paths use, written on golang.org/x/sys/unix (the module proxy this
// project builds from serves no Go io_uring library): a ring set up and
// mapped, submission entries queued in place, the kernel entered, the
// completions read, and a ring of provided buffers for multishot
// receives. The api's flushers send fan-out batches through it (package
// web) and the load client receives through it (cmd/loadgen).
//
// A Ring is used by one goroutine at a time. Elsewhere than on Linux, New
// returns an error wrapping ErrUnavailable and callers use plain system
// calls.
package uring

import "errors"

// ErrUnavailable is wrapped by the errors of New and RegisterBuffers when
// the kernel gives no io_uring (too old, turned off with
// kernel.io_uring_disabled, refused by a seccomp filter as container
// runtimes' default profiles do, or not Linux).
var ErrUnavailable = errors.New("uring: io_uring is not available")

// Probe reports whether this process may use io_uring at all: nil when a
// ring of one entry can be set up, else why not (wrapping
// ErrUnavailable). Tests use it to tell a kernel or sandbox that refuses
// io_uring (skip) from a ring of theirs that fails where io_uring works
// (fail).
func Probe() error {
	r, err := New(1, Options{})
	if err != nil {
		return err
	}
	r.Close()
	return nil
}
