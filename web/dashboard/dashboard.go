// Package dashboard owns the data of the live operations dashboard
// (GET /dashboard, served by package web): what every process reports
// about itself, the snapshot of the whole system, the charts' series, and
// the one publisher that pushes snapshots to the "dashboard" group.
//
//   - Every process (api and worker) runs a reporter: every
//     Config.Interval it writes its own figures (open sockets by
//     transport, subscriptions, shared Redis subscriptions, events
//     delivered, jobs finished by outcome, read from progress.Hub.Counters,
//     the web server's socket counts and JobCounts) to a Redis key with a
//     short TTL (Config.ReportTTL), so a process that dies drops out of
//     the dashboard by itself; a process that stops removes its report.
//   - One api process at a time, elected with progress.RunAsLeader (key
//     PREFIX:dashboard:leader), is the publisher: every Interval it
//     collects a Snapshot (asynq's queues, servers and the tasks they run,
//     recent failures, the processes' reports), adds a point to the chart
//     series, and publishes the snapshot as a "stats" event on the
//     "dashboard" group. The series and the counters they are computed
//     from are kept in Redis for Config.Window, so a new publisher
//     continues the charts where the old one stopped.
//
// Browsers never poll: the page subscribes to the group over the socket
// (web/static/dashboard.js) and starts from the latest snapshot.
// Operator actions (pause a queue, run/archive/delete a task) are not
// here: package web serves them and jobs carries them out.
//
// Keys (PREFIX:{dash}:…) share the hash tag "{dash}", so the multi-key
// reads are Redis Cluster safe.
package dashboard

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"taskstream/jobs"
	"taskstream/progress"
)

// Roles of a process in its report.
const (
	RoleAPI    = "api"
	RoleWorker = "worker"
)

// Config configures a Dashboard. The zero value is usable: every field
// has a documented default.
type Config struct {
	// Prefix is prepended to the dashboard's Redis keys. Default "ts"
	// (the same as progress.LogConfig.Prefix).
	Prefix string
	// Role is this process's role in its report: RoleAPI or RoleWorker.
	// Default RoleAPI.
	Role string
	// Publish makes this process compete to be the publisher. Default
	// false (report only); api processes set it.
	Publish bool
	// Interval is how often a process reports and the publisher publishes
	// a snapshot; it is also the charts' resolution. Default 1s.
	Interval time.Duration
	// ReportTTL is how long a process's report outlives its last write:
	// a process that died without a word leaves the dashboard after it.
	// Default 5 × Interval.
	ReportTTL time.Duration
	// Window is how much chart history is kept (in Redis, for the next
	// publisher) and shown. Default 15m.
	Window time.Duration
	// LeaderTTL is the publisher's lease (progress.LeaderConfig.TTL): when
	// the publisher dies another takes over within about LeaderTTL.
	// Default 5s.
	LeaderTTL time.Duration
	// Failures is how many recent failures (archived and retrying tasks,
	// newest first) a snapshot lists. Default 20.
	Failures int
	// Queues are shown even while Asynq knows nothing of them (the job
	// types' queues and the workers' configured ones). Default none.
	Queues []string
	// Logger receives what the reporter and publisher cannot return.
	// Default slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = "ts"
	}
	if c.Role == "" {
		c.Role = RoleAPI
	}
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.ReportTTL <= c.Interval {
		c.ReportTTL = 5 * c.Interval
	}
	if c.Window <= 0 {
		c.Window = 15 * time.Minute
	}
	if c.LeaderTTL <= 0 {
		c.LeaderTTL = 5 * time.Second
	}
	if c.Failures <= 0 {
		c.Failures = 20
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Deps are the parts a Dashboard reads.
type Deps struct {
	// Redis holds the reports, the series and the lease. Required.
	Redis redis.UniversalClient
	// Log publishes the snapshots. Required when Config.Publish.
	Log *progress.Log
	// Jobs gives the Asynq inspector. Required when Config.Publish.
	Jobs *jobs.Service
	// Hub gives this process's subscriptions and deliveries; nil in a
	// worker (zeros).
	Hub *progress.Hub
	// Sockets returns this process's open connections by transport
	// (web.Server.Sockets); nil in a worker (zeros). It must be fast.
	Sockets func() map[string]int
	// Counts counts this process's finished jobs; nil reports zeros.
	Counts *JobCounts
}

// Dashboard is one process's part of the dashboard: its reporter and,
// with Config.Publish, its candidacy as the publisher. Start starts
// both; Stop stops them.
type Dashboard struct {
	d    Deps
	cfg  Config
	self Process // this process's identity (ID, role, host, pid, started)
	insp *asynq.Inspector

	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// New returns a Dashboard for this process. Call Start.
func New(d Deps, cfg Config) (*Dashboard, error) {
	cfg = cfg.withDefaults()
	if d.Redis == nil {
		return nil, fmt.Errorf("dashboard: Deps.Redis is required")
	}
	if cfg.Publish && (d.Log == nil || d.Jobs == nil) {
		return nil, fmt.Errorf("dashboard: a publisher needs Deps.Log and Deps.Jobs")
	}
	host, _ := os.Hostname()
	db := &Dashboard{d: d, cfg: cfg}
	db.self = Process{
		ID: fmt.Sprintf("%s:%d:%s", host, os.Getpid(), randomID()), Role: cfg.Role,
		Host: host, PID: os.Getpid(), Started: time.Now().UTC(),
	}
	if d.Jobs != nil {
		db.insp = d.Jobs.Inspector()
	}
	return db, nil
}

// ID returns this process's id in the reports.
func (db *Dashboard) ID() string { return db.self.ID }

// Start starts the reporter and, with Config.Publish, the publisher's
// candidacy. Stop stops them.
func (db *Dashboard) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	db.cancel = cancel
	db.wg.Add(1)
	go func() { defer db.wg.Done(); db.report(ctx) }()
	if db.cfg.Publish {
		db.wg.Add(1)
		go func() {
			defer db.wg.Done()
			err := progress.RunAsLeader(ctx, db.d.Redis, progress.LeaderConfig{
				Key: db.leaderKey(), TTL: db.cfg.LeaderTTL, Owner: db.self.ID, Logger: db.cfg.Logger,
			}, db.publish)
			if err != nil {
				db.cfg.Logger.Error("dashboard publisher stopped", "err", err)
			}
		}()
	}
	db.cfg.Logger.Info("dashboard started", "id", db.self.ID, "role", db.cfg.Role, "publish", db.cfg.Publish, "interval", db.cfg.Interval)
}

// Stop stops the publisher (releasing its lease, so another process
// takes over at once) and the reporter (removing this process's report),
// and waits for them, or for ctx. Safe to call more than once, and
// without Start.
func (db *Dashboard) Stop(ctx context.Context) {
	db.once.Do(func() {
		if db.cancel == nil {
			return
		}
		db.cancel()
		done := make(chan struct{})
		go func() { db.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			db.cfg.Logger.Warn("dashboard did not stop in time", "err", ctx.Err())
		}
	})
}

func (db *Dashboard) key(parts string) string {
	return db.cfg.Prefix + ":{dash}:" + parts
}
func (db *Dashboard) procsKey() string { return db.key("procs") }
func (db *Dashboard) procKey(id string) string {
	return db.key("proc:" + id)
}
func (db *Dashboard) seriesKey() string { return db.key("series") }
func (db *Dashboard) totalsKey() string { return db.key("totals") }
func (db *Dashboard) leaderKey() string { return db.cfg.Prefix + ":dashboard:leader" }
