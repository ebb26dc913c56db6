//go:build unix

package progresstest

import (
	"os"
	"syscall"
)

// pauseSignals are the signals that freeze and thaw a process.
func pauseSignals() (stop, cont os.Signal, ok bool) { return syscall.SIGSTOP, syscall.SIGCONT, true }
