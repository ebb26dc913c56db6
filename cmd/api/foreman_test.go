package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"taskstream/progress/progresstest"
)

// foremanRequired reports whether the environment demands foreman (CI sets
// REQUIRE_FOREMAN=1 after installing Debian's ruby-foreman).
func foremanRequired() bool { return os.Getenv("REQUIRE_FOREMAN") == "1" }

// The Procfile under a real process manager: foreman starts web and
// worker, a job runs to its result, and SIGTERM to foreman leaves no
// taskstream process behind and the port free, so the next
// `foreman start` can bind it again.
func TestForemanStartAndStopLeavesNothingBehind(t *testing.T) {
	foreman, err := exec.LookPath("foreman")
	if err != nil {
		if foremanRequired() {
			t.Fatal("foreman is not on PATH and REQUIRE_FOREMAN=1 (apt-get install ruby-foreman)")
		}
		t.Skip("foreman is not on PATH (apt-get install ruby-foreman)")
	}
	t.Parallel()
	redis := progresstest.Real(t)
	addr := freeAddr(t)
	port := strings.TrimPrefix(addr, "127.0.0.1:")
	base := "http://" + addr

	fm := start(t, "foreman", foreman+" start -f Procfile", "PORT="+port, "REDIS_URL="+redis.URL())
	waitHealthy(t, base, fm)
	b := browser()
	id := submit(t, b, base, `{"type":"primes","params":{"n":100000}}`)
	events := watchJob(t, b, base, id, time.Minute, nil)
	if last := events[len(events)-1]; !strings.Contains(string(last.Data), `"count":9592`) {
		t.Fatalf("result %s, want count 9592", last.Data)
	}

	// SIGTERM to foreman alone, as an init system or a terminal's Ctrl-C
	// would send it; foreman passes it on to its children.
	if err := fm.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fm.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("foreman did not exit within 30 s of SIGTERM:\n%s", fm.output())
	}
	// The pids foreman started are sh processes that exec'd the binaries:
	// none may outlive foreman.
	pids := regexp.MustCompile(`started with pid (\d+)`).FindAllStringSubmatch(fm.output(), -1)
	if len(pids) != 2 {
		t.Fatalf("foreman started %d processes, want web and worker:\n%s", len(pids), fm.output())
	}
	for _, m := range pids {
		if exe, err := os.Readlink(filepath.Join("/proc", m[1], "exe")); err == nil {
			t.Errorf("pid %s (%s) still running after foreman stopped", m[1], exe)
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("port %s still held after foreman stopped: %v", port, err)
	}
	ln.Close()
	out := fm.output()
	for _, want := range []string{"web.1", "worker.1", "stopped", "worker stopped"} {
		if !strings.Contains(out, want) {
			t.Errorf("foreman output lacks %q (graceful shutdown of both processes):\n%s", want, out)
		}
	}
}
