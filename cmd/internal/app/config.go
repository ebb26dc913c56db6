// Package app holds what cmd/api and cmd/worker share: configuration from
// flags and environment variables, logging, the Redis connection (or the
// embedded one) and the construction of the components. It has no logic of
// its own beyond wiring.
package app

import (
	"cmp"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/mail"
	"os"
	"strconv"
	"strings"
	"time"

	"taskstream/jobs"
	"taskstream/progress"
	"taskstream/web"
)

// DefaultProgressDelay is PROGRESS_DELAY's default: a run's first
// progress report waits this long (coalescing those that follow), so a
// job done within it publishes one progress event, its last, in the round
// trip that records its end, instead of a "0 %" report and the last one
// milliseconds apart. 20 ms is below what a person watching a job notices
// and above a short job's whole run.
const DefaultProgressDelay = 20 * time.Millisecond

// Common is the configuration shared by the API and the worker. Every field
// is a flag whose default comes from an environment variable.
type Common struct {
	RedisURL    string
	RedisMode   string
	Prefix      string
	LogMaxLen   int64
	LogTTL      time.Duration
	ReportRate  float64
	ReportDelay time.Duration
	ArtifactDir string
	Retention   time.Duration
	LogLevel    string
	LogFormat   string
	ChatHistory int64
	// QueueMetricsRefresh is the most often the asynq queue metrics are
	// read from Redis, whatever the scrape rate.
	QueueMetricsRefresh time.Duration
	// DashboardInterval (DASHBOARD_INTERVAL, default 1s) is how often
	// each process reports its figures to the dashboard and the elected
	// publisher pushes a snapshot: the charts' resolution.
	DashboardInterval time.Duration
	// DebugAddr (DEBUG_ADDR, default none) is where the process serves Go's
	// profiles (/debug/pprof/) on a listener of its own; keep it on
	// loopback or an operator-only network.
	DebugAddr string
}

// Dashboard is the API's dashboard configuration (web/dashboard).
type Dashboard struct {
	// AdminEmails (ADMIN_EMAILS, default none) are the signed-in users
	// who may act on the queues, besides ADMIN_TOKENS.
	AdminEmails []string
	// Window (DASHBOARD_WINDOW, default 15m) is the charts' history.
	Window time.Duration
	// LeaderTTL (DASHBOARD_LEADER_TTL, default 5s) is the publisher's
	// lease: another replica takes over within it when the publisher dies.
	LeaderTTL time.Duration
	// Failures (DASHBOARD_FAILURES, default 20) is how many recent failed
	// tasks the dashboard lists.
	Failures int
}

// Worker is the configuration of a worker, in its own process or embedded.
// Defaults are those of jobs.WorkerConfig.
type Worker struct {
	Concurrency     int
	Queues          string
	ShutdownTimeout time.Duration
	// PollInterval (WORKER_POLL_INTERVAL, default
	// jobs.DefaultPollInterval, 100ms) is how often an idle worker looks
	// for new jobs; DelayedPollInterval (WORKER_DELAYED_POLL_INTERVAL,
	// default 1s) how often it moves due scheduled jobs and retries into
	// their queues. Zero in code: jobs.WorkerConfig's defaults.
	PollInterval        time.Duration
	DelayedPollInterval time.Duration
	// Heartbeat (JOB_HEARTBEAT, default 5s) is how often a worker
	// refreshes its running jobs; LostAfter (JOB_LOST_AFTER, default 15s)
	// is how old a running job's heartbeat may get before its worker
	// counts as lost and the job runs again; ReconcileInterval
	// (RECONCILE_INTERVAL, default 15s) is how often jobs are compared
	// with Asynq (operator actions from its CLI or asynqmon).
	Heartbeat         time.Duration
	LostAfter         time.Duration
	ReconcileInterval time.Duration
}

// envParser reads typed defaults from the environment and remembers the
// first malformed one, so a typo in a variable fails start-up instead of
// silently becoming the default.
type envParser struct{ err error }

func (p *envParser) str(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}

func (p *envParser) int(key string, def int) int {
	v, ok := os.LookupEnv(key)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("%s=%q: want an integer", key, v)
	}
	return n
}

func (p *envParser) float(key string, def float64) float64 {
	v, ok := os.LookupEnv(key)
	if !ok {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("%s=%q: want a number", key, v)
	}
	return f
}

