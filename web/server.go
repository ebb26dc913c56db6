package web

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"taskstream/jobs"
	"taskstream/progress"
	"taskstream/web/auth"
	"taskstream/web/metrics"
)

// Config configures a Server. The zero value is usable: every field has a
// documented default.
type Config struct {
	// MaxBodyBytes bounds request bodies (413 too_large beyond). Default 1 MiB.
	MaxBodyBytes int64
	// MaxFrameBytes bounds socket frames from clients (close 1009 beyond).
	// Default 64 KiB.
	MaxFrameBytes int64
	// SendQueue and SendQueueBytes bound what may wait for one slow
	// socket, in frames and in bytes; beyond either the socket is closed
	// with 1013 and the client resumes from its last seq. Defaults 1024
	// frames and 1 MiB.
	SendQueue      int
	SendQueueBytes int
	// NoSendRing makes every socket's batch go out with its own write(2).
	// By default (false) the flusher goroutines send a fan-out's batches
	// of many sockets through an io_uring each where the kernel gives one
	// (Linux 5.4 on, not refused by kernel.io_uring_disabled or a seccomp
	// filter; a refusal is logged once per goroutine and they write
	// instead), one io_uring_enter(2) per chunk of sockets: on this
	// project's 2-core guest it took a fifth off the server's CPU in a
	// 100,000-deliveries/s fan-out (BENCHMARKS.md §0).
	NoSendRing bool
	// WriteTimeout bounds writing a frame to a socket, with the frames
	// queued behind it when it started. Default 10s.
	WriteTimeout time.Duration
	// PingInterval is how often the server pings an idle socket; a socket
	// that answers nothing for two intervals is dropped. Default 25s.
	PingInterval time.Duration
	// AllowedOrigins lists extra browser origins ("https://app.example.com")
	// allowed to open sockets, besides the server's own. "*" allows any.
	AllowedOrigins []string
	// TrustedProxies are the networks of reverse proxies whose
	// X-Forwarded-For is believed when counting per-IP limits (sign-in).
	// Default none: the peer address counts.
	TrustedProxies []netip.Prefix
	// SSEHeartbeat is how often an idle SSE stream gets a comment line, so
	// proxies and browsers keep it open. Default 15s.
	SSEHeartbeat time.Duration
	// FrameRate and FrameBurst limit frames from one socket; frames over
	// the limit get a rate_limited error and are dropped. Defaults 50 per
	// second, burst 100.
	FrameRate  float64
	FrameBurst int
	// SessionTTL is the session cookie's lifetime (the session itself
	// lives as long as the auth store keeps it). Default 30 days.
	SessionTTL time.Duration
	// SecureCookies marks the session cookie Secure even on plain HTTP
	// requests (behind a TLS-terminating proxy). Default false; requests
	// that arrive over TLS always get Secure cookies.
	SecureCookies bool
	// JobRate and JobBurst limit job submissions per user, across all
	// replicas, so one client cannot fill the queue. Defaults 1 per
	// second, burst 20.
	JobRate  float64
	JobBurst int
	// ChatRate and ChatBurst limit chat messages per user, across all
	// replicas. Defaults 5 per second, burst 10.
	ChatRate  float64
	ChatBurst int
	// PublishBatch bounds the events of one POST /api/publish/batch
	// (413 too_large beyond); the body is bounded by MaxBodyBytes, and
	// each event's data, on both publish routes, by MaxFrameBytes.
	// Default 100.
	PublishBatch int
	// CredentialRecheck is how often open sockets recheck that their
	// session or token is still valid, besides the revocation signal.
	// Default 30s.
	CredentialRecheck time.Duration
	// AdminEmails are the signed-in users (by email, case-insensitive)
	// who may act on the queues from the dashboard, besides admin tokens.
	// Default none.
	AdminEmails []string
	// Limits bound connections, header and body reads, and sockets per
	// client address; see Limits for each default.
	Limits Limits
	// Logger receives request and connection diagnostics. Default slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.MaxFrameBytes <= 0 {
		c.MaxFrameBytes = 64 << 10
	}
	if c.SendQueue <= 0 {
		c.SendQueue = 1024
	}
	if c.SendQueueBytes <= 0 {
		c.SendQueueBytes = 1 << 20
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 25 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.SSEHeartbeat <= 0 {
		c.SSEHeartbeat = 15 * time.Second
	}
	if c.FrameRate <= 0 {
		c.FrameRate = 50
	}
	if c.FrameBurst <= 0 {
		c.FrameBurst = 100
	}
	if c.SessionTTL <= 0 {
		c.SessionTTL = 30 * 24 * time.Hour
	}
	if c.JobRate <= 0 {
		c.JobRate = 1
	}
	if c.JobBurst <= 0 {
		c.JobBurst = 20
	}
	if c.ChatRate <= 0 {
		c.ChatRate = 5
	}
	if c.ChatBurst <= 0 {
		c.ChatBurst = 10
	}
	if c.PublishBatch <= 0 {
		c.PublishBatch = 100
	}
	if c.CredentialRecheck <= 0 {
		c.CredentialRecheck = 30 * time.Second
	}
	c.Limits = c.Limits.withDefaults()
	return c
}

