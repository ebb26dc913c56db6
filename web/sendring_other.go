//go:build !linux

package web

import "errors"

// sendRing batches socket sends on Linux (sendring_linux.go); elsewhere
// there is none and each socket's batch goes out with its own write.
type sendRing struct{}

var errNoSendRing = errors.New("web: no io_uring for socket sends on this system")

func newSendRing(uint32) (*sendRing, error) { return nil, errNoSendRing }

func (*sendRing) send(uintptr, []byte, uint64) {}

func (*sendRing) enter(int, func(uint64, int32)) (int, error) { return 0, errNoSendRing }

func (*sendRing) close() {}
