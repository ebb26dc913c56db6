//go:build !linux

package main

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"

	"taskstream/internal/uring"
)

// recvRing receives through io_uring on Linux (recvring_linux.go);
// elsewhere there is none and each socket reads with its own calls.
type recvRing struct{}

func newRecvRing(int) (*recvRing, error) {
	return nil, fmt.Errorf("%w on this system", uring.ErrUnavailable)
}

func (*recvRing) read(context.Context, net.Conn, *wsReader, *atomic.Int64) error {
	return uring.ErrUnavailable
}

func (*recvRing) close() {}