// Deps are the parts a Server serves.
type Deps struct {
	Jobs     *jobs.Service
	Hub      *progress.Hub
	Log      *progress.Log
	Auth     *auth.Store
	Presence *progress.Presence
	// Metrics receives the server's counts and is served at GET /metrics;
	// the server also makes Hub's counts part of it. Default: a fresh
	// metrics.Metrics of the server's own, without job types or queues.
	Metrics *metrics.Metrics
	// Schedules lists the periodic jobs for GET /api/schedules. Default
	// nil: the list is empty.
	Schedules *jobs.Scheduler
}

// Server is taskstream's HTTP handler. Shutdown closes its sockets.
type Server struct {
	cfg    Config
	jobs   *jobs.Service
	hub    *progress.Hub
	log    *progress.Log
	auth   *auth.Store
	pres   *progress.Presence
	mx     *metrics.Metrics
	sched  *jobs.Scheduler
	logger *slog.Logger
	router chi.Router

	origins *originPolicy // who may write and open sockets (headers.go)

	bgCancel context.CancelFunc
	bg       sync.WaitGroup

	mu       sync.Mutex
	conns    map[*conn]struct{}
	streams  map[*stream]struct{} // SSE and long-poll requests in flight
	closing  bool
	stopCh   chan struct{} // closed by Shutdown: ends SSE and long-poll requests
	connsWG  sync.WaitGroup
	shutOnce sync.Once
	flush    *flusher   // direct socket writes (writer.go)
	stacks   *stackPool // deep calls of handshakes and socket frames (stackpool.go)

	socketsPerIP map[string]int // open sockets by client address, under mu (Limits.MaxSocketsPerIP)
}

// New returns a Server for d and starts its background work (closing the
// sockets of revoked sessions and tokens); Shutdown stops it.
func New(d Deps, cfg Config) *Server {
	cfg = cfg.withDefaults()
	if d.Metrics == nil {
		d.Metrics = metrics.New(metrics.Config{Logger: cfg.Logger})
	}
	s := &Server{
		cfg: cfg, jobs: d.Jobs, hub: d.Hub, log: d.Log, auth: d.Auth, pres: d.Presence, mx: d.Metrics, sched: d.Schedules, logger: cfg.Logger,
		conns: map[*conn]struct{}{}, streams: map[*stream]struct{}{}, socketsPerIP: map[string]int{}, stopCh: make(chan struct{}),
		flush: newFlusher(flushersFor(runtime.GOMAXPROCS(0)), !cfg.NoSendRing, cfg.Logger), stacks: newStackPool(maxParkedStacks),
	}
	var bad []string
	s.origins, bad = newOriginPolicy(cfg.AllowedOrigins)
	if len(bad) > 0 {
		// cmd/api refuses these at start-up; a library caller is told here.
		s.logger.Warn("ignoring malformed allowed origins (want scheme://host[:port])", "origins", bad)
	}
	s.mx.WatchHub(d.Hub)
	s.mx.WatchSockets(s.openByTransport)
	s.router = s.routes()
	ctx, cancel := context.WithCancel(context.Background())
	s.bgCancel = cancel
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.watchRevocations(ctx, cfg.CredentialRecheck) }()
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.pinger(ctx) }()
	return s
}

