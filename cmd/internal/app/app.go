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
	"net/mail"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"taskstream/jobs"
	"taskstream/progress"
	"taskstream/web"
	"taskstream/web/auth"
	"taskstream/web/dashboard"
	"taskstream/web/metrics"
	"taskstream/wire"
)

// APIConfig configures the API process.
type APIConfig struct {
	Common
	Worker
	Dashboard
	Addr           string
	RunWorker      bool
	AllowedOrigins []string
	SendQueue      int
	SessionSecret  string
	SecureCookies  bool
	SendRing       bool
	AdminTokens    []string
	JobRate        float64
	JobBurst       int
	ChatRate       float64
	ChatBurst      int
	PresenceTTL    time.Duration
	PresenceGrace  time.Duration // 0: a stopping replica removes its presence entries at once
	SMTP           auth.SMTPMailer
	TrustedProxies []netip.Prefix
	Limits         web.Limits
	// ScheduleFile (SCHEDULE_FILE) is the JSON file of periodic jobs,
	// Schedule its entries (checked at start-up); ScheduleCatchUp
	// (SCHEDULE_CATCHUP, default 1m) is how late a tick may still be
	// submitted after a leader change.
	ScheduleFile    string
	Schedule        []jobs.ScheduleEntry
	ScheduleCatchUp time.Duration
	// SubscribeTimeout (SUBSCRIBE_TIMEOUT, default
	// progress.DefaultAnswerTimeout, 5s) is the hub's AnswerTimeout: how
	// long a new subscriber waits for its first answer from a Redis that
	// accepts connections but does not answer, before it fails as
	// unavailable (a socket is closed with 1013).
	SubscribeTimeout time.Duration
	// HistoryReadBatch (HISTORY_READ_BATCH, default
	// progress.DefaultReadBatch, 64) is the hub's ReadBatch: how many
	// groups' history reads share one round trip; 1 reads each alone.
	HistoryReadBatch int
	// OwnerCache (OWNER_CACHE, default jobs.DefaultOwnerCache, 16384) is
	// how many owners of the jobs it submitted this api remembers, so
	// that a watcher's ownership check costs no Redis round trip; 0
	// remembers none (see ownerCache).
	OwnerCache int
}

// hubConfig is the hub's configuration from c's settings (RunAPI adds
// presence and the logger).
func (c APIConfig) hubConfig() progress.HubConfig {
	return progress.HubConfig{AnswerTimeout: c.SubscribeTimeout, ReadBatch: c.HistoryReadBatch}
}

// maxOwnerCache bounds OWNER_CACHE: about 600 MB of owners, far beyond
// any retention's worth of submits one api takes; a larger figure is a
// typo.
const maxOwnerCache = 1 << 22

// ownerCache is jobs.Config.OwnerCache for OWNER_CACHE, whose 0 means
// none (jobs.Config's 0 means its default, and a negative none).
func (c APIConfig) ownerCache() int {
	if c.OwnerCache == 0 {
		return -1
	}
	return c.OwnerCache
}

// HelpError is what ParseAPI and ParseWorker return for -h or -help:
// Usage is the text to print (every flag with its environment variable).
type HelpError struct{ Usage string }

func (e *HelpError) Error() string { return "help requested" }

// Unwrap makes errors.Is(err, flag.ErrHelp) hold.
func (e *HelpError) Unwrap() error { return flag.ErrHelp }

// parseFlags parses args into fs with the flag package's own output
// silenced: a bad flag becomes one error line, -h a *HelpError.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var out strings.Builder
	fs.SetOutput(&out)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return &HelpError{Usage: out.String()}
	}
	return err
}

