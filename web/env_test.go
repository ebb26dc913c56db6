package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"taskstream/jobs"
	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/web/auth"
	"taskstream/web/dashboard"
	"taskstream/web/metrics"
	"taskstream/wire"
)

// testEnv is a whole taskstream on one Redis: log, job service, an
// in-process worker, the hub and the HTTP server on a real listener.
type testEnv struct {
	t      testing.TB
	redis  *progresstest.Server
	rdb    redis.UniversalClient
	log    *progress.Log
	jobs   *jobs.Service
	worker *jobs.Worker
	hub    *progress.Hub
	auth   *auth.Store
	pres   *progress.Presence
	mx     *metrics.Metrics
	counts *dashboard.JobCounts // the jobs' observer: counts for the dashboard, then metrics
	dash   *dashboard.Dashboard // with withDashboard
	web    *Server
	http   *httptest.Server
	client *http.Client // with a cookie jar: one browser, one guest session

	ended *atomic.Bool // set when the test ends: answers after it are not checked
}

// testSecret signs session cookies in tests.
var testSecret = []byte("0123456789abcdef0123456789abcdef-test")

// testAdminToken is an admin bearer token in tests.
const testAdminToken = "admin-token-for-tests"

type envOption func(*envOptions)

type envOptions struct {
	web      Config
	noWorker bool
	mailer   auth.Mailer
	authCfg  func(*auth.Config)
	prodRdb  bool
	schedule string            // a schedule file's contents: run a scheduler of it
	dash     *dashboard.Config // start a dashboard (reporter and publisher) on the env
	listen   func(net.Listener) net.Listener
	authHook redis.Hook // on a client of the auth store's own
}

func withWebConfig(c Config) envOption   { return func(o *envOptions) { o.web = c } }
func withoutWorker() envOption           { return func(o *envOptions) { o.noWorker = true } }
func withMailer(m auth.Mailer) envOption { return func(o *envOptions) { o.mailer = m } }

// withSchedule runs a scheduler (as cmd/api does, owned by the admin
// user) of a schedule file's contents, and serves it at /api/schedules.
func withSchedule(file string) envOption { return func(o *envOptions) { o.schedule = file } }

// withAuthConfig adjusts the auth store's configuration.
func withAuthConfig(f func(*auth.Config)) envOption { return func(o *envOptions) { o.authCfg = f } }

// withDashboard runs this replica's dashboard (web/dashboard) with cfg:
// its report and its candidacy as the publisher, counting finished jobs
// through e.counts.
func withDashboard(cfg dashboard.Config) envOption {
	return func(o *envOptions) { o.dash = &cfg }
}

// withListener wraps the server's listener (inside the server's own), to
// shape the connections it accepts.
func withListener(wrap func(net.Listener) net.Listener) envOption {
	return func(o *envOptions) { o.listen = wrap }
}

// withAuthHook gives the auth store a Redis client of its own with hook,
// so a test can see the store's commands apart from the rest.
func withAuthHook(hook redis.Hook) envOption { return func(o *envOptions) { o.authHook = hook } }

// withProductionRedis connects as cmd/api does (progress.OpenRedis, with
// its short timeouts) instead of with go-redis's defaults.
func withProductionRedis() envOption { return func(o *envOptions) { o.prodRdb = true } }

func quietLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(&testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testWriter struct{ t testing.TB }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func newEnv(t testing.TB, srv *progresstest.Server, opts ...envOption) *testEnv {
	t.Helper()
	var o envOptions
	for _, f := range opts {
		f(&o)
	}
	logger := quietLogger(t)
	e := &testEnv{t: t, redis: srv, rdb: srv.Client(t), ended: new(atomic.Bool)}
	t.Cleanup(func() { e.ended.Store(true) }) // registered first: runs last
	if o.prodRdb {
		rdb, err := progress.OpenRedis(context.Background(), srv.URL(), progress.ModeSingle)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rdb.Close() })
		e.rdb = rdb
	}
	reg, err := jobs.NewRegistry(jobs.Builtin()...)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, typ := range reg.Types() {
		types = append(types, typ.Name)
	}
	e.mx = metrics.New(metrics.Config{
		JobTypes: types, Queues: reg.Queues(), Inspector: asynq.NewInspectorFromRedisClient(e.rdb), Logger: logger,
		QueueRefresh: time.Nanosecond, // every scrape reads the queues: tests see fresh figures
	})
	e.log = progress.NewLog(e.rdb, progress.LogConfig{OnPublish: e.mx.ObservePublish})
	e.counts = dashboard.NewJobCounts(e.mx)
	e.jobs = jobs.NewService(e.rdb, reg, e.log, jobs.Config{ArtifactDir: t.TempDir(), Logger: logger, Observer: e.counts})
	if !o.noWorker {
		e.worker = jobs.NewWorker(e.jobs, e.rdb, jobs.WorkerConfig{
			PollInterval: 50 * time.Millisecond, CancelPoll: 200 * time.Millisecond, ShutdownTimeout: 2 * time.Second,
		})
		if err := e.worker.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.worker.Shutdown)
	}
	authCfg := auth.Config{Secret: testSecret, AdminTokens: []string{testAdminToken}, Mailer: o.mailer, Logger: logger}
	if o.authCfg != nil {
		o.authCfg(&authCfg)
	}
	authRdb := e.rdb
	if o.authHook != nil {
		c := srv.Client(t)
		c.AddHook(o.authHook)
		authRdb = c
	}
	e.auth, err = auth.NewStore(authRdb, authCfg)
	if err != nil {
		t.Fatal(err)
	}
	e.pres = progress.NewPresence(e.rdb, e.log, progress.PresenceConfig{Logger: logger})
	e.hub = progress.NewHub(e.rdb, e.log, progress.HubConfig{Presence: e.pres, Logger: logger})
	o.web.Logger = logger
	// Tests dial every socket from 127.0.0.1: per-address caps are
	// tested on their own (limits_test.go).
	if o.web.Limits.MaxConnsPerIP == 0 {
		o.web.Limits.MaxConnsPerIP = 1 << 20
	}
	if o.web.Limits.MaxSocketsPerIP == 0 {
		o.web.Limits.MaxSocketsPerIP = 1 << 20
	}
	var sched *jobs.Scheduler
	if o.schedule != "" {
		entries, err := jobs.ParseSchedule([]byte(o.schedule), reg)
		if err != nil {
			t.Fatal(err)
		}
		sched, err = jobs.NewScheduler(e.jobs, e.rdb, entries, jobs.SchedulerConfig{
			Owner: auth.AdminUserID, Logger: logger, CatchUp: time.Millisecond,
			Lease: progress.LeaderConfig{Key: "ts:scheduler", TTL: 500 * time.Millisecond, Logger: logger},
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = sched.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	e.web = New(Deps{Jobs: e.jobs, Hub: e.hub, Log: e.log, Auth: e.auth, Presence: e.pres, Metrics: e.mx, Schedules: sched}, o.web)
	// Served as cmd/api serves it: its http.Server and listener.
	e.http = httptest.NewUnstartedServer(nil)
	e.http.Config = e.web.HTTPServer()
	if o.listen != nil {
		e.http.Listener = o.listen(e.http.Listener)
	}
	e.http.Listener = e.web.Listener(e.http.Listener)
	e.http.Start()
	e.client = e.newBrowser()
	if o.dash != nil {
		cfg := *o.dash
		cfg.Publish, cfg.Queues, cfg.Logger = true, reg.Queues(), logger
		e.dash, err = dashboard.New(dashboard.Deps{Redis: e.rdb, Log: e.log, Jobs: e.jobs, Hub: e.hub, Sockets: e.web.Sockets, Counts: e.counts}, cfg)
		if err != nil {
			t.Fatal(err)
		}
		e.dash.Start()
		t.Cleanup(func() { e.dash.Stop(context.Background()) })
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.web.Shutdown(ctx)
		e.http.Close()
		e.pres.Shutdown(ctx)
		_ = e.hub.Shutdown(ctx)
	})
	return e
}

// newBrowser returns an HTTP client with its own cookie jar: another
// browser, so another guest. Every answer it gets is checked against the
// OpenAPI document (openapi_test.go).
func (e *testEnv) newBrowser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Transport: openAPICheck{t: e.t, spec: loadOpenAPI(e.t), done: e.ended}}
}

// do sends an HTTP request as the env's browser, with a JSON body (nil
// for none) and returns the status and the decoded body.
func (e *testEnv) do(method, path string, body any, header ...string) (int, map[string]any, http.Header) {
	e.t.Helper()
	return e.doAs(e.client, method, path, body, header...)
}

