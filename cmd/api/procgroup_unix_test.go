//go:build unix

package main

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// ownProcessGroup makes cmd the leader of a new process group, so that
// signalGroup reaches the program `go run` (or foreman) starts as well.
func ownProcessGroup(_ *testing.T, cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// signalGroup sends sig to the process group p leads.
func signalGroup(p *os.Process, sig syscall.Signal) { _ = syscall.Kill(-p.Pid, sig) }
