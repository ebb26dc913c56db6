package web

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"taskstream/jobs"
	"taskstream/progress"
)

// Config configures a Server. The zero value is usable: every field has a
// documented default.
type Config struct {
	// MaxBodyBytes bounds request bodies (413 too_large beyond). Default 1 MiB.
	MaxBodyBytes int64
	// MaxFrameBytes bounds socket frames from clients (close 1009 beyond).
	// Default 64 KiB.
	MaxFrameBytes int64
	// SendQueue is how many frames may wait for one slow socket; when it is
	// full the socket is closed with 1013 and the client resumes from its
	// last seq. Default 256.
	SendQueue int
	// WriteTimeout bounds one frame write to a socket. Default 10s.
	WriteTimeout time.Duration
	// PingInterval is how often the server pings an idle socket; a socket
	// that answers nothing for two intervals is dropped. Default 25s.
	PingInterval time.Duration
	// AllowedOrigins lists extra browser origins ("https://app.example.com")
	// allowed to open sockets, besides the server's own. "*" allows any.
	AllowedOrigins []string
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
		c.SendQueue = 256
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
	return c
}

// Server is taskstream's HTTP handler. Shutdown closes its sockets.
type Server struct {
	cfg    Config
	jobs   *jobs.Service
	hub    *progress.Hub
	log    *progress.Log
	logger *slog.Logger
	router chi.Router

	mu       sync.Mutex
	conns    map[*conn]struct{}
	closing  bool
	stopCh   chan struct{} // closed by Shutdown: ends SSE and long-poll requests
	connsWG  sync.WaitGroup
	shutOnce sync.Once
}

// New returns a Server for svc's jobs, delivering events through hub and
// publishing chat messages to log.
func New(svc *jobs.Service, hub *progress.Hub, log *progress.Log, cfg Config) *Server {
	cfg = cfg.withDefaults()
	s := &Server{cfg: cfg, jobs: svc, hub: hub, log: log, logger: cfg.Logger, conns: map[*conn]struct{}{}, stopCh: make(chan struct{})}
	s.router = s.routes()
	return s
}

func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(middleware.Recoverer)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, apiErr(CodeNotFound, "no such endpoint: "+r.URL.Path))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		s.writeError(w, r, apiErr(CodeMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path))
	})
	r.Get("/", s.handleIndex)
	r.Handle("/static/*", staticHandler())
	r.Get("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	r.Get("/ws", s.handleSocket)
	r.Route("/api", func(r chi.Router) {
		r.Use(s.sameOriginWrites)
		r.Get("/job-types", s.handleJobTypes)
		r.Get("/jobs", s.handleListJobs)
		r.Post("/jobs", s.handleSubmit)
		r.Get("/jobs/{id}", s.handleGetJob)
		r.Post("/jobs/{id}/cancel", s.handleCancel)
		r.Get("/jobs/{id}/artifact", s.handleArtifact)
		r.Get("/jobs/{id}/events", s.handleJobEvents)
		r.Get("/groups/{group}/events", s.handleGroupEvents)
	})
	return r
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.router.ServeHTTP(w, r) }

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
	})
	done := make(chan struct{})
	go func() { s.connsWG.Wait(); close(done) }()
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

// originAllowed implements the Origin policy: no Origin (not a browser),
// the server's own origin, or one of Config.AllowedOrigins.
func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, a := range s.cfg.AllowedOrigins {
		if a == "*" || strings.EqualFold(strings.TrimSuffix(a, "/"), origin) {
			return true
		}
	}
	return false
}

// sameOriginWrites refuses state-changing requests that a browser sent
// from a foreign page (CSRF); requests without an Origin header come from
// programs, which carry no ambient cookies to abuse.
func (s *Server) sameOriginWrites(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
		default:
			if !s.originAllowed(r) {
				s.writeError(w, r, apiErr(CodeForbidden, "cross-origin request refused: Origin "+r.Header.Get("Origin")+" is not allowed"))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
