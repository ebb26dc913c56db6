package dashboard

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/jobs"
)

// Outcomes are the terminal states a finished job is counted under.
var Outcomes = []string{jobs.StateCompleted, jobs.StateFailed, jobs.StateCanceled}

// Process is one process's report: who it is and its own figures, as it
// last wrote them.
type Process struct {
	ID      string    `json:"id"`   // HOST:PID:RANDOM, unique per process run
	Role    string    `json:"role"` // api or worker
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	At      time.Time `json:"at"` // when it wrote this report
	// Sockets are the open connections by transport (websocket, sse,
	// longpoll); Subscriptions the group subscriptions they hold; Groups
	// the shared Redis subscriptions of the process's hub.
	Sockets       map[string]int `json:"sockets"`
	Subscriptions int            `json:"subscriptions"`
	Groups        int            `json:"groups"`
	// Delivered counts the events handed to this process's subscribers
	// since it started; Finished the jobs it ended, by outcome.
	Delivered uint64            `json:"delivered"`
	Finished  map[string]uint64 `json:"finished"`
	// DeliveredPerS is filled in by the publisher: events delivered per
	// second over the last interval.
	DeliveredPerS float64 `json:"delivered_per_s"`
}

// Label names the process in charts: HOST:PID.
func (p Process) Label() string { return fmt.Sprintf("%s:%d", p.Host, p.PID) }

// OpenSockets is the process's open connections over every transport.
func (p Process) OpenSockets() int {
	n := 0
	for _, v := range p.Sockets {
		n += v
	}
	return n
}

// JobCounts counts the jobs this process finished, by outcome, for its
// report, and passes every call on to Next (the metrics). It implements
// jobs.Observer; set it as jobs.Config.Observer. Safe for concurrent use.
type JobCounts struct {
	// Next receives every call as well. Default nil: none.
	Next jobs.Observer

	completed, failed, canceled atomic.Uint64
}

// NewJobCounts returns a JobCounts that passes calls on to next (nil: none).
func NewJobCounts(next jobs.Observer) *JobCounts { return &JobCounts{Next: next} }

// JobSubmitted implements jobs.Observer.
func (c *JobCounts) JobSubmitted(typ string) {
	if c.Next != nil {
		c.Next.JobSubmitted(typ)
	}
}

// JobStarted implements jobs.Observer.
func (c *JobCounts) JobStarted(typ string, wait time.Duration) {
	if c.Next != nil {
		c.Next.JobStarted(typ, wait)
	}
}

// JobFinished implements jobs.Observer: it counts outcome.
func (c *JobCounts) JobFinished(typ, outcome string, took time.Duration, ran bool) {
	switch outcome {
	case jobs.StateCompleted:
		c.completed.Add(1)
	case jobs.StateFailed:
		c.failed.Add(1)
	case jobs.StateCanceled:
		c.canceled.Add(1)
	}
	if c.Next != nil {
		c.Next.JobFinished(typ, outcome, took, ran)
	}
}

// Finished returns the counts by outcome.
func (c *JobCounts) Finished() map[string]uint64 {
	if c == nil {
		return map[string]uint64{jobs.StateCompleted: 0, jobs.StateFailed: 0, jobs.StateCanceled: 0}
	}
	return map[string]uint64{
		jobs.StateCompleted: c.completed.Load(), jobs.StateFailed: c.failed.Load(), jobs.StateCanceled: c.canceled.Load(),
	}
}

// current builds this process's report from its live counts.
func (db *Dashboard) current() Process {
	p := db.self
	p.At = time.Now().UTC()
	p.Sockets = map[string]int{}
	if db.d.Sockets != nil {
		for k, v := range db.d.Sockets() {
			p.Sockets[k] = v
		}
	}
	if db.d.Hub != nil {
		c := db.d.Hub.Counters()
		p.Groups = c.Groups
		for _, n := range c.SubscribersByKind {
			p.Subscriptions += n
		}
		for _, n := range c.Delivered {
			p.Delivered += n
		}
	}
	p.Finished = db.d.Counts.Finished()
	return p
}

// report writes this process's report every Interval until ctx ends,
// then removes it.
func (db *Dashboard) report(ctx context.Context) {
	t := time.NewTicker(db.cfg.Interval)
	defer t.Stop()
	failing := false
	for {
		if err := db.writeReport(ctx, db.current()); err != nil && ctx.Err() == nil {
			if !failing { // once per outage, not once per second
				db.cfg.Logger.Warn("dashboard: writing this process's report failed", "err", err)
			}
			failing = true
		} else {
			failing = false
		}
		select {
		case <-ctx.Done():
			rmCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_, err := db.d.Redis.Pipelined(rmCtx, func(p redis.Pipeliner) error {
				p.Del(rmCtx, db.procKey(db.self.ID))
				p.ZRem(rmCtx, db.procsKey(), db.self.ID)
				return nil
			})
			cancel()
			if err != nil {
				db.cfg.Logger.Debug("dashboard: removing this process's report failed; it expires", "err", err)
			}
			return
		case <-t.C:
		}
	}
}

func (db *Dashboard) writeReport(ctx context.Context, p Process) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("dashboard: encode report: %w", err)
	}
	_, err = db.d.Redis.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.Set(ctx, db.procKey(p.ID), raw, db.cfg.ReportTTL)
		pipe.ZAdd(ctx, db.procsKey(), redis.Z{Score: float64(p.At.UnixMilli()), Member: p.ID})
		// The index outlives every report in it; entries whose report
		// expired are dropped by the publisher.
		pipe.Expire(ctx, db.procsKey(), db.cfg.Window)
		return nil
	})
	if err != nil {
		return fmt.Errorf("dashboard: write report: %w", err)
	}
	return nil
}

// processes reads every live process's report (the index, then every
// report in one MGET), drops the index entries whose report expired, and
// returns them sorted by role, host and pid.
func (db *Dashboard) processes(ctx context.Context) ([]Process, error) {
	ids, err := db.d.Redis.ZRange(ctx, db.procsKey(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("dashboard: read the process index: %w", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = db.procKey(id)
	}
	vals, err := db.d.Redis.MGet(ctx, keys...).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("dashboard: read the process reports: %w", err)
	}
	var out []Process
	var gone []any
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			gone = append(gone, ids[i])
			continue
		}
		var p Process
		if err := json.Unmarshal([]byte(s), &p); err != nil {
			db.cfg.Logger.Warn("dashboard: dropping an unreadable process report", "id", ids[i], "err", err)
			gone = append(gone, ids[i])
			continue
		}
		out = append(out, p)
	}
	if len(gone) > 0 {
		if err := db.d.Redis.ZRem(ctx, db.procsKey(), gone...).Err(); err != nil {
			db.cfg.Logger.Debug("dashboard: pruning the process index failed", "err", err)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Role != b.Role {
			return a.Role < b.Role
		}
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		if a.PID != b.PID {
			return a.PID < b.PID
		}
		return a.ID < b.ID
	})
	return out, nil
}

// randomID returns 8 random hex digits.
func randomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
