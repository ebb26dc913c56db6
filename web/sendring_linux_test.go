package web

import (
	"testing"

	"taskstream/internal/uring"
)

// Where the kernel allows io_uring (as on this project's machines; not
// where kernel.io_uring_disabled or a container's seccomp profile
// refuses it), the flusher's goroutines get their send rings, so the
// "ring" cases of the direct-write tests run through them rather than
// quietly falling back to write(2).
func TestSendRingIsUsed(t *testing.T) {
	if err := uring.Probe(); err != nil {
		t.Skip(err)
	}
	fs := newFlushState(true, nil)
	defer fs.close()
	if fs.ring == nil {
		t.Fatal("no send ring though the kernel allows io_uring")
	}
	if off := newFlushState(false, nil); off.ring != nil {
		t.Fatal("a send ring without asking for one")
	}
}