func (p *envParser) duration(key string, def time.Duration) time.Duration {
	v, ok := os.LookupEnv(key)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("%s=%q: want a duration like 30s or 5m", key, v)
	}
	return d
}

// bool reads 1/0, true/false (and the other spellings of
// strconv.ParseBool); empty is def.
func (p *envParser) bool(key string, def bool) bool {
	v := p.str(key, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("%s=%q: want 1 or 0 (true or false)", key, v)
	}
	return b
}

func (p *envParser) strings(key string) []string {
	v := p.str(key, "")
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// register adds the common flags to fs. Every usage text names its
// environment variable, so -h documents both.
func (c *Common) register(fs *flag.FlagSet, env *envParser) {
	fs.StringVar(&c.RedisURL, "redis-url", env.str("REDIS_URL", ""), "Redis URL (redis://, rediss://, unix://); empty runs an embedded in-process Redis (env REDIS_URL)")
	fs.StringVar(&c.RedisMode, "redis-mode", env.str("REDIS_MODE", "single"), "single, sentinel (REDIS_URL lists sentinels, ?master_name=) or cluster (env REDIS_MODE)")
	fs.StringVar(&c.Prefix, "key-prefix", env.str("KEY_PREFIX", "ts"), "prefix of every Redis key and channel taskstream uses (env KEY_PREFIX)")
	fs.Int64Var(&c.LogMaxLen, "history", int64(env.int("HISTORY", 1000)), "events kept per group log (env HISTORY)")
	fs.Int64Var(&c.ChatHistory, "chat-history", int64(env.int("CHAT_HISTORY", 500)), "messages (and presence events) kept per chat room (env CHAT_HISTORY)")
	fs.DurationVar(&c.LogTTL, "history-ttl", env.duration("HISTORY_TTL", 24*time.Hour), "how long a group's log lives after its last event (env HISTORY_TTL)")
	fs.Float64Var(&c.ReportRate, "progress-rate", env.float("PROGRESS_RATE", 10), "max progress events per second per job (env PROGRESS_RATE)")
	fs.DurationVar(&c.ReportDelay, "progress-delay", env.duration("PROGRESS_DELAY", DefaultProgressDelay), "how long a run's first progress report waits, coalescing those that follow: a run that ends sooner publishes only its last (0: at once) (env PROGRESS_DELAY)")
	fs.StringVar(&c.ArtifactDir, "artifact-dir", env.str("ARTIFACT_DIR", ""), "directory for job artifacts, shared by API and workers (default: OS temp dir/taskstream-artifacts) (env ARTIFACT_DIR)")
	fs.DurationVar(&c.Retention, "retention", env.duration("JOB_RETENTION", 7*24*time.Hour), "how long finished jobs are kept (env JOB_RETENTION)")
	fs.StringVar(&c.LogLevel, "log-level", env.str("LOG_LEVEL", "info"), "debug, info, warn or error (env LOG_LEVEL)")
	fs.StringVar(&c.LogFormat, "log-format", env.str("LOG_FORMAT", "text"), "text or json (env LOG_FORMAT)")
	fs.DurationVar(&c.DashboardInterval, "dashboard-interval", env.duration("DASHBOARD_INTERVAL", time.Second), "how often each process reports to the dashboard and the publisher pushes a snapshot (env DASHBOARD_INTERVAL)")
	fs.StringVar(&c.DebugAddr, "debug-addr", env.str("DEBUG_ADDR", ""), "address serving Go's profiles at /debug/pprof/, e.g. 127.0.0.1:6060; keep it private (default: none) (env DEBUG_ADDR)")
	fs.DurationVar(&c.QueueMetricsRefresh, "queue-metrics-refresh", env.duration("QUEUE_METRICS_REFRESH", 5*time.Second), "the asynq queue figures in /metrics are read from Redis at most this often, whatever the scrape rate (env QUEUE_METRICS_REFRESH)")
}

func (w *Worker) register(fs *flag.FlagSet, env *envParser) {
	fs.IntVar(&w.Concurrency, "concurrency", env.int("WORKER_CONCURRENCY", 10), "jobs run at once by this worker (env WORKER_CONCURRENCY)")
	fs.StringVar(&w.Queues, "queues", env.str("WORKER_QUEUES", ""), "queues and their weights, e.g. critical=6,default=3; each is served at its three priorities, weighted 4:2:1 (default: every job type's queue, weight 1) (env WORKER_QUEUES)")
	fs.DurationVar(&w.ShutdownTimeout, "shutdown-timeout", env.duration("WORKER_SHUTDOWN_TIMEOUT", 8*time.Second), "time running jobs get to finish on shutdown before they go back to the queue (env WORKER_SHUTDOWN_TIMEOUT)")
	fs.DurationVar(&w.PollInterval, "poll-interval", env.duration("WORKER_POLL_INTERVAL", jobs.DefaultPollInterval), "how often an idle worker looks for new jobs: the pickup delay of a new job (env WORKER_POLL_INTERVAL)")
	fs.DurationVar(&w.DelayedPollInterval, "delayed-poll-interval", env.duration("WORKER_DELAYED_POLL_INTERVAL", time.Second), "how often a worker moves due scheduled jobs and retries into their queues: how late they may start (env WORKER_DELAYED_POLL_INTERVAL)")
	fs.DurationVar(&w.Heartbeat, "heartbeat", env.duration("JOB_HEARTBEAT", jobs.DefaultHeartbeat), "how often a worker refreshes the heartbeat of its running jobs (env JOB_HEARTBEAT)")
	fs.DurationVar(&w.LostAfter, "lost-after", env.duration("JOB_LOST_AFTER", jobs.DefaultLostAfter), "a running job whose heartbeat is older is lost: watchers are told, and it runs again (env JOB_LOST_AFTER)")
	fs.DurationVar(&w.ReconcileInterval, "reconcile-interval", env.duration("RECONCILE_INTERVAL", 15*time.Second), "how often jobs are compared with Asynq: deletes, archives, runs from Asynq's own tools (env RECONCILE_INTERVAL)")
}

// validate checks the common settings once parsed, flags and environment
// alike, so a bad one stops start-up with one clear line.
func (c *Common) validate(v *validator) {
	switch strings.ToLower(c.RedisMode) {
	case progress.ModeSingle, progress.ModeSentinel, progress.ModeCluster:
		if c.RedisURL != "" {
			v.check(checkRedisURL(c.RedisURL, c.RedisMode))
		}
	default:
		v.fail("REDIS_MODE (-redis-mode) %q: want single, sentinel or cluster", c.RedisMode)
	}
	if strings.TrimSpace(c.Prefix) == "" || strings.ContainsAny(c.Prefix, " \t\r\n") {
		v.fail("KEY_PREFIX (-key-prefix) %q: want a non-empty word without spaces", c.Prefix)
	}
	v.atLeast("HISTORY", "history", c.LogMaxLen, 1)
	v.atLeast("CHAT_HISTORY", "chat-history", c.ChatHistory, 1)
	v.positiveDuration("HISTORY_TTL", "history-ttl", c.LogTTL)
	v.positiveRate("PROGRESS_RATE", "progress-rate", c.ReportRate)
	if c.ReportDelay < 0 {
		v.fail("PROGRESS_DELAY (-progress-delay) %s: want 0 (at once) or more", c.ReportDelay)
	}
	v.positiveDuration("JOB_RETENTION", "retention", c.Retention)
	v.positiveDuration("QUEUE_METRICS_REFRESH", "queue-metrics-refresh", c.QueueMetricsRefresh)
	v.positiveDuration("DASHBOARD_INTERVAL", "dashboard-interval", c.DashboardInterval)
	if c.DebugAddr != "" {
		v.check(checkAddr("DEBUG_ADDR (-debug-addr)", c.DebugAddr))
	}
	if _, err := NewLogger(c.LogLevel, c.LogFormat); err != nil {
		v.fail("LOG_LEVEL/LOG_FORMAT: %v", err)
	}
}

func (w *Worker) validate(v *validator) {
	v.atLeast("WORKER_CONCURRENCY", "concurrency", int64(w.Concurrency), 1)
	if _, err := w.queues(); err != nil {
		v.fail("WORKER_QUEUES (%v)", err)
	}
	v.positiveDuration("WORKER_SHUTDOWN_TIMEOUT", "shutdown-timeout", w.ShutdownTimeout)
	v.positiveDuration("WORKER_POLL_INTERVAL", "poll-interval", w.PollInterval)
	v.positiveDuration("WORKER_DELAYED_POLL_INTERVAL", "delayed-poll-interval", w.DelayedPollInterval)
	v.positiveDuration("JOB_HEARTBEAT", "heartbeat", w.Heartbeat)
	v.positiveDuration("JOB_LOST_AFTER", "lost-after", w.LostAfter)
	v.positiveDuration("RECONCILE_INTERVAL", "reconcile-interval", w.ReconcileInterval)
	v.check(w.check())
}

func (d *Dashboard) register(fs *flag.FlagSet, env *envParser) {
	d.AdminEmails = env.strings("ADMIN_EMAILS")
	fs.Func("admin-email", "email of a signed-in user who may act on the queues from the dashboard (repeatable) (env ADMIN_EMAILS, comma-separated)", func(s string) error {
		d.AdminEmails = append(d.AdminEmails, strings.TrimSpace(s))
		return nil
	})
	fs.DurationVar(&d.Window, "dashboard-window", env.duration("DASHBOARD_WINDOW", 15*time.Minute), "how much chart history the dashboard keeps and shows (env DASHBOARD_WINDOW)")
	fs.DurationVar(&d.LeaderTTL, "dashboard-leader-ttl", env.duration("DASHBOARD_LEADER_TTL", 5*time.Second), "lease of the replica that publishes dashboard snapshots; another takes over within it when that one dies (env DASHBOARD_LEADER_TTL)")
	fs.IntVar(&d.Failures, "dashboard-failures", env.int("DASHBOARD_FAILURES", 20), "recent failed tasks the dashboard lists (env DASHBOARD_FAILURES)")
}

func (d *Dashboard) validate(v *validator) {
	for _, e := range d.AdminEmails {
		if _, err := mail.ParseAddress(e); err != nil || !strings.Contains(e, "@") {
			v.fail("ADMIN_EMAILS (-admin-email) %q: want an email address", e)
		}
	}
	v.positiveDuration("DASHBOARD_WINDOW", "dashboard-window", d.Window)
	v.positiveDuration("DASHBOARD_LEADER_TTL", "dashboard-leader-ttl", d.LeaderTTL)
	v.atLeast("DASHBOARD_FAILURES", "dashboard-failures", int64(d.Failures), 1)
}

// registerLimits adds the API's connection and request limits to fs,
// with web's defaults.
func registerLimits(fs *flag.FlagSet, env *envParser, l *web.Limits) {
	d := web.DefaultLimits()
	fs.DurationVar(&l.ReadHeaderTimeout, "read-header-timeout", env.duration("READ_HEADER_TIMEOUT", d.ReadHeaderTimeout), "time a client gets to send a request's headers (env READ_HEADER_TIMEOUT)")
	fs.DurationVar(&l.BodyTimeout, "body-timeout", env.duration("BODY_TIMEOUT", d.BodyTimeout), "time a client gets to send a request's body; sockets and streams have their own deadlines (env BODY_TIMEOUT)")
	fs.DurationVar(&l.IdleTimeout, "idle-timeout", env.duration("IDLE_TIMEOUT", d.IdleTimeout), "an idle keep-alive connection is closed after this long (env IDLE_TIMEOUT)")
	fs.IntVar(&l.MaxHeaderBytes, "max-header-bytes", env.int("MAX_HEADER_BYTES", d.MaxHeaderBytes), "most bytes of request line and headers; 431 beyond (env MAX_HEADER_BYTES)")
	fs.IntVar(&l.MaxConns, "max-conns", env.int("MAX_CONNS", d.MaxConns), "most open connections of this process, sockets included; 429 beyond (env MAX_CONNS)")
	fs.IntVar(&l.MaxConnsPerIP, "max-conns-per-ip", env.int("MAX_CONNS_PER_IP", d.MaxConnsPerIP), "most open connections from one peer address (trusted proxies exempt); 429 beyond (env MAX_CONNS_PER_IP)")
	fs.IntVar(&l.MaxSocketsPerIP, "max-sockets-per-ip", env.int("MAX_SOCKETS_PER_IP", d.MaxSocketsPerIP), "most open sockets from one client address; close 1008 beyond (env MAX_SOCKETS_PER_IP)")
}

func validateLimits(v *validator, l web.Limits) {
	v.positiveDuration("READ_HEADER_TIMEOUT", "read-header-timeout", l.ReadHeaderTimeout)
	v.positiveDuration("BODY_TIMEOUT", "body-timeout", l.BodyTimeout)
	v.positiveDuration("IDLE_TIMEOUT", "idle-timeout", l.IdleTimeout)
	v.atLeast("MAX_HEADER_BYTES", "max-header-bytes", int64(l.MaxHeaderBytes), 1024)
	v.atLeast("MAX_CONNS", "max-conns", int64(l.MaxConns), 1)
	v.atLeast("MAX_CONNS_PER_IP", "max-conns-per-ip", int64(l.MaxConnsPerIP), 1)
	v.atLeast("MAX_SOCKETS_PER_IP", "max-sockets-per-ip", int64(l.MaxSocketsPerIP), 1)
}

// checkRedisURL parses url as OpenRedis will in mode, without connecting,
// so a malformed one fails at start-up. Errors never quote a password.
func checkRedisURL(raw, mode string) error {
	rdb, err := progress.NewRedis(raw, mode)
	if err != nil {
		return fmt.Errorf("REDIS_URL (-redis-url): %w", err)
	}
	return rdb.Close()
}

// validator keeps the first failed check.
type validator struct{ err error }

func (v *validator) fail(format string, args ...any) {
	if v.err == nil {
		v.err = fmt.Errorf(format, args...)
	}
}

func (v *validator) check(err error) {
	if err != nil && v.err == nil {
		v.err = err
	}
}

func (v *validator) atLeast(env, flagName string, n, min int64) {
	if n < min {
		v.fail("%s (-%s) is %d: want %d or more", env, flagName, n, min)
	}
}

func (v *validator) atMost(env, flagName string, n, max int64) {
	if n > max {
		v.fail("%s (-%s) is %d: want %d or less", env, flagName, n, max)
	}
}

func (v *validator) positiveDuration(env, flagName string, d time.Duration) {
	if d <= 0 {
		v.fail("%s (-%s) is %v: want a duration above zero, like 30s", env, flagName, d)
	}
}

func (v *validator) positiveRate(env, flagName string, f float64) {
	if !(f > 0) || math.IsInf(f, 0) {
		v.fail("%s (-%s) is %v: want a number above 0", env, flagName, f)
	}
}

// checkAddr accepts host:port with a numeric port (0 picks a free one).
func checkAddr(what, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: want host:port or :port, like :8080", what, addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%s %q: the port must be a number from 0 to 65535", what, addr)
	}
	return nil
}

