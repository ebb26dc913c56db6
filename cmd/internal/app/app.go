package app

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"taskstream/jobs"
	"taskstream/progress"
	"taskstream/web"
	"taskstream/web/auth"
)

// APIConfig configures the API process.
type APIConfig struct {
	Common
	Worker
	Addr           string
	RunWorker      bool
	AllowedOrigins []string
	SendQueue      int
	SessionSecret  string
	SecureCookies  bool
	AdminTokens    []string
	JobRate        float64
	JobBurst       int
	ChatRate       float64
	ChatBurst      int
	PresenceTTL    time.Duration
	SMTP           auth.SMTPMailer
	TrustedProxies []netip.Prefix
}

// ParseAPI reads the API's configuration from args and the environment.
func ParseAPI(args []string) (APIConfig, error) {
	var c APIConfig
	env := &envParser{}
	fs := flag.NewFlagSet("api", flag.ContinueOnError)
	c.Common.register(fs, env)
	c.Worker.register(fs, env)
	defAddr := ":8080"
	if p := os.Getenv("PORT"); p != "" {
		defAddr = ":" + p
	}
	fs.StringVar(&c.Addr, "addr", env.str("ADDR", defAddr), "listen address (default :8080, or :$PORT when PORT is set)")
	fs.BoolVar(&c.RunWorker, "worker", env.str("RUN_WORKER", "") == "1", "also run a worker in this process (always on in the embedded default)")
	fs.IntVar(&c.SendQueue, "send-queue", env.int("SEND_QUEUE", 1024), "frames queued per socket (at most 1 MiB) before a slow client is dropped with 1013")
	fs.StringVar(&c.SessionSecret, "session-secret", env.str("SESSION_SECRET", ""), "secret (32+ bytes) that signs session cookies; the same on every replica (default: random, sessions end on restart)")
	fs.BoolVar(&c.SecureCookies, "secure-cookies", env.str("SECURE_COOKIES", "") == "1", "mark session cookies Secure even on plain HTTP (behind a TLS proxy)")
	c.AdminTokens = env.strings("ADMIN_TOKENS")
	fs.Float64Var(&c.JobRate, "job-rate", env.float("JOB_RATE", 1), "job submissions per second per user")
	fs.IntVar(&c.JobBurst, "job-burst", env.int("JOB_BURST", 20), "job submission burst per user")
	fs.Float64Var(&c.ChatRate, "chat-rate", env.float("CHAT_RATE", 5), "chat messages per second per user")
	fs.IntVar(&c.ChatBurst, "chat-burst", env.int("CHAT_BURST", 10), "chat message burst per user")
	fs.DurationVar(&c.PresenceTTL, "presence-ttl", env.duration("PRESENCE_TTL", 30*time.Second), "how long a replica that died still counts its users present")
	fs.StringVar(&c.SMTP.Host, "smtp-host", env.str("SMTP_HOST", ""), "SMTP server for sign-in codes (empty: codes are written to the log)")
	fs.IntVar(&c.SMTP.Port, "smtp-port", env.int("SMTP_PORT", 587), "SMTP port")
	fs.StringVar(&c.SMTP.User, "smtp-user", env.str("SMTP_USER", ""), "SMTP user (PLAIN auth, over TLS only)")
	c.SMTP.Password = env.str("SMTP_PASSWORD", "") // env only: flags show up in ps
	fs.StringVar(&c.SMTP.From, "smtp-from", env.str("SMTP_FROM", "taskstream@localhost"), "From address of sign-in mails")
	fs.StringVar(&c.SMTP.TLS, "smtp-tls", env.str("SMTP_TLS", "starttls"), "starttls (when offered), tls (implicit, port 465) or none")
	for _, cidr := range env.strings("TRUSTED_PROXIES") {
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			return c, fmt.Errorf("TRUSTED_PROXIES: %q is not a network like 10.0.0.0/8: %w", cidr, err)
		}
		c.TrustedProxies = append(c.TrustedProxies, p)
	}
	origins := env.strings("ALLOWED_ORIGINS")
	fs.Func("allowed-origin", "extra browser origin allowed for sockets and writes (repeatable; env ALLOWED_ORIGINS, comma-separated)", func(s string) error {
		origins = append(origins, s)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	c.AllowedOrigins = origins
	if c.SessionSecret != "" && len(c.SessionSecret) < 32 {
		return c, errors.New("SESSION_SECRET must be at least 32 bytes")
	}
	switch c.SMTP.TLS {
	case "starttls", "tls", "none":
	default:
		return c, fmt.Errorf("SMTP_TLS=%q: want starttls, tls or none", c.SMTP.TLS)
	}
	return c, env.err
}

// WorkerConfig configures the worker process.
type WorkerConfig struct {
	Common
	Worker
}

// ParseWorker reads the worker's configuration from args and the environment.
func ParseWorker(args []string) (WorkerConfig, error) {
	var c WorkerConfig
	env := &envParser{}
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	c.Common.register(fs, env)
	c.Worker.register(fs, env)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.RedisURL == "" {
		return c, errors.New("REDIS_URL (or -redis-url) is required: a worker must share Redis with the API")
	}
	return c, env.err
}

// Core is the set of components every process builds on one Redis.
type Core struct {
	Redis    redis.UniversalClient
	Log      *progress.Log
	Registry *jobs.Registry
	Jobs     *jobs.Service
	logger   *slog.Logger
	embedded *miniredis.Miniredis
}

// Open connects to Redis (or starts the embedded one when c.RedisURL is
// empty) and builds the log, the registry and the job service.
func Open(ctx context.Context, c Common, logger *slog.Logger) (*Core, error) {
	core := &Core{logger: logger}
	url, mode := c.RedisURL, c.RedisMode
	if url == "" {
		m := miniredis.NewMiniRedis()
		// Without ClockTTL, TTLs never decrease: logs, job records and
		// asynq's unique locks would never expire.
		m.ClockTTL(true)
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("start embedded redis: %w", err)
		}
		core.embedded = m
		url, mode = "redis://"+m.Addr(), progress.ModeSingle
	}
	rdb, err := progress.OpenRedis(ctx, url, mode)
	if err != nil {
		core.Close()
		return nil, err
	}
	core.Redis = rdb
	core.Log = progress.NewLog(rdb, progress.LogConfig{
		Prefix: c.Prefix, MaxLen: c.LogMaxLen, TTL: c.LogTTL, KindMaxLen: map[string]int64{"chat": c.ChatHistory},
	})
	reg, err := jobs.NewRegistry(jobs.Builtin()...)
	if err != nil {
		core.Close()
		return nil, err
	}
	core.Registry = reg
	core.Jobs = jobs.NewService(rdb, reg, core.Log, jobs.Config{
		Prefix: c.Prefix, Retention: c.Retention, ArtifactDir: c.ArtifactDir, Logger: logger,
	})
	return core, nil
}

