package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"taskstream/client"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// These tests run the real binaries as separate processes, as an operator
// would: the embedded default, the Procfile's two process types on a real
// Redis, graceful shutdown and a worker killed with SIGKILL mid-job.

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "taskstream-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir, "taskstream/cmd/api", "taskstream/cmd/worker")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a child process whose output is kept for assertions and failures.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	err  error
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// start runs command through sh in its own process group (so signals reach
// `go run` and the program it starts), in the repository root.
func start(t *testing.T, name, command string, env ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, done: make(chan struct{})}
	if !strings.Contains(command, "&&") {
		command = "exec " + command // a Procfile line with && execs by itself
	}
	p.cmd = exec.Command("sh", "-c", command)
	p.cmd.Dir = filepath.Join("..", "..")
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	ownProcessGroup(t, p.cmd)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s", name, p.output())
		}
	})
	return p
}

func (p *proc) signal(sig syscall.Signal) { signalGroup(p.cmd.Process, sig) }

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() {
	p.t.Helper()
	if err := p.stopWith(syscall.SIGTERM); err != nil {
		p.t.Fatalf("%s exited with %v", p.name, err)
	}
}

// stopWith sends sig to the process group, waits for the exit and returns
// the exit error.
func (p *proc) stopWith(sig syscall.Signal) error {
	p.t.Helper()
	p.signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%s did not exit within 30 s of %v", p.name, sig)
	}
	return p.err
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitHealthy(t *testing.T, base string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute) // `go run` may compile first
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("%s exited early: %v", p.name, p.err)
		default:
		}
		res, err := http.Get(base + "/healthz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not healthy at %s", p.name, base)
}

// browser is an HTTP client with a cookie jar: one guest session across
// requests and sockets, and across API replicas that share SESSION_SECRET
// (cookies do not tell ports apart).
func browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar}
}

// user is a taskstream client of base in b's session.
func user(t *testing.T, b *http.Client, base string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{BaseURL: base, HTTPClient: b})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// submit starts a job from a JSON body {"type", "params"} as b's user.
func submit(t *testing.T, b *http.Client, base, body string) string {
	t.Helper()
	var req struct {
		Type   string
		Params json.RawMessage
	}
	if err := json.Unmarshal([]byte(body), &req); err != nil {
		t.Fatal(err)
	}
	job, err := user(t, b, base).Submit(context.Background(), client.SubmitRequest{Type: req.Type, Params: req.Params})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return job.ID
}

// watchJob follows job id on base as b's user, from its first event,
// until stop returns true or the job's last event came; it checks the
// seqs are 1, 2, 3, … with no gap or duplicate, and closes the watch.
func watchJob(t *testing.T, b *http.Client, base, id string, timeout time.Duration, stop func(client.Event) bool) []client.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	w, err := user(t, b, base).Watch(ctx, wire.JobGroup(id).String(), client.Position{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var got []client.Event
	for {
		ev, err := w.Next(ctx)
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatalf("watch: %v after %d events: %+v", err, len(got), got)
		}
		if ev.Seq != int64(len(got))+1 {
			t.Fatalf("seq %d after %d events", ev.Seq, len(got))
		}
		got = append(got, ev)
		if stop != nil && stop(ev) {
			return got
		}
	}
}

// join opens a socket on base as b's user and subscribes it to group;
// the socket is closed when the test ends.
func join(t *testing.T, b *http.Client, base, group string) (*client.Conn, *wire.SubscribedFrame) {
	t.Helper()
	conn, err := user(t, b, base).Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	sub, err := conn.Join(group, client.Position{})
	if err != nil {
		t.Fatal(err)
	}
	return conn, sub
}

// The one command a newcomer runs: embedded Redis and worker, a job runs to
// its result, and SIGTERM closes sockets with 1001 and exits cleanly.
func TestEmbeddedDefault(t *testing.T) {
	t.Parallel()
	addr := freeAddr(t)
	base := "http://" + addr
	api := start(t, "api", filepath.Join(binDir, "api")+" -addr "+addr, "REDIS_URL=", "PORT=")
	waitHealthy(t, base, api)
	first, _, _ := strings.Cut(api.output(), "\n")
	if !strings.Contains(first, "running embedded") || !strings.Contains(first, "REDIS_URL") {
		t.Fatalf("first log line %q should say it runs embedded and how to use a real Redis", first)
	}
	b := browser()
	id := submit(t, b, base, `{"type":"steps","params":{"steps":5,"interval_ms":20}}`)
	if events := watchJob(t, b, base, id, 30*time.Second, nil); events[len(events)-1].Event != wire.EventResult {
		t.Fatalf("the job ended with %+v", events[len(events)-1].EventFrame)
	}

	// An open socket is closed with 1001 on SIGTERM.
	conn, _ := join(t, b, base, wire.JobGroup(id).String())
	api.signal(syscall.SIGTERM)
	for {
		_, err := conn.ReadFrame()
		if err == nil {
			continue
		}
		var ce *client.CloseError
		if !errors.As(err, &ce) || ce.Code != wire.CloseGoingAway {
			t.Fatalf("socket ended with %v, want close 1001", err)
		}
		break
	}
	api.stop()
}

