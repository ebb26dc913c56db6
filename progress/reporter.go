package progress

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"taskstream/wire"
)

// Progress is the payload of a "progress" event, defined in wire.
type Progress = wire.Progress

// LogEntry is the payload of a "log" event.
type LogEntry struct {
	Level   string `json:"level"`
	Message string `json:"message"`
}

// ReporterConfig configures a Reporter. The zero value is usable.
type ReporterConfig struct {
	// MaxRate is the most progress events per second one reporter publishes;
	// reports in between are coalesced and the latest one is published when
	// the interval has passed. The final report (Done >= Total) always goes
	// out at once. Default 10.
	MaxRate float64
	// LogRate and LogBurst limit "log" events per reporter; excess messages
	// are counted and the count is published with the next one that passes.
	// Defaults 5 per second, burst 20.
	LogRate  float64
	LogBurst int
	// Logger receives publish failures. Default slog.Default().
	Logger *slog.Logger
	// HoldFinal makes the final report wait like any other within the
	// MaxRate interval (published when the interval since the last one has
	// passed) instead of going out at once, so that a producer that ends
	// right after it can hand it over with Take and send it with its own
	// last commands in one round trip (the worker does: a completed job's
	// last report is appended in the round trip that records its end, just
	// before it). Still never dropped: Flush, Close and the trailing timer
	// publish it. Default false (the final report goes at once).
	HoldFinal bool
	// FirstDelay makes the first report wait this long from when it is
	// made, coalesced with those that follow, before it is published; later reports keep to
	// MaxRate from then on. Work that ends sooner publishes no
	// intermediate report at all, only its final one (with HoldFinal, in
	// its producer's last round trip): a run of a few milliseconds costs
	// one progress event, not a "0 %" report followed at once by the last.
	// Default 0: the first report goes out at once.
	FirstDelay time.Duration
}