// ParseAPI reads the API's configuration from args and the environment,
// and checks every setting: an error names the setting and what it wants.
func ParseAPI(args []string) (APIConfig, error) {
	var c APIConfig
	env := &envParser{}
	fs := flag.NewFlagSet("api", flag.ContinueOnError)
	c.Common.register(fs, env)
	c.Worker.register(fs, env)
	c.Dashboard.register(fs, env)
	defAddr := ":8080"
	port, portSet := os.LookupEnv("PORT")
	if portSet && port != "" {
		defAddr = ":" + port
	}
	fs.StringVar(&c.Addr, "addr", env.str("ADDR", defAddr), "listen address (default :8080, or :$PORT when PORT is set) (env ADDR, or PORT)")
	fs.BoolVar(&c.RunWorker, "worker", env.bool("RUN_WORKER", false), "also run a worker in this process (always on in the embedded default) (env RUN_WORKER=1)")
	fs.IntVar(&c.SendQueue, "send-queue", env.int("SEND_QUEUE", 1024), "frames queued per socket (at most 1 MiB) before a slow client is dropped with 1013 (env SEND_QUEUE)")
	fs.StringVar(&c.SessionSecret, "session-secret", env.str("SESSION_SECRET", ""), "secret (32+ bytes) that signs session cookies; the same on every replica (default: random, sessions end on restart) (env SESSION_SECRET)")
	fs.BoolVar(&c.SendRing, "send-ring", env.bool("SEND_RING", true), "send a fan-out's socket writes through io_uring, many per system call, where the kernel allows it (Linux); false: one write(2) per socket (env SEND_RING)")
	fs.BoolVar(&c.SecureCookies, "secure-cookies", env.bool("SECURE_COOKIES", false), "mark session cookies Secure even on plain HTTP (behind a TLS proxy) (env SECURE_COOKIES=1)")
	c.AdminTokens = env.strings("ADMIN_TOKENS")
	fs.Float64Var(&c.JobRate, "job-rate", env.float("JOB_RATE", 1), "job submissions per second per user (env JOB_RATE)")
	fs.IntVar(&c.JobBurst, "job-burst", env.int("JOB_BURST", 20), "job submission burst per user (env JOB_BURST)")
	fs.Float64Var(&c.ChatRate, "chat-rate", env.float("CHAT_RATE", 5), "chat messages per second per user (env CHAT_RATE)")
	fs.IntVar(&c.ChatBurst, "chat-burst", env.int("CHAT_BURST", 10), "chat message burst per user (env CHAT_BURST)")
	fs.DurationVar(&c.PresenceTTL, "presence-ttl", env.duration("PRESENCE_TTL", 30*time.Second), "how long a replica that died still counts its users present (env PRESENCE_TTL)")
	fs.DurationVar(&c.PresenceGrace, "presence-grace", env.duration("PRESENCE_GRACE", 10*time.Second), "how long a replica that shuts down leaves its users present, so that those who reconnect elsewhere are not announced as leaving and joining again; 0 removes them at once (env PRESENCE_GRACE)")
	fs.StringVar(&c.SMTP.Host, "smtp-host", env.str("SMTP_HOST", ""), "SMTP server for sign-in codes (empty: codes are written to the log) (env SMTP_HOST)")
	fs.IntVar(&c.SMTP.Port, "smtp-port", env.int("SMTP_PORT", 587), "SMTP port (env SMTP_PORT)")
	fs.StringVar(&c.SMTP.User, "smtp-user", env.str("SMTP_USER", ""), "SMTP user (PLAIN auth, over TLS only; the password comes from env SMTP_PASSWORD) (env SMTP_USER)")
	c.SMTP.Password = env.str("SMTP_PASSWORD", "") // env only: flags show up in ps
	fs.StringVar(&c.SMTP.From, "smtp-from", env.str("SMTP_FROM", "taskstream@localhost"), "From address of sign-in mails (env SMTP_FROM)")
	fs.StringVar(&c.SMTP.TLS, "smtp-tls", env.str("SMTP_TLS", "starttls"), "starttls (when offered), tls (implicit, port 465) or none (env SMTP_TLS)")
	registerLimits(fs, env, &c.Limits)
	fs.StringVar(&c.ScheduleFile, "schedule-file", env.str("SCHEDULE_FILE", ""), "JSON file of periodic jobs: {\"schedules\": [{\"name\", \"spec\", \"type\", \"params\", options}]} (default: none) (env SCHEDULE_FILE)")
	fs.DurationVar(&c.ScheduleCatchUp, "schedule-catchup", env.duration("SCHEDULE_CATCHUP", time.Minute), "a periodic job's tick missed by a leader change at most this long ago is still submitted (env SCHEDULE_CATCHUP)")
	fs.DurationVar(&c.SubscribeTimeout, "subscribe-timeout", env.duration("SUBSCRIBE_TIMEOUT", progress.DefaultAnswerTimeout), "how long a new subscription waits for its first answer from a Redis that accepts connections but does not answer, before its socket is closed with 1013 (env SUBSCRIBE_TIMEOUT)")
	fs.IntVar(&c.HistoryReadBatch, "history-read-batch", env.int("HISTORY_READ_BATCH", progress.DefaultReadBatch), "most groups' history reads (new subscriptions catching up) that share one Redis round trip; 1 reads each alone (env HISTORY_READ_BATCH)")
	fs.IntVar(&c.OwnerCache, "owner-cache", env.int("OWNER_CACHE", jobs.DefaultOwnerCache), "owners of the jobs this api submitted that it remembers, so a watcher's ownership check needs no Redis; about 150 bytes each; 0: none (env OWNER_CACHE)")
	var proxyErr error
	for _, cidr := range env.strings("TRUSTED_PROXIES") {
		p, err := netip.ParsePrefix(cidr)
		if err != nil && proxyErr == nil {
			proxyErr = fmt.Errorf("TRUSTED_PROXIES: %q is not a network like 10.0.0.0/8", cidr)
		}
		c.TrustedProxies = append(c.TrustedProxies, p)
	}
	origins := env.strings("ALLOWED_ORIGINS")
	fs.Func("allowed-origin", "extra browser origin allowed for sockets and writes, like https://app.example.com; * allows any (repeatable) (env ALLOWED_ORIGINS, comma-separated)", func(s string) error {
		origins = append(origins, s)
		return nil
	})
	if err := parseFlags(fs, args); err != nil {
		return c, err
	}
	c.AllowedOrigins = origins
	if env.err != nil {
		return c, env.err
	}
	if proxyErr != nil {
		return c, proxyErr
	}
	v := &validator{}
	if _, err := strconv.ParseUint(port, 10, 16); portSet && port != "" && err != nil {
		v.fail("PORT=%q: want a port number from 0 to 65535", port)
	}
	v.check(checkAddr("ADDR (-addr)", c.Addr))
	c.Common.validate(v)
	c.Worker.validate(v)
	c.Dashboard.validate(v)
	v.atLeast("SEND_QUEUE", "send-queue", int64(c.SendQueue), 1)
	if c.SessionSecret != "" && len(c.SessionSecret) < 32 {
		v.fail("SESSION_SECRET must be at least 32 bytes")
	}
	v.positiveRate("JOB_RATE", "job-rate", c.JobRate)
	v.atLeast("JOB_BURST", "job-burst", int64(c.JobBurst), 1)
	v.positiveRate("CHAT_RATE", "chat-rate", c.ChatRate)
	v.atLeast("CHAT_BURST", "chat-burst", int64(c.ChatBurst), 1)
	v.positiveDuration("PRESENCE_TTL", "presence-ttl", c.PresenceTTL)
	if c.PresenceGrace < 0 {
		v.fail("PRESENCE_GRACE (-presence-grace) is %v: want 0 or more", c.PresenceGrace)
	}
	if c.SMTP.Port < 1 || c.SMTP.Port > 65535 {
		v.fail("SMTP_PORT (-smtp-port) is %d: want 1 to 65535", c.SMTP.Port)
	}
	if _, err := mail.ParseAddress(c.SMTP.From); err != nil {
		v.fail("SMTP_FROM (-smtp-from) %q: want a mail address", c.SMTP.From)
	}
	switch c.SMTP.TLS {
	case "starttls", "tls", "none":
	default:
		v.fail("SMTP_TLS=%q: want starttls, tls or none", c.SMTP.TLS)
	}
	for _, o := range c.AllowedOrigins {
		if !web.ValidOrigin(o) {
			v.fail("ALLOWED_ORIGINS (-allowed-origin) %q: want scheme://host[:port] with http or https, or *", o)
		}
	}
	validateLimits(v, c.Limits)
	v.positiveDuration("SCHEDULE_CATCHUP", "schedule-catchup", c.ScheduleCatchUp)
	v.positiveDuration("SUBSCRIBE_TIMEOUT", "subscribe-timeout", c.SubscribeTimeout)
	v.atLeast("HISTORY_READ_BATCH", "history-read-batch", int64(c.HistoryReadBatch), 1)
	v.atLeast("OWNER_CACHE", "owner-cache", int64(c.OwnerCache), 0)
	v.atMost("OWNER_CACHE", "owner-cache", int64(c.OwnerCache), maxOwnerCache)
	if c.ScheduleFile != "" && v.err == nil {
		reg, err := jobs.NewRegistry(jobs.Builtin()...)
		if err == nil {
			c.Schedule, err = jobs.LoadSchedule(c.ScheduleFile, reg)
		}
		if err != nil {
			v.fail("SCHEDULE_FILE (-schedule-file) %s: %v", c.ScheduleFile, err)
		}
	}
	return c, v.err
}

