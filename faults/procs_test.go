//go:build faults

package faults

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// binDir holds the api and worker binaries, built once by TestMain.
var binDir string

func TestMain(m *testing.M) {
	for _, bin := range []string{"redis-server", "redis-sentinel"} {
		if _, err := exec.LookPath(bin); err != nil {
			// The suite is opt-in (build tag): a missing binary is a failure,
			// never a skip.
			fmt.Fprintf(os.Stderr, "faults: %s is not on PATH (Debian package %s)\n", bin, bin)
			os.Exit(1)
		}
	}
	dir, err := os.MkdirTemp("", "taskstream-faults-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := exec.Command("go", "build", "-o", dir, "taskstream/cmd/api", "taskstream/cmd/worker")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "faults: build binaries:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// harness owns one scenario's child processes and their logs. Cleanup
// kills every process it started (by process group, so nothing it spawned
// survives), prints the tail of each log when the test failed and keeps the
// log directory then; it is removed after a passing test.
type harness struct {
	t      *testing.T
	dir    string // data of this scenario (Redis dirs, sentinel config, artifacts)
	logDir string

	mu    sync.Mutex
	procs []*proc
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	logDir, err := os.MkdirTemp("", "taskstream-faults-logs-")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, dir: t.TempDir(), logDir: logDir}
	t.Cleanup(h.cleanup)
	return h
}

func (h *harness) cleanup() {
	h.mu.Lock()
	procs := append([]*proc(nil), h.procs...)
	h.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].kill()
	}
	if !h.t.Failed() {
		if os.Getenv("FAULTS_KEEP_LOGS") == "1" {
			h.t.Logf("logs of the child processes kept in %s (FAULTS_KEEP_LOGS=1)", h.logDir)
			return
		}
		_ = os.RemoveAll(h.logDir)
		return
	}
	for _, p := range procs {
		h.t.Logf("--- last lines of %s (%s) ---\n%s", p.name, p.logPath, tail(p.logPath, 30))
	}
	h.t.Logf("full logs of the child processes kept in %s", h.logDir)
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// proc is one child process. It may be started again after it exited
// (a restart): its log file is appended to, with a marker line per start.
type proc struct {
	h       *harness
	name    string
	path    string
	args    []string
	env     []string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the current run exited
	err  error         // the current run's exit error, once done
}

// baseEnv is the environment of every child: only what a process needs to
// run, so nothing of the developer's own configuration (REDIS_URL, PORT…)
// leaks into a scenario.
func baseEnv() []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "LANG"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// newProc registers a process; start runs it.
func (h *harness) newProc(name, path string, args, env []string) *proc {
	p := &proc{h: h, name: name, path: path, args: args, env: env,
		logPath: filepath.Join(h.logDir, name+".log")}
	h.mu.Lock()
	h.procs = append(h.procs, p)
	h.mu.Unlock()
	return p
}