// Embedded reports whether the core runs on the in-process Redis.
func (c *Core) Embedded() bool { return c.embedded != nil }

// NewWorker builds a worker on the core.
func (c *Core) NewWorker(w Worker, reportRate float64) (*jobs.Worker, error) {
	if err := w.validate(); err != nil {
		return nil, err
	}
	queues, err := w.queues()
	if err != nil {
		return nil, err
	}
	return jobs.NewWorker(c.Jobs, c.Redis, jobs.WorkerConfig{
		Concurrency: w.Concurrency, Queues: queues, ShutdownTimeout: w.ShutdownTimeout,
		PollInterval: w.PollInterval, Heartbeat: w.Heartbeat, LostAfter: w.LostAfter, ReconcileInterval: w.ReconcileInterval,
		Reporter: progress.ReporterConfig{MaxRate: reportRate, Logger: c.logger},
	}), nil
}

// Close releases Redis (and stops the embedded one).
func (c *Core) Close() {
	if c.Redis != nil {
		_ = c.Redis.Close()
	}
	if c.embedded != nil {
		c.embedded.Close()
	}
}

// RunAPI serves the API until ctx ends, then shuts down in order:
//  1. sockets get close 1001, so clients reconnect (to another replica) and
//     resume from their last seq while this one drains;
//  2. the HTTP server finishes in-flight requests;
//  3. this replica's chat presence is removed (users who were only here
//     leave at once instead of after PRESENCE_TTL);
//  4. the embedded worker lets running jobs finish or hands them back to
//     the queue (it needs Redis, so it stops before Redis);
//  5. the hub drops its Redis subscription; Redis is closed last.
func RunAPI(ctx context.Context, c APIConfig, logger *slog.Logger) error {
	core, err := Open(ctx, c.Common, logger)
	if err != nil {
		return err
	}
	defer core.Close()

	var worker *jobs.Worker
	if c.RunWorker || core.Embedded() {
		if core.Embedded() && c.PollInterval == time.Second {
			// In-process Redis makes polling cheap: pick jobs up faster.
			c.PollInterval = 200 * time.Millisecond
		}
		if worker, err = core.NewWorker(c.Worker, c.ReportRate); err != nil {
			return err
		}
		if err := worker.Start(); err != nil {
			return err
		}
	}
	secret := []byte(c.SessionSecret)
	if len(secret) == 0 {
		secret = make([]byte, 32)
		_, _ = rand.Read(secret)
		logger.Warn("SESSION_SECRET is not set: using a random one, so sessions end when this process restarts and other replicas cannot read its cookies; set SESSION_SECRET (32+ bytes) in production")
	}
	var mailer auth.Mailer = auth.LogMailer{Logger: logger}
	if c.SMTP.Host != "" {
		mailer = c.SMTP
	}
	store, err := auth.NewStore(core.Redis, auth.Config{
		Prefix: c.Prefix, Secret: secret, AdminTokens: c.AdminTokens, Mailer: mailer, Logger: logger,
	})
	if err != nil {
		return err
	}
	hub := progress.NewHub(core.Redis, core.Log, progress.HubConfig{Logger: logger})
	presence := progress.NewPresence(core.Redis, core.Log, progress.PresenceConfig{TTL: c.PresenceTTL, Logger: logger})
	srv := web.New(web.Deps{Jobs: core.Jobs, Hub: hub, Log: core.Log, Auth: store, Presence: presence}, web.Config{
		AllowedOrigins: c.AllowedOrigins, SendQueue: c.SendQueue, SecureCookies: c.SecureCookies,
		JobRate: c.JobRate, JobBurst: c.JobBurst, ChatRate: c.ChatRate, ChatBurst: c.ChatBurst, TrustedProxies: c.TrustedProxies, Logger: logger,
	})
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.Addr, err)
	}
	httpSrv := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- httpSrv.Serve(ln) }()
	logger.Info("listening", "addr", ln.Addr().String(), "url", "http://"+displayAddr(ln.Addr()), "worker", worker != nil)

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("http server: %w", err)
	}
	logger.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		logger.Warn("closing sockets", "err", err)
	}
	if err := httpSrv.Shutdown(shutCtx); err != nil {
		logger.Warn("stopping http server", "err", err)
	}
	presence.Shutdown(shutCtx)
	if worker != nil {
		worker.Shutdown()
	}
	if err := hub.Shutdown(shutCtx); err != nil {
		logger.Warn("stopping hub", "err", err)
	}
	logger.Info("stopped")
	return nil
}

// RunWorker runs a worker until ctx ends, then lets running jobs finish or
// hands them back to the queue.
func RunWorker(ctx context.Context, c WorkerConfig, logger *slog.Logger) error {
	core, err := Open(ctx, c.Common, logger)
	if err != nil {
		return err
	}
	defer core.Close()
	worker, err := core.NewWorker(c.Worker, c.ReportRate)
	if err != nil {
		return err
	}
	if err := worker.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	logger.Info("shutting down")
	worker.Shutdown()
	return nil
}

func displayAddr(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil || host == "::" || host == "0.0.0.0" || host == "" {
		return "localhost:" + port
	}
	return a.String()
}