// WorkerConfig configures the worker process.
type WorkerConfig struct {
	Common
	Worker
	// MetricsAddr is where the worker serves GET /metrics; empty (the
	// default) serves none.
	MetricsAddr string
}

// ParseWorker reads the worker's configuration from args and the
// environment, and checks every setting.
func ParseWorker(args []string) (WorkerConfig, error) {
	var c WorkerConfig
	env := &envParser{}
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	c.Common.register(fs, env)
	c.Worker.register(fs, env)
	fs.StringVar(&c.MetricsAddr, "metrics-addr", env.str("METRICS_ADDR", ""), "address of the worker's Prometheus endpoint GET /metrics, e.g. :9100 (default: none) (env METRICS_ADDR)")
	if err := parseFlags(fs, args); err != nil {
		return c, err
	}
	if env.err != nil {
		return c, env.err
	}
	if c.RedisURL == "" {
		return c, errors.New("REDIS_URL (or -redis-url) is required: a worker must share Redis with the API")
	}
	v := &validator{}
	c.Common.validate(v)
	c.Worker.validate(v)
	if c.MetricsAddr != "" {
		v.check(checkAddr("METRICS_ADDR (-metrics-addr)", c.MetricsAddr))
	}
	return c, v.err
}

// Core is the set of components every process builds on one Redis.
type Core struct {
	Redis    redis.UniversalClient
	Log      *progress.Log
	Registry *jobs.Registry
	Jobs     *jobs.Service
	// Metrics is the process's metrics: the log, the job service and the
	// worker report to it; RunAPI serves it on the API's listener, RunWorker
	// on WorkerConfig.MetricsAddr.
	Metrics *metrics.Metrics
	// Counts counts the jobs this process finishes for its dashboard
	// report, and passes every call on to Metrics.
	Counts   *dashboard.JobCounts
	queues   []string // the job types' queues and the configured ones
	interval time.Duration
	prefix   string
	logger   *slog.Logger
	embedded *miniredis.Miniredis
}

