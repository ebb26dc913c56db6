//go:build !linux

package main

import (
	"context"
	"errors"
	"time"
)

// readLoops needs epoll: elsewhere every socket has its own reading
// goroutine (-read-loops 0).
type readLoops struct{}

func newReadLoops(int) (*readLoops, error) {
	return nil, errors.New("loadgen: read loops need Linux's epoll; use -read-loops 0")
}

// read reads s with its own goroutine's reader (never reached: there are
// no loops here).
func (*readLoops) read(ctx context.Context, s *sock, fn func(msg []byte, at time.Time) bool) error {
	return s.readUntil(ctx, fn)
}

// Close has nothing to stop.
func (*readLoops) Close() {}
