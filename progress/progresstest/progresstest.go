// Package progresstest starts Redis servers for tests: the embedded
// miniredis (always available) and a real redis-server on a free port
// (when the binary is on PATH, and required when REQUIRE_REDIS_SERVER=1,
// as .ci/run sets it). Tests run the same body against each with ForEach.
package progresstest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// Server is a Redis a test can talk to.
type Server struct {
	Kind string // "miniredis" or "redis-server"
	Addr string // host:port

	mini *miniredis.Miniredis
	cmd  *exec.Cmd
	port int
	tb   testing.TB
	args []string // extra redis-server arguments (cluster nodes)
	dir  string   // working directory (cluster nodes keep nodes.conf and the AOF there)
	conf string   // configuration file, the first argument (a sentinel's: it rewrites it)
}

// URL returns the server's redis:// URL.
func (s *Server) URL() string { return "redis://" + s.Addr }

// Client returns a new client for the server, closed when the test ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// Miniredis returns the embedded server, or nil for a real one.
func (s *Server) Miniredis() *miniredis.Miniredis { return s.mini }

// Embedded starts a miniredis with ClockTTL enabled (so TTLs expire as they
// do on a real server), stopped when the test ends.
func Embedded(tb testing.TB) *Server {
	tb.Helper()
	m := miniredis.NewMiniRedis()
	m.ClockTTL(true)
	if err := m.Start(); err != nil {
		tb.Fatalf("start miniredis: %v", err)
	}
	tb.Cleanup(m.Close)
	return &Server{Kind: "miniredis", Addr: m.Addr(), mini: m, tb: tb}
}

// Required reports whether the environment demands a real redis-server
// (REQUIRE_REDIS_SERVER=1): then its absence fails tests instead of
// skipping them.
func Required() bool { return os.Getenv("REQUIRE_REDIS_SERVER") == "1" }

// Real starts redis-server on a free loopback port, stopped when the test
// ends. It skips the test when the binary is missing, unless Required.
func Real(tb testing.TB) *Server {
	tb.Helper()
	bin := binary(tb, "redis-server", "the real-Redis tests")
	s := &Server{Kind: "redis-server", tb: tb}
	s.startOnFreePort(tb, bin, freePort, nil)
	return s
}

// binary returns the path of the Redis binary name, for what: the test is
// skipped when it is not on PATH, or fails when Required.
func binary(tb testing.TB, name, what string) string {
	tb.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if Required() {
			tb.Fatalf("%s is not on PATH and REQUIRE_REDIS_SERVER=1", name)
		}
		tb.Skipf("%s not on PATH; install it to run %s", name, what)
	}
	return bin
}

// startOnFreePort starts s from bin on a port from port (fresh for each
// of a few attempts: another process may take a free port first), after
// prepare when given, and stops it when the test ends.
func (s *Server) startOnFreePort(tb testing.TB, bin string, port func(testing.TB) int, prepare func()) {
	tb.Helper()
	for attempt := 0; ; attempt++ {
		if prepare != nil {
			prepare()
		}
		s.port = port(tb)
		err := s.start(bin)
		if err == nil {
			break
		}
		if attempt == 4 {
			tb.Fatalf("start %s: %v", filepath.Base(bin), err)
		}
	}
	s.Addr = "127.0.0.1:" + strconv.Itoa(s.port)
	tb.Cleanup(s.Stop)
}

func (s *Server) start(bin string) error {
	var args []string
	if s.conf != "" {
		args = append(args, s.conf)
	}
	args = append(args, "--bind", "127.0.0.1", "--port", strconv.Itoa(s.port), "--save", "", "--loglevel", "warning")
	if s.args == nil {
		args = append(args, "--appendonly", "no")
	}
	cmd := exec.Command(bin, append(args, s.args...)...)
	cmd.Dir = s.dir
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	go func() { // drain output so the server never blocks on a full pipe
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if testing.Verbose() {
				s.tb.Logf("redis-server: %s", sc.Text())
			}
		}
	}()
	addr := "127.0.0.1:" + strconv.Itoa(s.port)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		err := rdb.Ping(context.Background()).Err()
		_ = rdb.Close()
		if err == nil {
			return nil
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	return fmt.Errorf("%s on port %d did not answer", filepath.Base(bin), s.port)
}