// The Procfile's two process types, each its own process, on a real Redis:
// a job submitted to the web process is run by the worker process and
// watched to its result through a socket.
func TestProcfileProcessesOnRealRedis(t *testing.T) {
	t.Parallel()
	redis := progresstest.Real(t)
	procs := procfile(t)
	for _, name := range []string{"web", "worker"} {
		if procs[name] == "" {
			t.Fatalf("Procfile has no %q process type: %v", name, procs)
		}
	}
	port := strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	base := "http://127.0.0.1:" + port
	env := []string{"PORT=" + port, "REDIS_URL=" + redis.URL()}
	web := start(t, "web", procs["web"], env...)
	worker := start(t, "worker", procs["worker"], env...)
	waitHealthy(t, base, web)
	if strings.Contains(web.output(), "worker started") {
		t.Fatal("with REDIS_URL the web process must not run a worker unless asked")
	}
	b := browser()
	id := submit(t, b, base, `{"type":"primes","params":{"n":1000000}}`)
	events := watchJob(t, b, base, id, time.Minute, nil)
	if last := events[len(events)-1]; !strings.Contains(string(last.Data), `"count":78498`) {
		t.Fatalf("result %s, want count 78498", last.Data)
	}
	// Each loaded its scripts at start (the worker's first job is done).
	for _, p := range []*proc{web, worker} {
		if !strings.Contains(p.output(), "loaded the Lua scripts into Redis") {
			t.Fatalf("%s did not load its scripts at start:\n%s", p.name, p.output())
		}
	}
	// SIGTERM to the process group, as Procfile runners stop processes.
	// `go run` itself exits non-zero on a signal, so the program's own
	// log says whether it shut down gracefully.
	for _, p := range []*proc{worker, web} {
		_ = p.stopWith(syscall.SIGTERM)
		if !strings.Contains(p.output(), "stopped") {
			t.Fatalf("%s did not shut down gracefully:\n%s", p.name, p.output())
		}
	}
}

// procfile reads ../../Procfile into process type → command.
func procfile(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "Procfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, cmd, ok := strings.Cut(sc.Text(), ":")
		if ok && !strings.HasPrefix(name, "#") {
			out[strings.TrimSpace(name)] = strings.TrimSpace(cmd)
		}
	}
	return out
}

// A worker killed with SIGKILL mid-job: once its heartbeat is older than
// JOB_LOST_AFTER, watchers are told "state retry" ("worker lost") and the
// job runs again on another worker at once (not after Asynq's lease and
// recoverer), and ends once.
func TestWorkerKilledMidJobIsRetried(t *testing.T) {
	t.Parallel()
	redis := progresstest.Real(t)
	addr := freeAddr(t)
	base := "http://" + addr
	env := []string{"REDIS_URL=" + redis.URL(), "PORT=", "JOB_HEARTBEAT=200ms", "JOB_LOST_AFTER=1s", "RECONCILE_INTERVAL=500ms"}
	api := start(t, "api", filepath.Join(binDir, "api")+" -addr "+addr, env...)
	doomed := start(t, "doomed-worker", filepath.Join(binDir, "worker")+" -poll-interval 100ms", env...)
	waitHealthy(t, base, api)
	b := browser()
	id := submit(t, b, base, `{"type":"steps","params":{"steps":40,"interval_ms":100}}`)
	watchJob(t, b, base, id, 30*time.Second, func(e client.Event) bool { return e.Event == wire.EventProgress })
	doomed.signal(syscall.SIGKILL)
	<-doomed.done
	start(t, "survivor", filepath.Join(binDir, "worker")+" -poll-interval 100ms", env...)

	// Follow on a fresh watch from the start, to the end.
	events := watchJob(t, b, base, id, time.Minute, nil)
	var states []string
	for _, e := range events {
		if e.Event == "state" {
			var s struct{ State, Error string }
			_ = json.Unmarshal(e.Data, &s)
			states = append(states, strings.TrimSuffix(s.State+" "+s.Error, " "))
		}
	}
	if got, want := strings.Join(states, ","), "pending,active,retry worker lost,active,completed"; got != want {
		t.Fatalf("states %q, want %q", got, want)
	}
	api.stop()
}