// Open connects to Redis (or starts the embedded one when c.RedisURL is
// empty) and builds the metrics, the log, the registry and the job
// service. w names the queues (besides the job types' own) whose state the
// metrics export. ownerCache is the job service's jobs.Config.OwnerCache
// (negative: none).
func Open(ctx context.Context, c Common, w Worker, ownerCache int, logger *slog.Logger) (*Core, error) {
	core := &Core{logger: logger, interval: c.DashboardInterval, prefix: c.Prefix}
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
	reg, err := jobs.NewRegistry(jobs.Builtin()...)
	if err != nil {
		core.Close()
		return nil, err
	}
	core.Registry = reg
	var typeNames []string
	for _, t := range reg.Types() {
		typeNames = append(typeNames, t.Name)
	}
	// The Asynq queues: every queue a type allows or WORKER_QUEUES names,
	// at each priority.
	queues := reg.AsynqQueues()
	extra, _ := w.queues() // validated by ParseAPI and ParseWorker
	for q := range jobs.ExpandQueues(extra) {
		if !slices.Contains(queues, q) {
			queues = append(queues, q)
		}
	}
	core.Metrics = metrics.New(metrics.Config{
		JobTypes: typeNames, Queues: queues, Inspector: asynq.NewInspectorFromRedisClient(rdb),
		QueueRefresh: c.QueueMetricsRefresh, Logger: logger,
	})
	core.queues = queues
	core.Counts = dashboard.NewJobCounts(core.Metrics)
	core.Log = progress.NewLog(rdb, progress.LogConfig{
		Prefix: c.Prefix, MaxLen: c.LogMaxLen, TTL: c.LogTTL,
		// A dashboard page starts from the latest snapshot: older ones
		// are never read, so few are kept.
		KindMaxLen: map[string]int64{"chat": c.ChatHistory, wire.KindDashboard: dashboardHistory},
		OnPublish:  core.Metrics.ObservePublish,
	})
	core.Jobs = jobs.NewService(rdb, reg, core.Log, jobs.Config{
		Prefix: c.Prefix, Retention: c.Retention, ArtifactDir: c.ArtifactDir, Logger: logger, Observer: core.Counts,
		OwnerCache: ownerCache,
	})
	return core, nil
}

