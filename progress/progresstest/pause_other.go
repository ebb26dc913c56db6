//go:build !unix

package progresstest

import "os"

// pauseSignals: this system has no signals that freeze a process, so
// Server.Pause skips its test.
func pauseSignals() (stop, cont os.Signal, ok bool) { return nil, nil, false }
