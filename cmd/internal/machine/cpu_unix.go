//go:build unix

package machine

import (
	"syscall"
	"time"
)

// SelfCPU is this process's CPU time so far (user + system), and whether
// the system could tell.
func SelfCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