// dashboardHistory is how many snapshots the dashboard group's log keeps
// (approximately, on Redis).
const dashboardHistory = 10

// StartDashboard starts this process's part of the dashboard (see package
// web/dashboard): its report (d.Hub and d.Sockets may be nil in a
// worker) and, with cfg.Publish, its candidacy as the publisher. The
// returned stop releases the lease and removes the report.
func (c *Core) StartDashboard(d dashboard.Deps, cfg dashboard.Config) (stop func(context.Context), err error) {
	d.Redis, d.Log, d.Jobs, d.Counts = c.Redis, c.Log, c.Jobs, c.Counts
	cfg.Prefix, cfg.Interval, cfg.Queues, cfg.Logger = c.prefix, c.interval, c.queues, c.logger
	db, err := dashboard.New(d, cfg)
	if err != nil {
		return nil, err
	}
	db.Start()
	return db.Stop, nil
}

// scriptLoadTimeout bounds LoadScripts: Redis answered a PING moments
// before (Open), so loading a few dozen scripts takes milliseconds.
const scriptLoadTimeout = 5 * time.Second

// LoadScripts puts every Lua script of the process in Redis's script cache
// (every node of a Cluster), so that the first script calls after a start
// go by digest instead of each pipeline in flight meeting NOSCRIPT once
// (thousands in a join storm on a fresh Redis). A failure is only a
// warning: every script call still loads or sends its script when Redis
// lacks it, as after a later restart or failover, so the process works
// without it, a little slower at first.
func (c *Core) LoadScripts(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, scriptLoadTimeout)
	defer cancel()
	start := time.Now()
	n, err := progress.LoadScripts(ctx, c.Redis)
	if err != nil {
		c.logger.Warn("loading the Lua scripts into Redis failed: each is loaded by its first call instead", "err", err)
		return
	}
	c.logger.Info("loaded the Lua scripts into Redis", "scripts", n, "duration", time.Since(start).Round(time.Microsecond))
}

// Embedded reports whether the core runs on the in-process Redis.
func (c *Core) Embedded() bool { return c.embedded != nil }

