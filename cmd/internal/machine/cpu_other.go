//go:build !unix

package machine

import "time"

// SelfCPU is this process's CPU time so far: not known on this system
// (the tools report CPU figures on Unix only).
func SelfCPU() (time.Duration, bool) { return 0, false }