// check rejects worker settings that can not work, for callers that build
// a Worker in code (validate covers flags and environment). Zero durations
// (and a zero concurrency) mean the default of jobs.WorkerConfig, so a
// Worker built in code may leave them out.
func (w *Worker) check() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"WORKER_SHUTDOWN_TIMEOUT", w.ShutdownTimeout}, {"WORKER_POLL_INTERVAL", w.PollInterval}, {"WORKER_DELAYED_POLL_INTERVAL", w.DelayedPollInterval},
		{"JOB_HEARTBEAT", w.Heartbeat}, {"JOB_LOST_AFTER", w.LostAfter}, {"RECONCILE_INTERVAL", w.ReconcileInterval},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s=%v: must not be negative", d.name, d.v)
		}
	}
	if w.Concurrency < 0 {
		return fmt.Errorf("WORKER_CONCURRENCY=%d: must not be negative", w.Concurrency)
	}
	heartbeat, lostAfter := cmp.Or(w.Heartbeat, jobs.DefaultHeartbeat), cmp.Or(w.LostAfter, jobs.DefaultLostAfter)
	if lostAfter <= heartbeat {
		return fmt.Errorf("JOB_LOST_AFTER=%v must be longer than JOB_HEARTBEAT=%v (a few heartbeats: a job is lost after missing them)", lostAfter, heartbeat)
	}
	return nil
}

// queues parses "name=priority,name" into a map (priority 1 by default).
func (w *Worker) queues() (map[string]int, error) {
	if strings.TrimSpace(w.Queues) == "" {
		return nil, nil
	}
	out := map[string]int{}
	for _, part := range strings.Split(w.Queues, ",") {
		name, prio, hasPrio := strings.Cut(strings.TrimSpace(part), "=")
		if name == "" {
			return nil, fmt.Errorf("-queues %q: empty queue name", w.Queues)
		}
		if !jobs.ValidQueueName(name) {
			return nil, fmt.Errorf("-queues %q: queue %q: want 1 to 64 of a-z 0-9 _ - (a queue's priorities are served with it)", w.Queues, name)
		}
		p := 1
		if hasPrio {
			n, err := strconv.Atoi(prio)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("-queues %q: priority of %s must be a positive integer", w.Queues, name)
			}
			p = n
		}
		out[name] = p
	}
	return out, nil
}

// NewLogger returns the process logger for level and format.
func NewLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}