// doAs is do from another client (another browser, or none at all).
func (e *testEnv) doAs(client *http.Client, method, path string, body any, header ...string) (int, map[string]any, http.Header) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		switch b := body.(type) {
		case string:
			rd = strings.NewReader(b)
		case []byte:
			rd = bytes.NewReader(b)
		default:
			raw, _ := json.Marshal(b)
			rd = bytes.NewReader(raw)
		}
	}
	req, err := http.NewRequest(method, e.http.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return res.StatusCode, out, res.Header
}

// submit starts a job and returns its id.
func (e *testEnv) submit(typ string, params map[string]any) string {
	e.t.Helper()
	status, body, _ := e.do("POST", "/api/jobs", map[string]any{"type": typ, "params": params})
	if status != http.StatusAccepted {
		e.t.Fatalf("submit %s: status %d body %v", typ, status, body)
	}
	return body["id"].(string)
}

// wsClient is a real WebSocket client that decodes frames.
type wsClient struct {
	t    testing.TB
	conn *websocket.Conn
}

// dial opens a socket as the env's browser.
func (e *testEnv) dial(header ...string) *wsClient {
	e.t.Helper()
	return e.dialAs(e.client, header...)
}

// dialAs opens a socket with client's cookies.
func (e *testEnv) dialAs(client *http.Client, header ...string) *wsClient {
	e.t.Helper()
	return dialWSJar(e.t, client.Jar, "ws"+strings.TrimPrefix(e.http.URL, "http")+"/ws", header...)
}

func dialWS(t testing.TB, url string, header ...string) *wsClient {
	t.Helper()
	return dialWSJar(t, nil, url, header...)
}

func dialWSJar(t testing.TB, jar http.CookieJar, url string, header ...string) *wsClient {
	t.Helper()
	h := http.Header{}
	for i := 0; i+1 < len(header); i += 2 {
		h.Set(header[i], header[i+1])
	}
	d := *websocket.DefaultDialer
	d.Jar = jar
	conn, res, err := d.Dial(url, h)
	if err != nil {
		status := 0
		if res != nil {
			status = res.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	c := &wsClient{t: t, conn: conn}
	t.Cleanup(func() { _ = conn.Close() })
	return c
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	if err := c.conn.WriteJSON(v); err != nil {
		c.t.Fatalf("write frame: %v", err)
	}
}

// frame is a decoded server frame; fields cover every frame type.
type frame = wire.ServerFrame

// read returns the next frame, failing the test after 10 s.
func (c *wsClient) read() frame {
	c.t.Helper()
	f, err := c.tryRead(10 * time.Second)
	if err != nil {
		c.t.Fatalf("read frame: %v", err)
	}
	return f
}

func (c *wsClient) tryRead(timeout time.Duration) (frame, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	var f frame
	_, data, err := c.conn.ReadMessage()
	if err != nil {
		return f, err
	}
	if err := json.Unmarshal(data, &f); err != nil {
		c.t.Fatalf("server sent non-JSON frame %q: %v", data, err)
	}
	return f, nil
}

// readUntil reads frames until one satisfies ok, returning all read.
func (c *wsClient) readUntil(ok func(frame) bool) []frame {
	c.t.Helper()
	var got []frame
	for {
		f := c.read()
		got = append(got, f)
		if ok(f) {
			return got
		}
	}
}

// closeCode reads until the server closes the socket and returns the code.
func (c *wsClient) closeCode() int {
	c.t.Helper()
	for {
		_, err := c.tryRead(10 * time.Second)
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		c.t.Fatalf("socket ended without a close frame: %v", err)
	}
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

// isTerminalEvent reports whether f is a job's last event.
func isTerminalEvent(f frame) bool {
	if f.Type != "event" {
		return false
	}
	switch f.Event {
	case "result", "failed":
		return true
	case "state":
		var d struct{ State string }
		_ = json.Unmarshal(f.Data, &d)
		return d.State == "canceled"
	}
	return false
}

// closeCodeOf returns the close code in a read error, or -1.
func closeCodeOf(err error) int {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

// me returns the user id of client's session (creating its guest).
func (e *testEnv) me(client *http.Client) string {
	e.t.Helper()
	status, body, _ := e.doAs(client, "GET", "/api/me", nil)
	if status != http.StatusOK {
		e.t.Fatalf("GET /api/me: %d %v", status, body)
	}
	return body["id"].(string)
}

// privateGroup returns a new browser and its user group: a group only that
// browser may watch and nothing else publishes to (unlike chat rooms,
// where presence adds events of its own).
func (e *testEnv) privateGroup() (*http.Client, string) {
	e.t.Helper()
	client := e.newBrowser()
	return client, "user:" + e.me(client)
}
