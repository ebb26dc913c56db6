//go:build unix

package progress

import "syscall"

// processCPU is the CPU time this process has used, user and system, in
// nanoseconds, and whether the system could tell.
func processCPU() (int64, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return ru.Utime.Nano() + ru.Stime.Nano(), true
}
