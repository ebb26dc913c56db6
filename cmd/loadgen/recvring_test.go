package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"taskstream/internal/uring"
)

// reader is one way the subscribers' sockets are read: ring nil is one
// read(2) per wake-up (readSocket).
type reader struct {
	name string
	ring *recvRing
}

// readers is every way a socket can be read here: read(2), and a
// receive ring where the kernel gives one (a failure where it should).
func readers(t *testing.T) []reader {
	t.Helper()
	out := []reader{{name: "read"}}
	rr, err := newRecvRing(0)
	if err != nil {
		if why := ringExpected(); why == "" {
			t.Fatalf("no receive ring though the kernel allows one: %v", err)
		}
		t.Logf("no receive ring here: %v", err)
		return out
	}
	t.Cleanup(rr.close)
	return append(out, reader{name: "ring", ring: rr})
}

// ringExpected is "" where the kernel should give a receive ring (Linux
// 6.1 or later with io_uring open to every process), else why not.
func ringExpected() string {
	if runtime.GOOS != "linux" {
		return "not Linux"
	}
	if err := uring.Probe(); err != nil {
		return err.Error() // turned off, or refused by a sandbox
	}
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return err.Error()
	}
	var major, minor int
	if _, err := fmt.Sscanf(string(b), "%d.%d", &major, &minor); err != nil || major < 6 || major == 6 && minor < 1 {
		return fmt.Sprintf("kernel %s (6.1 defers the ring's task work)", strings.TrimSpace(string(b)))
	}
	return ""
}