func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	// GetHead: load balancers and uptime checks probe with HEAD; answer it
	// like GET (net/http drops the body) instead of 405.
	r.Use(s.withClientIP, s.accessLog, s.recoverer, middleware.GetHead)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, apiErr(CodeNotFound, "no such endpoint: "+r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, apiErr(CodeMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path))
	})
	r.Get("/static/*", s.staticHandler())
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	r.Get("/readyz", s.handleReady)
	// Outside authenticate: a scraper gets no guest session.
	r.Method(http.MethodGet, "/metrics", s.mx.Handler())
	r.Group(func(r chi.Router) {
		r.Use(s.authenticate, s.refuseScoped)
		r.Get("/", s.handleIndex)
		r.Get("/chat/{room}", s.handleChatPage)
		r.Get("/dashboard", s.handleDashboardPage)
		r.Get("/jobs/{id}", s.handleJobPage)
		r.Get("/ws", s.handleSocket)
	})
	r.Route("/api", func(r chi.Router) {
		r.Use(s.sameOriginWrites, s.authenticate)
		// The server API for backends (api_server.go): scoped tokens may
		// use these, and GET /api/me to see who they are.
		r.Post("/publish", s.handlePublish)
		r.Post("/publish/batch", s.handlePublishBatch)
		r.Get("/groups/{group}/history", s.handleHistory)
		r.Get("/groups/{group}/presence", s.handlePresence)
		r.Post("/users/{id}/disconnect", s.handleDisconnect)
		r.Get("/me", s.handleMe)
		r.Get("/openapi.json", s.handleOpenAPI)
		r.Group(func(r chi.Router) {
			r.Use(s.refuseScoped)
			r.Post("/auth/code", s.handleRequestCode)
			r.Post("/auth/login", s.handleLogin)
			r.Post("/auth/logout", s.handleLogout)
			r.Post("/me", s.handleSetName)
			r.Get("/tokens", s.handleListTokens)
			r.Post("/tokens", s.handleCreateToken)
			r.Delete("/tokens/{id}", s.handleRevokeToken)
			r.Post("/notify", s.handleNotify)
			r.Post("/groups/{group}/messages", s.handlePostMessage)
			r.Get("/job-types", s.handleJobTypes)
			r.Get("/jobs", s.handleListJobs)
			r.Post("/jobs", s.handleSubmit)
			r.Get("/jobs/{id}", s.handleGetJob)
			r.Post("/jobs/{id}/cancel", s.handleCancel)
			r.Get("/jobs/{id}/artifact", s.handleArtifact)
			r.Get("/jobs/{id}/events", s.handleJobEvents)
			r.Get("/schedules", s.handleSchedules)
			r.Get("/groups/{group}/events", s.handleGroupEvents)
			r.Route("/admin", s.adminRoutes)
		})
	})
	return r
}

// ServeHTTP implements http.Handler: every response gets the security
// headers; a connection over a cap gets 429; a body gets its deadline.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	setSecurityHeaders(w.Header())
	if s.rejectOverCap(w, r) {
		return
	}
	s.limitBody(w, r)
	if len(r.Header["Upgrade"]) == 0 {
		s.router.ServeHTTP(w, r)
		return
	}
	// A socket's handshake goes deep (the router, the middleware, the
	// session read's Redis pipeline, the upgrade) on net/http's goroutine
	// for the connection, new for every connection: it runs on a pooled
	// goroutine whose stack already grew instead (stackpool.go).
	if p := s.stacks.run(func() { s.router.ServeHTTP(w, r) }); p != nil {
		if p.value == http.ErrAbortHandler {
			panic(p.value) // net/http's way to abort a response
		}
		panic(p)
	}
}

// maxParkedStacks bounds the goroutines the stack pool keeps between
// calls: about as many as handshakes and subscribes run at once in a
// reconnect storm. Each keeps a stack of tens of KiB at most, which GCs
// shrink while it is parked.
const maxParkedStacks = 128

// Shutdown closes every socket with 1001 (going away: reconnect and
// resume) and waits for their goroutines, or for ctx. New sockets are
// refused with 503 from then on. Safe to call more than once. Call it
// before http.Server.Shutdown, which does not see hijacked connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		close(s.stopCh)
		conns := make([]*conn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			c.close(closeGoingAway, "server shutting down")
		}
		s.bgCancel()
	})
	done := make(chan struct{})
	// The flusher closes once every socket ended: until then a closing
	// socket's last frames may still go through it.
	go func() { s.connsWG.Wait(); s.bg.Wait(); s.flush.close(); s.stacks.close(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ConnCount returns the number of open sockets.
func (s *Server) ConnCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Sockets returns the open sockets and streams by transport ("websocket",
// "sse", "longpoll"): the figures this replica reports to the dashboard.
func (s *Server) Sockets() map[string]int { return s.openByTransport() }

// openByTransport counts the open sockets and streams by transport, for
// the taskstream_sockets gauge.
func (s *Server) openByTransport() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{transportWebSocket: len(s.conns)}
	for st := range s.streams {
		out[st.transport]++
	}
	return out
}
