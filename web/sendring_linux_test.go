package web

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
)

// Where the kernel allows io_uring (kernel.io_uring_disabled 0, as on
// this project's machines), the flusher's goroutines get their send
// rings, so the "ring" cases of the direct-write tests run through them
// rather than quietly falling back to write(2).
func TestSendRingIsUsed(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/kernel/io_uring_disabled")
	// The sysctl came with Linux 6.6: without it io_uring is open.
	if err == nil && strings.TrimSpace(string(b)) != "0" || err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Skipf("io_uring is not open to every process here (%q, %v)", b, err)
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