// A bad setting stops the binary before it starts anything: exit code
// non-zero, one line on stderr naming the setting, never a panic. A busy
// address and an unreachable Redis fail the same way, after the listener
// is bound, with nothing left running.
func TestBadSettingsExitWithOneLine(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() }) // after the parallel subtests, unlike defer
	closedPort := freeAddr(t)          // nothing listens there
	cases := []struct {
		env     []string
		args    []string
		mention string
	}{
		{env: []string{"PORT=abc"}, mention: "PORT"},
		{args: []string{"-addr", "127.0.0.1:abc"}, mention: "ADDR"},
		{env: []string{"REDIS_MODE=bogus"}, mention: "REDIS_MODE"},
		{env: []string{"REDIS_URL=redis://u:hunter2@h:x/0"}, mention: "REDIS_URL"},
		{env: []string{"JOB_RATE=-1"}, mention: "JOB_RATE"},
		{env: []string{"JOB_BURST=-1"}, mention: "JOB_BURST"},
		{env: []string{"CHAT_RATE=-1"}, mention: "CHAT_RATE"},
		{env: []string{"HISTORY=-5"}, mention: "HISTORY"},
		{env: []string{"SEND_QUEUE=0"}, mention: "SEND_QUEUE"},
		{env: []string{"WORKER_CONCURRENCY=-2"}, mention: "WORKER_CONCURRENCY"},
		{env: []string{"HISTORY_TTL=0s"}, mention: "HISTORY_TTL"},
		{env: []string{"PRESENCE_TTL=-1s"}, mention: "PRESENCE_TTL"},
		{env: []string{"BODY_TIMEOUT=soon"}, mention: "BODY_TIMEOUT"},
		{env: []string{"MAX_CONNS=0"}, mention: "MAX_CONNS"},
		{env: []string{"LOG_LEVEL=loud"}, mention: "LOG_LEVEL"},
		{args: []string{"-history", "x"}, mention: "history"},
		{args: []string{"-nope"}, mention: "nope"},
		{args: []string{"-addr", busy.Addr().String()}, mention: "address already in use"},
		{env: []string{"REDIS_URL=redis://" + closedPort}, args: []string{"-addr", "127.0.0.1:0"}, mention: "does not answer"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(append(tc.env, tc.args...), " "), func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(filepath.Join(binDir, "api"), tc.args...)
			cmd.Env = append(cleanEnv(), tc.env...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
				t.Fatalf("exit: %v, want a non-zero exit code\nstderr: %s", err, stderr.String())
			}
			out := stderr.String()
			if lines := strings.Count(strings.TrimRight(out, "\n"), "\n") + 1; lines != 1 || !strings.Contains(out, tc.mention) {
				t.Fatalf("stderr has %d lines, want one naming %q:\n%s", lines, tc.mention, out)
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine") || strings.Contains(out, "hunter2") {
				t.Fatalf("stderr: %s", out)
			}
		})
	}
}

// The worker refuses bad settings the same way.
func TestWorkerBadSettingsExitWithOneLine(t *testing.T) {
	t.Parallel()
	for _, env := range [][]string{
		{}, // no REDIS_URL
		{"REDIS_URL=redis://127.0.0.1:1", "WORKER_CONCURRENCY=-1"},
		{"REDIS_URL=redis://127.0.0.1:1", "WORKER_QUEUES=a=0"},
		{"REDIS_URL=redis://127.0.0.1:1", "REDIS_MODE=bogus"},
	} {
		cmd := exec.Command(filepath.Join(binDir, "worker"))
		cmd.Env = append(cleanEnv(), env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		out := stderr.String()
		if !errors.As(err, &exit) || exit.ExitCode() <= 0 || strings.Count(strings.TrimRight(out, "\n"), "\n") != 0 ||
			strings.Contains(out, "panic") {
			t.Fatalf("worker with %v: %v, stderr:\n%s", env, err, out)
		}
	}
}

// -h lists every flag with its environment variable, and exits 0.
func TestHelpListsEnvironment(t *testing.T) {
	t.Parallel()
	for _, bin := range []string{"api", "worker"} {
		out, err := exec.Command(filepath.Join(binDir, bin), "-h").Output()
		if err != nil {
			t.Fatalf("%s -h: %v", bin, err)
		}
		for _, want := range []string{"(env REDIS_URL)", "(env WORKER_CONCURRENCY)"} {
			if !strings.Contains(string(out), want) {
				t.Fatalf("%s -h lacks %s:\n%s", bin, want, out)
			}
		}
		if bin == "api" && (!strings.Contains(string(out), "(env ADDR, or PORT)") || !strings.Contains(string(out), "(env MAX_SOCKETS_PER_IP)")) {
			t.Fatalf("api -h lacks ADDR/PORT or the limits:\n%s", out)
		}
	}
}

// cleanEnv is the test's environment without any taskstream setting, so
// each case sets only what it tests.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PORT", "ADDR", "REDIS_URL", "REDIS_MODE", "RUN_WORKER":
			continue
		}
		out = append(out, kv)
	}
	return out
}