// start runs the process in its own process group, its output appended
// to its log file.
func (p *proc) start() error {
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "=== %s start %s %s\n", time.Now().Format(time.RFC3339Nano), p.path, strings.Join(p.args, " "))
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = append(baseEnv(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done, p.err = cmd, done, nil
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// running returns the current run's command and done channel (nil when
// never started).
func (p *proc) running() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

func (p *proc) exited() bool {
	_, done := p.running()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process group of the current run.
func (p *proc) signal(sig syscall.Signal) {
	cmd, _ := p.running()
	if cmd != nil && !p.exited() {
		_ = syscall.Kill(-cmd.Process.Pid, sig)
	}
}

// wait waits up to d for the current run to exit and reports whether it did.
func (p *proc) wait(d time.Duration) bool {
	_, done := p.running()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// kill ends the current run with SIGKILL and waits for it.
func (p *proc) kill() {
	p.signal(syscall.SIGCONT) // a stopped process must run to die
	p.signal(syscall.SIGKILL)
	p.wait(10 * time.Second)
}

func (p *proc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// lastRunLog is the log of the current run only.
func (p *proc) lastRunLog() string {
	s := p.log()
	if i := strings.LastIndex(s, "=== "); i >= 0 {
		return s[i:]
	}
	return s
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitFor polls cond every 50 ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// redisNode is a redis-server with its own data directory and port.
type redisNode struct {
	h    *harness
	proc *proc
	port int
	dir  string
}

func (r *redisNode) addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// startRedis starts redis-server with AOF (fsync on every write) in a data
// directory of its own, on a free port; extra arguments follow.
func (h *harness) startRedis(name string, extra ...string) *redisNode {
	h.t.Helper()
	r := &redisNode{h: h, dir: filepath.Join(h.dir, name)}
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		h.t.Fatal(err)
	}
	var err error
	for attempt := 0; attempt < 5; attempt++ { // a free port may be taken by another test meanwhile
		r.port = freePort(h.t)
		args := []string{"--bind", "127.0.0.1", "--port", strconv.Itoa(r.port), "--dir", r.dir,
			"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--loglevel", "notice"}
		r.proc = h.newProc(fmt.Sprintf("%s-%d", name, attempt), "redis-server", append(args, extra...), nil)
		if err = r.proc.start(); err != nil {
			h.t.Fatal(err)
		}
		if err = r.waitUp(10 * time.Second); err == nil {
			return r
		}
		r.proc.kill()
	}
	h.t.Fatalf("start %s: %v", name, err)
	return nil
}

// restart starts the server again on its port and data directory.
func (r *redisNode) restart() error {
	var err error
	for range 20 { // the old listener may linger for a moment
		if err = r.proc.start(); err != nil {
			return err
		}
		if err = r.waitUp(5 * time.Second); err == nil {
			return nil
		}
		r.proc.kill()
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// waitUp waits until the server answers PING (and has loaded its data).
func (r *redisNode) waitUp(d time.Duration) error {
	rdb := redis.NewClient(&redis.Options{Addr: r.addr(), MaxRetries: -1, DialTimeout: 500 * time.Millisecond})
	defer rdb.Close()
	var err error
	ok := waitFor(d, func() bool {
		if r.proc.exited() {
			err = errors.New("redis-server exited: " + tail(r.proc.logPath, 3))
			return true
		}
		err = rdb.Ping(context.Background()).Err()
		return err == nil
	})
	if !ok && err == nil {
		err = errors.New("no answer")
	}
	return err
}

// wipe removes everything in the data directory, as a restart on an empty
// disk (or with persistence off) finds it.
func (r *redisNode) wipe() error {
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(r.dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// sentinel is one redis-sentinel watching master "mymaster".
type sentinel struct {
	proc *proc
	port int
}

func (s *sentinel) client() *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(s.port), MaxRetries: -1})
}

// masterAddr asks the sentinel which server is the primary now.
func (s *sentinel) masterAddr() (string, error) {
	c := s.client()
	defer c.Close()
	a, err := c.GetMasterAddrByName(context.Background(), "mymaster").Result()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(a[0], a[1]), nil
}

// startSentinel starts a sentinel for primary (quorum 1, down after 1 s)
// and waits until it knows a healthy replica, so a failover can happen.
func (h *harness) startSentinel(primary *redisNode) *sentinel {
	h.t.Helper()
	s := &sentinel{port: freePort(h.t)}
	dir := filepath.Join(h.dir, "sentinel")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		h.t.Fatal(err)
	}
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf(`port %d
bind 127.0.0.1
dir %s
sentinel monitor mymaster 127.0.0.1 %d 1
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 10000
sentinel parallel-syncs mymaster 1
`, s.port, dir, primary.port)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		h.t.Fatal(err)
	}
	s.proc = h.newProc("sentinel", "redis-sentinel", []string{conf}, nil)
	if err := s.proc.start(); err != nil {
		h.t.Fatal(err)
	}
	c := s.client()
	defer c.Close()
	ok := waitFor(20*time.Second, func() bool {
		if s.proc.exited() {
			return true
		}
		reps, err := c.Replicas(context.Background(), "mymaster").Result()
		if err != nil {
			return false
		}
		for _, r := range reps {
			if r["master-link-status"] == "ok" && !strings.Contains(r["flags"], "down") {
				return true
			}
		}
		return false
	})
	if !ok || s.proc.exited() {
		h.t.Fatalf("sentinel never saw a healthy replica:\n%s", tail(s.proc.logPath, 20))
	}
	return s
}

// Settings of the processes under test. The worker's short cutoffs make
// a lost worker detected in seconds; unknown variables are ignored by
// older binaries.
const (
	sessionSecret = "faults-suite-shared-session-secret-0123456789"
	adminToken    = "faults-suite-admin-token-0123456789"
)

var workerEnv = []string{
	"JOB_HEARTBEAT=1s", "JOB_LOST_AFTER=3s", "RECONCILE_INTERVAL=1s",
	"WORKER_POLL_INTERVAL=100ms", "WORKER_SHUTDOWN_TIMEOUT=2s",
	// Five slots each: the ten jobs of a scenario fill both workers, so
	// a worker fault always hits running jobs.
	"WORKER_CONCURRENCY=5",
}

// cluster is the system under test: Redis (one server, or a primary, a
// replica and a sentinel), two API replicas and two workers.
type cluster struct {
	h         *harness
	redisURL  string
	redisMode string
	redis     *redisNode // single mode
	primary   *redisNode // sentinel mode
	replica   *redisNode
	sentinel  *sentinel

	mu       sync.Mutex
	apiAddrs []string
	apis     []*proc
	workers  []*proc
}

func (h *harness) startCluster(withSentinel bool) *cluster {
	h.t.Helper()
	c := &cluster{h: h, redisMode: "single"}
	if withSentinel {
		c.primary = h.startRedis("redis-primary")
		c.replica = h.startRedis("redis-replica", "--replicaof", "127.0.0.1", strconv.Itoa(c.primary.port))
		c.sentinel = h.startSentinel(c.primary)
		c.redisMode = "sentinel"
		c.redisURL = fmt.Sprintf("redis://127.0.0.1:%d?master_name=mymaster", c.sentinel.port)
	} else {
		c.redis = h.startRedis("redis")
		c.redisURL = "redis://" + c.redis.addr()
	}
	artifacts := filepath.Join(h.dir, "artifacts")
	common := []string{"REDIS_URL=" + c.redisURL, "REDIS_MODE=" + c.redisMode, "ARTIFACT_DIR=" + artifacts, "LOG_LEVEL=info"}
	apiEnv := append(append([]string{}, common...),
		"SESSION_SECRET="+sessionSecret, "ADMIN_TOKENS="+adminToken,
		"JOB_RATE=100", "JOB_BURST=100", "CHAT_RATE=100000", "CHAT_BURST=100000",
		// A small send queue, so the slow reader is cut after a short flood.
		"SEND_QUEUE=256")
	apiEnv = append(apiEnv, workerEnv...)
	for i := range 2 {
		c.apiAddrs = append(c.apiAddrs, "")
		c.apis = append(c.apis, h.newProc(fmt.Sprintf("api%d", i), filepath.Join(binDir, "api"), nil, apiEnv))
		c.startAPI(i)
	}
	for i := range 2 {
		w := h.newProc(fmt.Sprintf("worker%d", i), filepath.Join(binDir, "worker"), nil, append(append([]string{}, common...), workerEnv...))
		c.workers = append(c.workers, w)
		c.startWorker(i)
	}
	return c
}

// base returns API i's base URL.
func (c *cluster) base(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return "http://" + c.apiAddrs[i]
}

// startAPI (re)starts API i, on its old address when it had one, and
// waits until /healthz answers.
func (c *cluster) startAPI(i int) {
	c.h.t.Helper()
	p := c.apis[i]
	c.mu.Lock()
	addr := c.apiAddrs[i]
	c.mu.Unlock()
	for attempt := 0; attempt < 5; attempt++ {
		if addr == "" || attempt > 0 {
			addr = "127.0.0.1:" + strconv.Itoa(freePort(c.h.t))
		}
		c.mu.Lock()
		c.apiAddrs[i] = addr
		c.mu.Unlock()
		p.args = []string{"-addr", addr}
		if err := p.start(); err != nil {
			c.h.t.Fatal(err)
		}
		if waitHealthy(c.base(i), p, 30*time.Second) {
			return
		}
		if !p.exited() {
			break // running but not answering: no use trying another port
		}
	}
	c.h.t.Fatalf("%s did not become healthy:\n%s", p.name, tail(p.logPath, 20))
}

func waitHealthy(base string, p *proc, d time.Duration) bool {
	client := &http.Client{Timeout: time.Second}
	return waitFor(d, func() bool {
		if p.exited() {
			return true
		}
		res, err := client.Get(base + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}) && !p.exited()
}

// startWorker (re)starts worker i and waits for its "worker started" line.
func (c *cluster) startWorker(i int) {
	c.h.t.Helper()
	p := c.workers[i]
	if err := p.start(); err != nil {
		c.h.t.Fatal(err)
	}
	ok := waitFor(30*time.Second, func() bool {
		return p.exited() || strings.Contains(p.lastRunLog(), "worker started")
	})
	if !ok || p.exited() {
		c.h.t.Fatalf("%s did not start:\n%s", p.name, tail(p.logPath, 20))
	}
}

// signInCode finds the sign-in code mailed to email in API i's log (the
// APIs run without SMTP, so codes are logged).
func (c *cluster) signInCode(i int, email string) (string, error) {
	var code string
	waitFor(5*time.Second, func() bool {
		sc := bufio.NewScanner(bytes.NewReader([]byte(c.apis[i].log())))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if !strings.Contains(line, "to="+email) {
				continue
			}
			_, after, ok := strings.Cut(line, "code is ")
			if ok && len(after) >= 6 {
				code = after[:6]
			}
		}
		return code != ""
	})
	if code == "" {
		return "", fmt.Errorf("no sign-in code for %s in %s's log", email, c.apis[i].name)
	}
	return code, nil
}