// SentinelMaster is the name under which Sentinel's sentinel watches
// its master (REDIS_URL's master_name).
const SentinelMaster = "mymaster"

// Sentinel starts a redis-sentinel on a free loopback port that watches
// master (a real redis-server) as SentinelMaster, stopped when the test
// ends; SentinelURL is the REDIS_URL of REDIS_MODE=sentinel through it.
// It skips the test when the binary is missing, unless Required (.ci/run
// installs it with redis-server).
func Sentinel(tb testing.TB, master *Server) *Server {
	tb.Helper()
	bin := binary(tb, "redis-sentinel", "the Sentinel tests")
	dir := tb.TempDir()
	s := &Server{Kind: "redis-sentinel", tb: tb, dir: dir, conf: filepath.Join(dir, "sentinel.conf")}
	s.startOnFreePort(tb, bin, freePort, func() {
		// The sentinel rewrites its file: each attempt starts from this.
		conf := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 1\n", SentinelMaster, master.port)
		if err := os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
			tb.Fatal(err)
		}
	})
	return s
}

// SentinelURL returns the REDIS_URL (REDIS_MODE=sentinel) of the master a
// sentinel started by Sentinel watches.
func (s *Server) SentinelURL() string { return s.URL() + "?master_name=" + SentinelMaster }

// Stop kills the server. For a real server the data is gone (no
// persistence), as after a crash.
func (s *Server) Stop() {
	if s.mini != nil {
		s.mini.Close()
		return
	}
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// Pause freezes a real server with SIGSTOP, as a stalled machine or a
// long fork would: connections are accepted by the kernel but nothing is
// answered until Resume. It skips the test on miniredis, which cannot be
// frozen. Resume is also registered as a cleanup, so a failed test does
// not leave a stopped process behind.
func (s *Server) Pause(tb testing.TB) {
	tb.Helper()
	if s.mini != nil || s.cmd == nil {
		tb.Skip("only a real redis-server can be paused")
	}
	sigStop, _, ok := pauseSignals()
	if !ok {
		tb.Skip("pausing a process needs SIGSTOP (Unix)")
	}
	if err := s.cmd.Process.Signal(sigStop); err != nil {
		tb.Fatalf("pause redis-server: %v", err)
	}
	tb.Cleanup(s.Resume)
}

// Resume lets a paused server run again. Safe to call when it is not
// paused.
func (s *Server) Resume() {
	if _, sigCont, ok := pauseSignals(); ok && s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(sigCont)
	}
}

// Restart stops the server and starts a fresh, empty one on the same
// address, as a Redis restart without persistence does. After Stop it
// brings the stopped server back (empty).
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if s.mini != nil {
		s.mini.Close()
		s.mini.FlushAll()
		if err := s.mini.Restart(); err != nil {
			tb.Fatalf("restart miniredis: %v", err)
		}
		return
	}
	s.Stop()
	bin, _ := exec.LookPath("redis-server")
	var err error
	for range 50 { // the port may linger briefly
		if err = s.start(bin); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatalf("restart redis-server: %v", err)
}

// ForEach runs body as a subtest against each available Redis: the
// embedded one always, and a real redis-server when possible (see Real).
func ForEach(t *testing.T, body func(t *testing.T, srv *Server)) {
	t.Helper()
	t.Run("miniredis", func(t *testing.T) { body(t, Embedded(t)) })
	t.Run("redis-server", func(t *testing.T) { body(t, Real(t)) })
}

func freePort(tb testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("free port: %v", err)
	}
	defer l.Close()
	_, port, _ := strings.Cut(l.Addr().String(), "127.0.0.1:")
	p, _ := strconv.Atoi(port)
	return p
}
