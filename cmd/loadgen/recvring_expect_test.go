package main

import "testing"

// ringExpected decides whether the ring tests run, and which note
// TestScenariosOnBothTargets wants ("receive through" or "read(2)"): it
// must say "" exactly where a receive ring starts. Run where
// /proc/sys/kernel/io_uring_disabled does not exist (Linux 6.1–6.5: the
// sysctl came in 6.6), it says "not open" though the ring starts.
func TestRingExpectedAgreesWithTheKernel(t *testing.T) {
	why := ringExpected()
	rr, err := newRecvRing(0)
	if err == nil {
		rr.close()
	}
	if (why == "") != (err == nil) {
		t.Fatalf("ringExpected() = %q, but newRecvRing: %v", why, err)
	}
}