// NewWorker builds a worker on the core.
// reportRate and reportDelay are its progress reporters' MaxRate and
// FirstDelay.
func (c *Core) NewWorker(w Worker, reportRate float64, reportDelay time.Duration) (*jobs.Worker, error) {
	if err := w.check(); err != nil {
		return nil, err
	}
	queues, err := w.queues()
	if err != nil {
		return nil, err
	}
	return jobs.NewWorker(c.Jobs, c.Redis, jobs.WorkerConfig{
		Concurrency: w.Concurrency, Queues: queues, ShutdownTimeout: w.ShutdownTimeout,
		PollInterval: w.PollInterval, DelayedPollInterval: w.DelayedPollInterval, Heartbeat: w.Heartbeat, LostAfter: w.LostAfter, ReconcileInterval: w.ReconcileInterval,
		Reporter: progress.ReporterConfig{MaxRate: reportRate, FirstDelay: reportDelay, Logger: c.logger},
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

// stops is what a process has started, to stop in reverse order: on the
// way out of Run*, whether it ends normally or on an error part-way
// through start-up (a worker must stop before Redis closes under it).
type stops []func(context.Context)

func (s *stops) push(f func(context.Context)) { *s = append(*s, f) }

// run stops everything, last started first, within 30 s in all.
func (s stops) run() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := len(s) - 1; i >= 0; i-- {
		s[i](ctx)
	}
}

// RunAPI serves the API until ctx ends. It binds the listener before
// anything else, so a bad or busy address fails with nothing to undo; a
// failure later in start-up stops what was started. Shutdown goes in
// order:
//  1. the listener closes; sockets get close 1001, so clients reconnect
//     (to another replica) and resume from their last seq while this one
//     drains; SSE and long-poll end;
//  2. the HTTP server finishes in-flight requests;
//  3. the embedded worker lets running jobs finish or hands them back to
//     the queue (it needs Redis, so it stops before Redis);
//  4. this replica's chat presence is handed over: its entries expire
//     after PRESENCE_GRACE (users who reconnected elsewhere meanwhile are
//     never announced as leaving; the others leave then, instead of after
//     PRESENCE_TTL), or are removed at once when it is 0;
//  5. the hub drops its Redis subscription; Redis is closed last.
//
// Before all of these the dashboard stops: if this replica published the
// snapshots it releases the lease (another replica takes over at once),
// and its report is removed (it leaves the dashboard's process list).
func RunAPI(ctx context.Context, c APIConfig, logger *slog.Logger) error {
	ln, err := listenAPI(ctx, c.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", c.Addr, err)
	}
	var started stops
	defer func() { started.run() }()
	started.push(func(context.Context) { _ = ln.Close() }) // Serve closes it too; a second Close is harmless
	if c.DebugAddr != "" {
		stop, err := startDebug(c.DebugAddr, logger)
		if err != nil {
			return err
		}
		started.push(stop)
	}

	core, err := Open(ctx, c.Common, c.Worker, c.ownerCache(), logger)
	if err != nil {
		return err
	}
	started.push(func(context.Context) { core.Close() })
	if core.Embedded() {
		logger.Info("running embedded: in-process Redis (miniredis) and worker, state is lost on exit; set REDIS_URL=redis://localhost:6379 to use a real Redis and run workers with go run ./cmd/worker")
	} else {
		logger.Info("running with Redis", "mode", c.RedisMode, "worker", c.RunWorker)
	}
	core.LoadScripts(ctx)

	// The hub reads a chat room's members with its history (the list in a
	// subscribed frame), so presence comes first; it still stops before
	// the hub, as listed above.
	grace := c.PresenceGrace
	if grace == 0 {
		grace = -1 // PresenceConfig's "at once"
	}
	presence := progress.NewPresence(core.Redis, core.Log, progress.PresenceConfig{TTL: c.PresenceTTL, ShutdownGrace: grace, Logger: logger})
	hubCfg := c.hubConfig()
	hubCfg.Presence, hubCfg.Logger = presence, logger
	hub := progress.NewHub(core.Redis, core.Log, hubCfg)
	started.push(func(ctx context.Context) {
		if err := hub.Shutdown(ctx); err != nil {
			logger.Warn("stopping hub", "err", err)
		}
	})
	started.push(presence.Shutdown)

	var worker *jobs.Worker
	if c.RunWorker || core.Embedded() {
		if worker, err = core.NewWorker(c.Worker, c.ReportRate, c.ReportDelay); err != nil {
			return err
		}
		if err := worker.Start(); err != nil {
			return err
		}
		started.push(func(context.Context) { worker.Shutdown() })
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
	// The periodic jobs: every replica lists them, one at a time (the
	// leader) submits them, as the admin tokens' user.
	sched, err := jobs.NewScheduler(core.Jobs, core.Redis, c.Schedule, jobs.SchedulerConfig{
		Owner: auth.AdminUserID, CatchUp: c.ScheduleCatchUp, Logger: logger,
		Lease: progress.LeaderConfig{Key: c.Prefix + ":scheduler"},
	})
	if err != nil {
		return err
	}
	if len(c.Schedule) > 0 {
		schedCtx, stopSched := context.WithCancel(context.WithoutCancel(ctx))
		schedDone := make(chan struct{})
		go func() {
			defer close(schedDone)
			if err := sched.Run(schedCtx); err != nil {
				logger.Error("scheduler stopped", "err", err)
			}
		}()
		started.push(func(context.Context) { stopSched(); <-schedDone })
		logger.Info("periodic jobs", "file", c.ScheduleFile, "entries", len(c.Schedule))
	}
	srv := web.New(web.Deps{Jobs: core.Jobs, Hub: hub, Log: core.Log, Auth: store, Presence: presence, Metrics: core.Metrics, Schedules: sched}, web.Config{
		AllowedOrigins: c.AllowedOrigins, SendQueue: c.SendQueue, SecureCookies: c.SecureCookies, NoSendRing: !c.SendRing,
		JobRate: c.JobRate, JobBurst: c.JobBurst, ChatRate: c.ChatRate, ChatBurst: c.ChatBurst, TrustedProxies: c.TrustedProxies,
		AdminEmails: c.AdminEmails, Limits: c.Limits, Logger: logger,
	})
	httpSrv := srv.HTTPServer()
	serveErr := make(chan error, 1)
	go func() { serveErr <- httpSrv.Serve(srv.Listener(ln)) }()
	started.push(func(ctx context.Context) {
		// Sockets first: http.Server.Shutdown does not see hijacked
		// connections, and waits for SSE and long-poll, which this ends.
		// Their users reconnect elsewhere: presence keeps them (Drain).
		// Stop accepting first, as http.Server.Shutdown would: every
		// socket reconnects at once, and a dying replica that still
		// accepted them would spend its last seconds authenticating
		// requests it can only refuse, while clients that find the port
		// closed simply try again (another replica, or this one's
		// successor).
		_ = ln.Close()
		presence.Drain()
		if err := srv.Shutdown(ctx); err != nil {
			logger.Warn("closing sockets", "err", err)
		}
		if err := httpSrv.Shutdown(ctx); err != nil {
			logger.Warn("stopping http server", "err", err)
		}
		<-serveErr // Serve has returned: nothing accepts any more
	})
	stopDash, err := core.StartDashboard(dashboard.Deps{Hub: hub, Sockets: srv.Sockets}, dashboard.Config{
		Role: dashboard.RoleAPI, Publish: true, Window: c.Dashboard.Window, LeaderTTL: c.Dashboard.LeaderTTL, Failures: c.Dashboard.Failures,
	})
	if err != nil {
		return err
	}
	started.push(stopDash)
	logger.Info("listening", "addr", ln.Addr().String(), "url", "http://"+displayAddr(ln.Addr()), "worker", worker != nil)

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		serveErr <- err // for the stop above
		return fmt.Errorf("http server: %w", err)
	}
	logger.Info("shutting down")
	started.run()
	started = nil
	logger.Info("stopped")
	return nil
}

// RunWorker runs a worker until ctx ends, then lets running jobs finish or
// hands them back to the queue. With c.MetricsAddr it serves GET /metrics
// there: the address is bound before anything else starts (a busy port
// fails with nothing to undo), and the endpoint stays up while the worker
// drains, so the last counts can still be scraped. A failure part-way
// through start-up stops what was started.
func RunWorker(ctx context.Context, c WorkerConfig, logger *slog.Logger) error {
	var started stops
	defer func() { started.run() }()
	var metricsLn net.Listener
	if c.MetricsAddr != "" {
		ln, err := net.Listen("tcp", c.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics: listen on %s: %w", c.MetricsAddr, err)
		}
		metricsLn = ln
		started.push(func(context.Context) { _ = ln.Close() }) // Serve closes it too; a second Close is harmless
	}
	if c.DebugAddr != "" {
		stop, err := startDebug(c.DebugAddr, logger)
		if err != nil {
			return err
		}
		started.push(stop)
	}
	// A worker submits no jobs for their owners (the api does): nothing
	// to remember.
	core, err := Open(ctx, c.Common, c.Worker, -1, logger)
	if err != nil {
		return err
	}
	started.push(func(context.Context) { core.Close() })
	core.LoadScripts(ctx)
	if metricsLn != nil {
		stop := serveMetrics(metricsLn, core.Metrics, logger)
		started.push(stop)
	}
	worker, err := core.NewWorker(c.Worker, c.ReportRate, c.ReportDelay)
	if err != nil {
		return err
	}
	if err := worker.Start(); err != nil {
		return err
	}
	started.push(func(context.Context) { worker.Shutdown() })
	stopDash, err := core.StartDashboard(dashboard.Deps{}, dashboard.Config{Role: dashboard.RoleWorker})
	if err != nil {
		return err
	}
	started.push(stopDash)
	<-ctx.Done()
	logger.Info("shutting down")
	started.run()
	started = nil
	logger.Info("stopped")
	return nil
}

// serveMetrics serves m's GET /metrics on ln (and 404 elsewhere) until
// the returned stop is called.
func serveMetrics(ln net.Listener, m *metrics.Metrics, logger *slog.Logger) (stop func(context.Context)) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	logger.Info("serving metrics", "url", "http://"+displayAddr(ln.Addr())+"/metrics")
	return serveAside(ln, mux, "metrics", true, logger)
}

// serveAside serves h on ln, a listener of its own beside the public one,
// until the returned stop is called. With drain, stop lets requests in
// flight finish (within its context); without, it cuts them (a profile
// streaming for its ?seconds= would hold the process's shutdown).
func serveAside(ln net.Listener, h http.Handler, what string, drain bool, logger *slog.Logger) (stop func(context.Context)) {
	// No WriteTimeout: a CPU profile or a trace streams for as long as
	// its ?seconds= asks.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error(what+" server failed", "err", err)
		}
	}()
	return func(ctx context.Context) {
		var err error
		if drain {
			err = srv.Shutdown(ctx)
		} else {
			err = srv.Close()
		}
		if err != nil {
			logger.Warn("stopping "+what+" server", "err", err)
		}
		<-done
	}
}

func displayAddr(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil || host == "::" || host == "0.0.0.0" || host == "" {
		return "localhost:" + port
	}
	return a.String()
}

// listenAPI listens for the api's connections without TCP keep-alive.
// Go enables it on every accepted connection by default, with four
// setsockopt calls each: 3 % of the api's CPU in a join storm of 5,000
// sockets. The api has liveness of its own on every long-lived
// connection, so the probes add nothing: sockets are pinged every 25 s
// (web.Config.PingInterval) and dropped after two unanswered pings, SSE
// streams send a comment every 15 s (a dead peer fails the write), and
// idle keep-alive HTTP connections are closed after IDLE_TIMEOUT.
func listenAPI(ctx context.Context, addr string) (net.Listener, error) {
	return (&net.ListenConfig{KeepAlive: -1}).Listen(ctx, "tcp", addr)
}
