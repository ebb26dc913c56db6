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
	"os"
	"strconv"
	"strings"
	"time"
)

// Common is the configuration shared by the API and the worker. Every field
// is a flag whose default comes from an environment variable.
type Common struct {
	RedisURL    string
	RedisMode   string
	Prefix      string
	LogMaxLen   int64
	LogTTL      time.Duration
	ReportRate  float64
	ArtifactDir string
	Retention   time.Duration
	LogLevel    string
	LogFormat   string
	ChatHistory int64
}

// Worker is the configuration of a worker, in its own process or embedded.
// Defaults are those of jobs.WorkerConfig.
type Worker struct {
	Concurrency     int
	Queues          string
	ShutdownTimeout time.Duration
	PollInterval    time.Duration
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

// register adds the common flags to fs.
func (c *Common) register(fs *flag.FlagSet, env *envParser) {
	fs.StringVar(&c.RedisURL, "redis-url", env.str("REDIS_URL", ""), "Redis URL (redis://, rediss://, unix://); empty runs an embedded in-process Redis")
	fs.StringVar(&c.RedisMode, "redis-mode", env.str("REDIS_MODE", "single"), "single, sentinel (REDIS_URL lists sentinels, ?master_name=) or cluster")
	fs.StringVar(&c.Prefix, "key-prefix", env.str("KEY_PREFIX", "ts"), "prefix of every Redis key and channel taskstream uses")
	fs.Int64Var(&c.LogMaxLen, "history", int64(env.int("HISTORY", 1000)), "events kept per group log")
	fs.Int64Var(&c.ChatHistory, "chat-history", int64(env.int("CHAT_HISTORY", 500)), "messages (and presence events) kept per chat room")
	fs.DurationVar(&c.LogTTL, "history-ttl", env.duration("HISTORY_TTL", 24*time.Hour), "how long a group's log lives after its last event")
	fs.Float64Var(&c.ReportRate, "progress-rate", env.float("PROGRESS_RATE", 10), "max progress events per second per job")
	fs.StringVar(&c.ArtifactDir, "artifact-dir", env.str("ARTIFACT_DIR", ""), "directory for job artifacts, shared by API and workers (default: OS temp dir/taskstream-artifacts)")
	fs.DurationVar(&c.Retention, "retention", env.duration("JOB_RETENTION", 7*24*time.Hour), "how long finished jobs are kept")
	fs.StringVar(&c.LogLevel, "log-level", env.str("LOG_LEVEL", "info"), "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", env.str("LOG_FORMAT", "text"), "text or json")
}

func (w *Worker) register(fs *flag.FlagSet, env *envParser) {
	fs.IntVar(&w.Concurrency, "concurrency", env.int("WORKER_CONCURRENCY", 10), "jobs run at once by this worker")
	fs.StringVar(&w.Queues, "queues", env.str("WORKER_QUEUES", ""), "queues and priorities, e.g. critical=6,default=3 (default: every job type's queue)")
	fs.DurationVar(&w.ShutdownTimeout, "shutdown-timeout", env.duration("WORKER_SHUTDOWN_TIMEOUT", 8*time.Second), "time running jobs get to finish on shutdown before they go back to the queue")
	fs.DurationVar(&w.PollInterval, "poll-interval", env.duration("WORKER_POLL_INTERVAL", time.Second), "how often an idle worker looks for new jobs")
	fs.DurationVar(&w.Heartbeat, "heartbeat", env.duration("JOB_HEARTBEAT", 5*time.Second), "how often a worker refreshes the heartbeat of its running jobs")
	fs.DurationVar(&w.LostAfter, "lost-after", env.duration("JOB_LOST_AFTER", 15*time.Second), "a running job whose heartbeat is older is lost: watchers are told, and it runs again")
	fs.DurationVar(&w.ReconcileInterval, "reconcile-interval", env.duration("RECONCILE_INTERVAL", 15*time.Second), "how often jobs are compared with Asynq (deletes, archives, runs from Asynq's own tools)")
}

// validate rejects worker settings that can not work. Zero durations
// (and a zero concurrency) mean the default of jobs.WorkerConfig, so a
// Worker built in code may leave them out.
func (w *Worker) validate() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"WORKER_SHUTDOWN_TIMEOUT", w.ShutdownTimeout}, {"WORKER_POLL_INTERVAL", w.PollInterval},
		{"JOB_HEARTBEAT", w.Heartbeat}, {"JOB_LOST_AFTER", w.LostAfter}, {"RECONCILE_INTERVAL", w.ReconcileInterval},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s=%v: must not be negative", d.name, d.v)
		}
	}
	if w.Concurrency < 0 {
		return fmt.Errorf("WORKER_CONCURRENCY=%d: must not be negative", w.Concurrency)
	}
	heartbeat, lostAfter := cmp.Or(w.Heartbeat, 5*time.Second), cmp.Or(w.LostAfter, 15*time.Second)
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
