//go:build !linux

package uring

import "fmt"

// Ring is an io_uring on Linux; elsewhere New never returns one.
type Ring struct{}

// Options are New's settings (ring_linux.go).
type Options struct {
	CQEntries uint32
	Flags     uint32
}

// New reports that there is no io_uring on this system.
func New(uint32, Options) (*Ring, error) {
	return nil, fmt.Errorf("%w on this system", ErrUnavailable)
}

// Close does nothing: there is no ring.
func (*Ring) Close() {}