func (c ReporterConfig) withDefaults() ReporterConfig {
	if c.MaxRate <= 0 {
		c.MaxRate = 10
	}
	if c.LogRate <= 0 {
		c.LogRate = 5
	}
	if c.LogBurst <= 0 {
		c.LogBurst = 20
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Reporter publishes one producer's progress to one group: it computes rate
// and ETA and throttles to ReporterConfig.MaxRate so a tight loop cannot
// flood Redis. Publishing failures are logged, not returned: losing a
// progress report must not fail the work it describes.
//
// A Reporter is safe for concurrent use. Close it when the work ends: Close
// publishes the last coalesced report and stops the trailing timer.
type Reporter struct {
	log      *Log
	group    string
	ctx      context.Context
	interval time.Duration
	logs     *rate.Limiter
	logger   *slog.Logger
	now      func() time.Time
	// holdFinal and firstDelay: see ReporterConfig.
	holdFinal  bool
	firstDelay time.Duration

	mu         sync.Mutex
	closed     bool
	lastSent   time.Time
	pending    *Progress // coalesced report waiting for the interval
	timer      *time.Timer
	sample     time.Time // time of the last rate sample
	sampleDone int64
	rate       float64
	dropped    int
}

// NewReporter returns a Reporter that publishes to group on log. ctx bounds
// its publishes; it is typically the job's context detached from
// cancellation, so the final report still goes out after a cancel.
func NewReporter(ctx context.Context, log *Log, group string, cfg ReporterConfig) *Reporter {
	cfg = cfg.withDefaults()
	r := &Reporter{
		log:       log,
		group:     group,
		ctx:       ctx,
		interval:  time.Duration(float64(time.Second) / cfg.MaxRate),
		logs:      rate.NewLimiter(rate.Limit(cfg.LogRate), cfg.LogBurst),
		logger:    cfg.Logger,
		now:       time.Now,
		holdFinal: cfg.HoldFinal,
	}
	r.firstDelay = cfg.FirstDelay
	return r
}

// Progress reports that done of total units are finished, in stage, with
// an optional message. total <= 0 means unknown (no percent, no ETA).
func (r *Reporter) Progress(done, total int64, stage, message string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	now := r.now()
	if r.firstDelay > 0 && r.lastSent.IsZero() {
		// The first report: as if one had gone out so that the next may
		// go FirstDelay from now, it waits (coalescing) until then.
		r.lastSent = now.Add(r.firstDelay - r.interval)
	}
	p := &Progress{Done: done, Total: total, Stage: stage, Message: message}
	r.estimate(p, now)
	final := total > 0 && done >= total && !r.holdFinal
	if final || now.Sub(r.lastSent) >= r.interval {
		r.publishLocked(p, now)
		return
	}
	r.pending = p
	if r.timer == nil {
		r.timer = time.AfterFunc(r.interval-now.Sub(r.lastSent), r.flushTimer)
	}
}

// estimate fills rate, percent and ETA. The rate is an exponentially
// weighted average of the speed between samples at least 200 ms apart, so
// it follows changes in speed without jumping on every report.
func (r *Reporter) estimate(p *Progress, now time.Time) {
	const minSample = 200 * time.Millisecond
	const alpha = 0.3
	switch {
	case r.sample.IsZero():
		r.sample, r.sampleDone = now, p.Done
	case p.Done < r.sampleDone:
		r.sample, r.sampleDone, r.rate = now, p.Done, 0 // restarted (new stage or attempt)
	case now.Sub(r.sample) >= minSample:
		inst := float64(p.Done-r.sampleDone) / now.Sub(r.sample).Seconds()
		if r.rate == 0 {
			r.rate = inst
		} else {
			r.rate = alpha*inst + (1-alpha)*r.rate
		}
		r.sample, r.sampleDone = now, p.Done
	}
	p.Rate = round(r.rate, 2)
	if p.Total > 0 {
		p.Percent = round(100*float64(min(p.Done, p.Total))/float64(p.Total), 2)
		if r.rate > 0 && p.Done < p.Total {
			p.ETA = round(float64(p.Total-p.Done)/r.rate, 1)
		}
	}
}

func round(v float64, places int) float64 {
	f := math.Pow(10, float64(places))
	return math.Round(v*f) / f
}

func (r *Reporter) flushTimer() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.timer = nil
	if r.pending != nil && !r.closed {
		r.publishLocked(r.pending, r.now())
	}
}

func (r *Reporter) publishLocked(p *Progress, now time.Time) {
	r.pending = nil
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	r.lastSent = now
	if _, err := r.log.Publish(r.ctx, r.group, wire.EventProgress, p); err != nil {
		r.logger.Warn("progress report lost", "group", r.group, "err", err)
	}
}

// Log publishes a "log" event with level ("debug", "info", "warn",
// "error") and message, within the reporter's log rate limit.
func (r *Reporter) Log(level, message string) {
	if !r.logs.Allow() {
		r.mu.Lock()
		r.dropped++
		r.mu.Unlock()
		return
	}
	r.mu.Lock()
	if r.dropped > 0 {
		message = fmt.Sprintf("%s (%d earlier messages dropped by the rate limit)", message, r.dropped)
		r.dropped = 0
	}
	r.mu.Unlock()
	if _, err := r.log.Publish(r.ctx, r.group, wire.EventLog, LogEntry{Level: level, Message: message}); err != nil {
		r.logger.Warn("log event lost", "group", r.group, "err", err)
	}
}

// Flush publishes the coalesced report, if any, now.
func (r *Reporter) Flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending != nil && !r.closed {
		r.publishLocked(r.pending, r.now())
	}
}

// Close flushes the last report and stops the reporter; later reports are
// ignored. Safe to call more than once.
func (r *Reporter) Close() {
	// One critical section: a report made between the flush and the close
	// would otherwise be coalesced and then dropped by the closed timer.
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending != nil && !r.closed {
		r.publishLocked(r.pending, r.now())
	}
	r.closed = true
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
}

// Take stops the reporter, as Close does, but returns the coalesced report
// (nil when none waits) instead of publishing it: the caller publishes it
// with events of its own, in one step. Later reports are ignored.
func (r *Reporter) Take() *Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	var p *Progress
	if !r.closed {
		p = r.pending
	}
	r.pending = nil
	r.closed = true
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	return p
}
