//go:build !unix

package progress

// processCPU: this system's CPU time is not read here (no getrusage), so
// the benchmarks leave out their cpu-ns/op figure rather than report 0.
func processCPU() (int64, bool) { return 0, false }
