//go:build !unix

package main

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// ownProcessGroup: the process tests run commands through sh and stop
// them with SIGTERM to their process group, which this system lacks; they
// skip here.
func ownProcessGroup(t *testing.T, _ *exec.Cmd) {
	t.Skip("the process tests need sh, process groups and POSIX signals")
}

// signalGroup can only kill p here (os.Process.Signal's one signal off Unix).
func signalGroup(p *os.Process, _ syscall.Signal) { _ = p.Kill() }
