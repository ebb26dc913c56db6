package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"taskstream/client"
	"taskstream/jobs"
	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/web"
	"taskstream/web/auth"
	"taskstream/web/auth/authtest"
)

// adminToken is the server's admin bearer token in these tests.
const adminToken = "client-test-admin-token"

// server is a whole taskstream on one Redis, served over real HTTP as
// cmd/api serves it: log, jobs with an in-process worker, hub, auth
// (mailing codes to a real SMTP listener when smtp is set) and web.
type server struct {
	URL  string
	log  *progress.Log
	smtp *authtest.SMTPServer
	web  *web.Server
	http *httptest.Server
}

type serverOptions struct {
	web      web.Config
	smtp     bool                 // mail sign-in codes to a real SMTP listener
	mail     *authtest.SMTPServer // that listener (set by newServer)
	noWorker bool
	hub      progress.HubConfig
}

// rdbOf returns a client of srv, closed by cleanup.
func rdbOf(srv *progresstest.Server, cleanup func(func())) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	cleanup(func() { _ = rdb.Close() })
	return rdb
}

// startServer starts a server on rdb; cleanup registers what stops it.
func startServer(rdb redis.UniversalClient, o serverOptions, artifacts string, cleanup func(func())) (*server, error) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.Default()
	}
	reg, err := jobs.NewRegistry(jobs.Builtin()...)
	if err != nil {
		return nil, err
	}
	s := &server{log: progress.NewLog(rdb, progress.LogConfig{}), smtp: o.mail}
	svc := jobs.NewService(rdb, reg, s.log, jobs.Config{ArtifactDir: artifacts, Logger: logger})
	if !o.noWorker {
		worker := jobs.NewWorker(svc, rdb, jobs.WorkerConfig{Concurrency: 8, PollInterval: 20 * time.Millisecond, CancelPoll: 100 * time.Millisecond, ShutdownTimeout: 2 * time.Second})
		if err := worker.Start(); err != nil {
			return nil, err
		}
		cleanup(worker.Shutdown)
	}
	pres := progress.NewPresence(rdb, s.log, progress.PresenceConfig{})
	o.hub.Logger = logger
	o.hub.Presence = pres // chat rooms' subscribed frames carry their users
	hub := progress.NewHub(rdb, s.log, o.hub)
	authCfg := auth.Config{Secret: []byte("0123456789abcdef0123456789abcdef-client"), AdminTokens: []string{adminToken}, Logger: logger}
	if s.smtp != nil {
		authCfg.Mailer = auth.SMTPMailer{Host: s.smtp.Host, Port: s.smtp.Port, From: "taskstream@test", TLS: "none"}
	}
	store, err := auth.NewStore(rdb, authCfg)
	if err != nil {
		return nil, err
	}
	o.web.Logger = logger
	// Every test client dials from 127.0.0.1.
	o.web.Limits.MaxConnsPerIP, o.web.Limits.MaxSocketsPerIP = 1<<20, 1<<20
	s.web = web.New(web.Deps{Jobs: svc, Hub: hub, Log: s.log, Auth: store, Presence: pres}, o.web)
	s.http = httptest.NewUnstartedServer(nil)
	s.http.Config = s.web.HTTPServer()
	s.http.Listener = s.web.Listener(s.http.Listener)
	s.http.Start()
	s.URL = s.http.URL
	cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.web.Shutdown(ctx)
		s.http.Close()
		pres.Shutdown(ctx)
		_ = hub.Shutdown(ctx)
	})
	return s, nil
}

// newServer starts a server on srv for the test t.
func newServer(t testing.TB, srv *progresstest.Server, o serverOptions) *server {
	t.Helper()
	if o.smtp {
		o.mail = authtest.NewSMTPServer(t)
	}
	s, err := startServer(rdbOf(srv, t.Cleanup), o, t.TempDir(), t.Cleanup)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// newClient returns a client of s with short watch backoffs.
func newClient(t testing.TB, s *server, cfg client.Config) *client.Client {
	t.Helper()
	cfg.BaseURL = s.URL
	if cfg.Watch.MinBackoff == 0 {
		cfg.Watch.MinBackoff = 10 * time.Millisecond
		cfg.Watch.MaxBackoff = 100 * time.Millisecond
		cfg.Watch.TryAgainBackoff = 50 * time.Millisecond
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// signIn signs c in as email through the server's mailed code.
func signIn(t testing.TB, s *server, c *client.Client, email string) *client.User {
	t.Helper()
	ctx := context.Background()
	if err := c.RequestCode(ctx, email); err != nil {
		t.Fatal(err)
	}
	u, err := c.Login(ctx, email, authtest.Code(t, s.smtp.Next(t)))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// cutter is a TCP proxy in front of a server whose connections a test can
// cut, as a flaky network does.
type cutter struct {
	ln       net.Listener
	target   string
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	accepted atomic.Int64
	wg       sync.WaitGroup
}

func newCutter(t testing.TB, target string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	c.wg.Add(1)
	go c.accept()
	t.Cleanup(func() { _ = ln.Close(); c.cut(); c.wg.Wait() })
	return c
}

// URL is the proxy's base URL.
func (c *cutter) URL() string { return "http://" + c.ln.Addr().String() }

func (c *cutter) accept() {
	defer c.wg.Done()
	for {
		in, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.accepted.Add(1)
		out, err := net.Dial("tcp", c.target)
		if err != nil {
			_ = in.Close()
			continue
		}
		c.mu.Lock()
		c.conns[in], c.conns[out] = struct{}{}, struct{}{}
		c.mu.Unlock()
		c.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer c.wg.Done()
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
		}
		go pipe(in, out)
		go pipe(out, in)
	}
}

// cut drops every connection through the proxy.
func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for conn := range c.conns {
		_ = conn.Close()
		delete(c.conns, conn)
	}
}

// exampleServer is the live server the examples run against: on an
// embedded Redis, started at the first example, stopped by TestMain.
var (
	exampleOnce    sync.Once
	exampleURL     string
	exampleCleanup []func()
)

func exampleBaseURL() string {
	exampleOnce.Do(func() {
		m := miniredis.NewMiniRedis()
		m.ClockTTL(true)
		if err := m.Start(); err != nil {
			panic(err)
		}
		exampleCleanup = append(exampleCleanup, m.Close)
		rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
		dir, err := os.MkdirTemp("", "client-example")
		if err != nil {
			panic(err)
		}
		exampleCleanup = append(exampleCleanup, func() { _ = rdb.Close(); _ = os.RemoveAll(dir) })
		s, err := startServer(rdb, serverOptions{}, dir, func(f func()) { exampleCleanup = append(exampleCleanup, f) })
		if err != nil {
			panic(fmt.Sprintf("start the example server: %v", err))
		}
		exampleURL = s.URL
	})
	return exampleURL
}

func TestMain(m *testing.M) {
	code := m.Run()
	for i := len(exampleCleanup) - 1; i >= 0; i-- {
		exampleCleanup[i]()
	}
	os.Exit(code)
}

// eventually polls cond until it holds or 15 s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
