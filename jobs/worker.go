package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"taskstream/progress"
)

// WorkerConfig configures a Worker. The zero value is usable.
type WorkerConfig struct {
	// Concurrency is how many jobs run at once in this process. Default 10
	// (jobs mostly wait; raise it for I/O-bound types, lower it for CPU).
	Concurrency int
	// Queues maps queue names (as job types name them) to weights: when
	// several queues hold work, Asynq picks one at random by weight. Each
	// queue is served as one Asynq queue per priority (ExpandQueues).
	// Default: every queue of the registered types, weight 1.
	Queues map[string]int
	// ShutdownTimeout is how long running jobs get to finish on shutdown;
	// shortly before it ends their contexts are canceled, and Asynq hands
	// them back to the queue for another worker. Default 8s.
	ShutdownTimeout time.Duration
	// PollInterval is how often an idle worker checks empty queues for new
	// jobs (Asynq's TaskCheckInterval): the pickup delay of a new job.
	// Asynq sleeps a random 0.5 to 1.5 times it after each empty check.
	// A busy worker asks again about a queue it found empty after half of
	// it (see dequeueGate). Default DefaultPollInterval.
	PollInterval time.Duration
	// DelayedPollInterval is how often a worker moves the scheduled jobs
	// and the retries that are due into their queues (Asynq's
	// DelayedTaskCheckInterval): how late a scheduled job or a retry may
	// start. Default: the shorter of RetryDelay and 1s, but at least
	// PollInterval.
	DelayedPollInterval time.Duration
	// CancelPoll is how often a running job checks its cancel flag, in
	// case the cancel signal on pub/sub was missed. Default 2s.
	CancelPoll time.Duration
	// Heartbeat is how often a worker refreshes its claim on each job it
	// runs, and how often it looks for jobs whose worker stopped doing so.
	// Default 5s.
	Heartbeat time.Duration
	// LostAfter is how old a running job's last heartbeat may be before
	// its worker counts as lost (killed, frozen, cut off from Redis):
	// watchers are told "state retry" ("worker lost") and the job runs
	// again at once on another worker, or fails when it has no retries
	// left. Must exceed Heartbeat (it is raised to 3×Heartbeat when not).
	// Default 15s.
	LostAfter time.Duration
	// ReconcileInterval is how often one worker (at a time) compares the
	// open jobs with Asynq, to end the jobs an operator deleted, archived
	// or ran from Asynq's own tools, and to finish enqueues cut short by a
	// crash. Default 15s.
	ReconcileInterval time.Duration
	// ReconcileBatch bounds how many open jobs one reconcile pass checks
	// (those checked longest ago first), so its cost stays bounded however
	// long the queue is. Default 200.
	ReconcileBatch int
	// RetryDelay is the wait before a failed run's first retry; each
	// further retry waits twice as long, up to 5 minutes. Default 1s.
	RetryDelay time.Duration
	// Reporter configures each job's progress reporter (rate limits).
	Reporter progress.ReporterConfig
}

// Defaults of WorkerConfig.PollInterval, Heartbeat and LostAfter, for
// callers that check a configuration before building a worker.
const (
	// DefaultPollInterval is chosen from measurements on redis-server
	// (README, "Worker settings"): a new job is picked up within
	// 1.5×100 ms by one idle worker, and sooner with more of them, while
	// an idle worker costs Redis about 170 commands/s (a dequeue script
	// per served queue per check, 9 with the built-in types, their
	// bodies counted) against 15/s at Asynq's default of 1s.
	DefaultPollInterval = 100 * time.Millisecond
	DefaultHeartbeat    = 5 * time.Second
	DefaultLostAfter    = 15 * time.Second
)

func (c WorkerConfig) withDefaults(reg *Registry) WorkerConfig {
	if c.Concurrency <= 0 {
		c.Concurrency = 10
	}
	if len(c.Queues) == 0 {
		c.Queues = map[string]int{}
		for _, q := range reg.Queues() {
			c.Queues[q] = 1
		}
	}
	c.Queues = ExpandQueues(c.Queues)
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 8 * time.Second
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.CancelPoll <= 0 {
		c.CancelPoll = 2 * time.Second
	}
	if c.RetryDelay <= 0 {
		c.RetryDelay = time.Second
	}
	if c.DelayedPollInterval <= 0 {
		// Retries wait in Asynq's retry set until its forwarder moves them
		// to the queue: every second, or sooner when retries are sooner,
		// but no sooner than the queue itself is polled.
		c.DelayedPollInterval = max(c.PollInterval, min(c.RetryDelay, time.Second))
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.LostAfter <= 0 {
		c.LostAfter = DefaultLostAfter
	}
	if c.LostAfter <= c.Heartbeat {
		c.LostAfter = 3 * c.Heartbeat
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = 15 * time.Second
	}
	if c.ReconcileBatch <= 0 {
		c.ReconcileBatch = 200
	}
	return c
}

// Worker runs job handlers from Asynq queues and emits each job's lifecycle
// events (through the lifecycle), so handlers only do their work and
// report progress: "state" active / retry / completed / failed / canceled,
// then "result" or "failed" as the job's last event.
//
// Background components, each started by Start and stopped by Shutdown:
// the Asynq server (runs handlers), the cancel listener (stops a running
// job when the API cancels it), the heartbeat (refreshes the claim of each
// running job every Heartbeat), the lost-job sweep (runs again the jobs
// whose worker stopped beating for LostAfter) and the reconciler (ends the
// jobs that Asynq's own tools moved). Shutdown order: stop taking jobs,
// let running jobs finish or hand them back, and only then stop the
// others, so a cancel that arrives while jobs drain still works and
// draining jobs keep beating.
type Worker struct {
	svc    *Service
	rdb    redis.UniversalClient
	srv    *asynq.Server
	gate   *dequeueGate // under ends
	ends   *endGate     // the client srv runs on
	cfg    WorkerConfig
	logger *slog.Logger

	stopJobs context.Context // canceled shortly before Asynq hands running jobs back
	stop     context.CancelFunc

	mu      sync.Mutex
	running map[*run]struct{}

	bgCtx    context.Context
	bgCancel context.CancelFunc
	bg       sync.WaitGroup
	once     sync.Once
}

// run is a job running in this process.
type run struct {
	a      *attempt
	cancel context.CancelCauseFunc
	stale  atomic.Bool // the job moved on to another run: drop everything
	// beat is when this run last refreshed its claim (unix ns): a run
	// whose claim has gone stale may have been taken for lost.
	beat atomic.Int64
}

var (
	errCanceledByUser = errors.New("canceled by request")
	errWorkerStopping = errors.New("worker shutting down")
	errStale          = errors.New("the job moved on to another run (this worker was taken for lost)")
)

// NewWorker returns a worker for svc's job types on rdb. Call Start.
func NewWorker(svc *Service, rdb redis.UniversalClient, cfg WorkerConfig) *Worker {
	cfg = cfg.withDefaults(svc.reg)
	w := &Worker{svc: svc, rdb: rdb, cfg: cfg, logger: svc.cfg.Logger.With("component", "worker"), running: map[*run]struct{}{}}
	w.stopJobs, w.stop = context.WithCancel(context.Background())
	w.bgCtx, w.bgCancel = context.WithCancel(context.Background())
	w.gate = newDequeueGate(rdb, cfg.PollInterval/2)
	w.ends = newEndGate(w.gate)
	w.srv = asynq.NewServerFromRedisClient(w.ends, cfg.asynqConfig(w.logger))
	return w
}

// asynqConfig is the configuration of the Asynq server that runs c's
// handlers (c has its defaults).
func (c WorkerConfig) asynqConfig(logger *slog.Logger) asynq.Config {
	return asynq.Config{
		Concurrency:              c.Concurrency,
		Queues:                   c.Queues,
		ShutdownTimeout:          c.ShutdownTimeout,
		TaskCheckInterval:        c.PollInterval,
		DelayedTaskCheckInterval: c.DelayedPollInterval,
		Logger:                   asynqLogger{logger},
		LogLevel:                 asynq.WarnLevel,
		RetryDelayFunc: func(n int, err error, t *asynq.Task) time.Duration {
			return min(c.RetryDelay<<min(n, 10), max(5*time.Minute, c.RetryDelay))
		},
	}
}

// Start starts the worker's components.
func (w *Worker) Start() error {
	mux := asynq.NewServeMux()
	for _, t := range w.svc.reg.Types() {
		mux.HandleFunc(t.Name, w.handler(t))
	}
	if err := w.srv.Start(mux); err != nil {
		return fmt.Errorf("jobs: start worker: %w", err)
	}
	for _, loop := range []func(context.Context){w.cancelListener, w.heartbeatLoop, w.sweepLoop, w.reconcileLoop} {
		w.bg.Add(1)
		go func() { defer w.bg.Done(); loop(w.bgCtx) }()
	}
	w.logger.Info("worker started", "concurrency", w.cfg.Concurrency, "queues", w.cfg.Queues,
		"poll_interval", w.cfg.PollInterval, "delayed_poll_interval", w.cfg.DelayedPollInterval, "heartbeat", w.cfg.Heartbeat, "lost_after", w.cfg.LostAfter, "reconcile_interval", w.cfg.ReconcileInterval)
	return nil
}

// Shutdown stops the worker (see Worker for the order). It blocks up to
// about ShutdownTimeout while running jobs finish. Safe to call twice.
func (w *Worker) Shutdown() {
	w.once.Do(func() {
		w.srv.Stop() // no new jobs
		margin := min(w.cfg.ShutdownTimeout/4, 500*time.Millisecond)
		t := time.AfterFunc(w.cfg.ShutdownTimeout-margin, w.stop)
		w.srv.Shutdown() // waits for handlers, then requeues the rest
		t.Stop()
		w.stop()
		// Ends that Asynq did not carry (see endGate) go now, before
		// the runs' retries stop.
		for _, e := range w.ends.orphans(true) {
			e.settle()
		}
		w.bgCancel()
		w.bg.Wait()
		w.logger.Info("worker stopped")
	})
}

// dropped is what a run returns when its job moved on without it (or was
// over before it started): Asynq deletes the task instead of retrying or
// archiving it, and nothing is published.
func dropped(task string, why string) error {
	return fmt.Errorf("task %s: %s: %w", task, why, asynq.RevokeTask)
}

func (w *Worker) handler(t Type) asynq.HandlerFunc {
	return func(ctx context.Context, task *asynq.Task) error {
		taskID, _ := asynq.GetTaskID(ctx)
		retried, _ := asynq.GetRetryCount(ctx)
		maxRetry, _ := asynq.GetMaxRetry(ctx)
		// Lifecycle events must go out even when the job's context ends.
		pubCtx := context.WithoutCancel(ctx)
		lc := w.svc.lc

		a, outcome, err := lc.start(pubCtx, taskID, maxRetry-retried)
		switch {
		case err != nil:
			return err
		case outcome == startDrop:
			return dropped(taskID, "not its job's current run, or the job is over")
		case outcome == startGone:
			w.logger.Warn("a dequeued task has no job record (Redis lost it): the job ends failed", "task", taskID)
			lc.stateLost(pubCtx, jobOfTask(taskID))
			return dropped(taskID, reasonStateLost)
		case outcome == startCanceled:
			// Deleted, not archived: the cancel that raced this start
			// meant to delete the waiting task, and a job canceled before
			// it ran leaves no task behind (README, Cancel).
			lc.end(pubCtx, jobOfTask(taskID), taskID, "", StateCanceled, nil, "")
			return dropped(taskID, "canceled before it started")
		}
		// The run's end outlasts a Redis outage (see Config.EndRetryFor),
		// but not the worker's own shutdown.
		a.stop = w.bgCtx.Done()
		if queue, ok := asynq.GetQueueName(ctx); ok && lc.fused {
			// Its end goes with Asynq's script on the task, after this
			// returns (endGate).
			taskKey := asynqTaskKey(queue, taskID)
			a.ride = func(e *endStep) { w.ends.wait(taskKey, e) }
		}
		id := a.job()
		runCtx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		r := &run{a: a, cancel: cancel}
		r.beat.Store(time.Now().UnixNano())
		w.track(r)
		defer w.untrack(r)
		defer context.AfterFunc(w.stopJobs, func() { cancel(errWorkerStopping) })()
		go w.pollCancel(runCtx, r)

		// The final report waits like a coalesced one (HoldFinal), so that
		// a run that completes right after it hands it to its end below:
		// it is appended in the round trip that records the end, just
		// before it (one round trip less per job).
		repCfg := w.cfg.Reporter
		repCfg.HoldFinal = true
		rep := &runReporter{r: progress.NewReporter(pubCtx, w.svc.log, Group(id), repCfg), run: r}
		env := Env{JobID: id, Attempt: a.n, ArtifactDir: w.svc.cfg.ArtifactDir}
		result, err := runSafely(runCtx, t, task.Payload(), env, rep)
		var b []byte
		if err == nil {
			var merr error
			if b, merr = json.Marshal(result); merr != nil {
				err = fmt.Errorf("encode result: %w", merr)
			}
		}
		// A run that completes takes its last coalesced report for its
		// end; any other publishes it now, before its retry or failure.
		var lead *progress.Progress
		if err == nil {
			lead = rep.r.Take()
		} else {
			rep.Close()
		}
		if r.stale.Load() {
			return dropped(taskID, errStale.Error())
		}
		if err == nil {
			switch lc.finishRunHow(pubCtx, newOp(), a, StateCompleted, b, "", lead) {
			case finishStale:
				return dropped(taskID, errStale.Error())
			case finishUnknown:
				// Asynq completes the task once this returns: the
				// lost-job sweep or the reconciler that finds it
				// completed, its end not recorded, ends the job with
				// Asynq's copy of the result. A recorded end needs no
				// copy (the job's record has the result), which saves
				// a round trip per job.
				if _, werr := task.ResultWriter().Write(b); werr != nil {
					w.logger.Warn("storing the result in asynq failed too; if the end was not recorded either, the job ends completed without its result", "job", id, "err", werr)
				}
			}
			return nil
		}

		cause := context.Cause(runCtx)
		canceled, _ := lc.canceled(pubCtx, id)
		switch {
		case errors.Is(cause, errStale):
			return dropped(taskID, errStale.Error())
		case errors.Is(cause, errCanceledByUser) || canceled:
			lc.finishRun(pubCtx, a, StateCanceled, nil, "")
			return fmt.Errorf("job %s: %w: %w", id, errCanceledByUser, asynq.SkipRetry)
		case errors.Is(cause, errWorkerStopping):
			lc.handBack(pubCtx, a)
			// Asynq hands the job back when its shutdown timeout ends and
			// then cancels ctx; returning earlier would count as a failure.
			<-ctx.Done()
			lc.release(pubCtx, a)
			return ctx.Err()
		case errors.Is(ctx.Err(), context.Canceled) && time.Since(time.Unix(0, r.beat.Load())) > w.cfg.LostAfter:
			// Asynq canceled the run because its lease expired: this
			// worker lost Redis for longer than LostAfter, and the
			// lost-job sweep ends or reruns the job.
			return ctx.Err()
		case errors.Is(ctx.Err(), context.Canceled):
			// Asynq itself canceled the run while this worker's heartbeat
			// was fine: an operator's Inspector.CancelProcessing (asynq
			// CLI, asynqmon). End it canceled; Asynq may still retry the
			// task, and that run is dropped because the job is over.
			lc.finishRun(pubCtx, a, StateCanceled, nil, reasonOpCanceled)
			return fmt.Errorf("job %s: %s: %w", id, reasonOpCanceled, asynq.SkipRetry)
		}
		if retried < maxRetry && !errors.Is(err, asynq.SkipRetry) {
			if !lc.retry(pubCtx, a, err.Error()) {
				return dropped(taskID, errStale.Error())
			}
			return err
		}
		if !lc.finishRun(pubCtx, a, StateFailed, nil, err.Error()) {
			return dropped(taskID, errStale.Error())
		}
		return err
	}
}

// runReporter drops the reports of a run that was taken for lost, so a
// slow worker's progress does not mix with the new run's once its
// heartbeat has learned that.
type runReporter struct {
	r   *progress.Reporter
	run *run
}

func (p *runReporter) Progress(done, total int64, stage, message string) {
	if !p.run.stale.Load() {
		p.r.Progress(done, total, stage, message)
	}
}

func (p *runReporter) Log(level, message string) {
	if !p.run.stale.Load() {
		p.r.Log(level, message)
	}
}

func (p *runReporter) Close() { p.r.Close() }

// runSafely runs a handler, turning a panic into the job's failure so the
// lifecycle events still go out.
func runSafely(ctx context.Context, t Type, payload []byte, env Env, r Reporter) (result any, err error) {
	defer func() {
		if p := recover(); p != nil {
			slog.Error("job handler panicked", "type", t.Name, "job", env.JobID, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return t.run(ctx, payload, env, r)
}

func (w *Worker) track(r *run) {
	w.mu.Lock()
	w.running[r] = struct{}{}
	w.mu.Unlock()
}

func (w *Worker) untrack(r *run) {
	w.mu.Lock()
	delete(w.running, r)
	w.mu.Unlock()
}

// runs returns the runs of this process.
func (w *Worker) runs() []*run {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]*run, 0, len(w.running))
	for r := range w.running {
		out = append(out, r)
	}
	return out
}

func (w *Worker) cancelRunning(id string) {
	for _, r := range w.runs() {
		if r.a.job() == id {
			r.cancel(errCanceledByUser)
		}
	}
}

// pollCancel is the fallback for a cancel signal lost on pub/sub.
func (w *Worker) pollCancel(ctx context.Context, r *run) {
	t := time.NewTicker(w.cfg.CancelPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if c, err := w.svc.lc.canceled(ctx, r.a.job()); err == nil && c {
				r.cancel(errCanceledByUser)
				return
			}
		}
	}
}

// cancelListener stops running jobs the API cancels; pollCancel covers a
// signal lost while the subscription reconnects.
func (w *Worker) cancelListener(ctx context.Context) {
	progress.Watch(ctx, w.rdb, w.svc.store.cancelChannel(), w.cancelRunning)
}

// heartbeatLoop refreshes, every Heartbeat, the claim of each job this
// process runs. A run whose job moved on is stopped and its results
// dropped; a canceled one is stopped; a job whose record Redis lost is
// restored.
func (w *Worker) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(w.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var beats []redis.Z
		var claimed []*run
		for _, r := range w.runs() {
			out, now, err := w.svc.lc.beat(ctx, r.a)
			if err != nil {
				if ctx.Err() == nil {
					w.logger.Warn("heartbeat failed", "job", r.a.job(), "err", err)
				}
				continue
			}
			if out == beatStale {
				r.beat.Store(time.Now().UnixNano())
				w.logger.Warn("this run's job moved on (it was taken for lost); stopping it and dropping its results", "job", r.a.job(), "attempt", r.a.n)
				r.stale.Store(true)
				r.cancel(errStale)
				continue
			}
			beats = append(beats, redis.Z{Score: float64(now), Member: r.a.job()})
			claimed = append(claimed, r)
			if out == beatCanceled {
				r.cancel(errCanceledByUser)
			}
		}
		if orphans := w.ends.orphans(false); len(orphans) > 0 {
			// Asynq did not end these runs' tasks here (their leases
			// expired): their ends go alone, without holding up the
			// beats.
			w.logger.Warn("runs ended without Asynq's word on their tasks; their ends go alone", "runs", len(orphans))
			w.bg.Add(1)
			go func() {
				defer w.bg.Done()
				for _, e := range orphans {
					e.settle()
				}
			}()
		}
		if len(beats) == 0 {
			continue
		}
		if err := w.svc.lc.claimRunning(ctx, beats); err != nil {
			if ctx.Err() == nil {
				w.logger.Warn("heartbeat failed", "err", err)
			}
			continue
		}
		at := time.Now().UnixNano()
		for _, r := range claimed {
			r.beat.Store(at)
		}
	}
}

// sweepPage bounds the lost jobs one sweep handles; the rest wait for the
// next sweep, which comes at once.
const sweepPage = 100

// sweepLoop looks for lost jobs. Every worker sweeps (the transition is
// atomic, so two sweepers can not both act): at least every Heartbeat,
// and exactly when the oldest claim becomes older than LostAfter, so a
// killed worker's job is noticed LostAfter after its last heartbeat.
//
// A sweeper judges only after it has itself reached Redis without a gap
// for LostAfter: when Redis was paused or unreachable (or this process was
// stopped), every worker's heartbeats stopped too, and their claims are
// old without their runs being lost; live workers beat again within that
// time.
func (w *Worker) sweepLoop(ctx context.Context) {
	t := time.NewTimer(w.cfg.Heartbeat)
	defer t.Stop()
	var lastOK, healthySince time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		judge := false
		if err := w.rdb.Ping(ctx).Err(); err == nil {
			now := time.Now()
			if now.Sub(lastOK) > 2*w.cfg.Heartbeat {
				healthySince = now // the first contact after a gap
			}
			lastOK = now
			judge = now.Sub(healthySince) >= w.cfg.LostAfter
		}
		next := w.cfg.Heartbeat
		if judge {
			var err error
			if next, err = w.sweep(ctx); err != nil && ctx.Err() == nil {
				w.logger.Warn("lost-job sweep failed", "err", err)
			}
		}
		t.Reset(next)
	}
}

// sweep handles the jobs whose last heartbeat is older than LostAfter and
// returns when to sweep next.
func (w *Worker) sweep(ctx context.Context) (time.Duration, error) {
	st := w.svc.store
	now, err := w.rdb.Time(ctx).Result()
	if err != nil {
		return w.cfg.Heartbeat, fmt.Errorf("read the server's clock: %w", err)
	}
	cutoff := now.Add(-w.cfg.LostAfter).UnixMilli()
	ids, err := w.rdb.ZRangeByScore(ctx, st.runningKey(), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(cutoff, 10), Count: sweepPage,
	}).Result()
	if err != nil {
		return w.cfg.Heartbeat, fmt.Errorf("list running jobs: %w", err)
	}
	var errs []error
	for _, id := range ids {
		if err := w.svc.lc.lost(ctx, id, w.cfg.LostAfter); err != nil {
			errs = append(errs, err)
		}
	}
	next := w.cfg.Heartbeat
	if len(ids) == sweepPage && len(errs) == 0 {
		next = time.Millisecond // more lost jobs wait
	} else if oldest, err := w.rdb.ZRangeWithScores(ctx, st.runningKey(), 0, 0).Result(); err == nil && len(oldest) == 1 {
		// Wake when the oldest claim goes stale (its beat is late).
		due := time.UnixMilli(int64(oldest[0].Score)).Add(w.cfg.LostAfter).Sub(now) + time.Millisecond
		if due > 0 && due < next {
			next = due
		}
	}
	return next, errors.Join(errs...)
}

func (w *Worker) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(w.cfg.ReconcileInterval)
	defer t.Stop()
	lockKey := w.svc.store.prefix + ":reconciler"
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Every worker prunes its own artifact directory (it may be a
		// local disk); the cheap directory scan needs no coordination.
		if err := pruneArtifacts(w.svc.cfg.ArtifactDir, time.Now().Add(-w.svc.cfg.Retention)); err != nil {
			w.logger.Warn("pruning old artifacts failed", "dir", w.svc.cfg.ArtifactDir, "err", err)
		}
		// One reconciler at a time across all workers.
		ok, err := w.rdb.SetNX(ctx, lockKey, hostID(), w.cfg.ReconcileInterval/2).Result()
		if err != nil || !ok {
			continue
		}
		if err := w.reconcile(ctx); err != nil && ctx.Err() == nil {
			w.logger.Warn("reconcile failed", "err", err)
		}
	}
}

// reconcile checks one page of open jobs, those checked longest ago, and
// moves each checked one that stays open to the back of the line.
func (w *Worker) reconcile(ctx context.Context) error {
	st := w.svc.store
	now := time.Now()
	ids, err := w.rdb.ZRangeByScore(ctx, st.openKey(), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(now.UnixMicro(), 10), Count: int64(w.cfg.ReconcileBatch),
	}).Result()
	if err != nil {
		return fmt.Errorf("list open jobs: %w", err)
	}
	next := float64(now.Add(w.cfg.ReconcileInterval).UnixMicro())
	var errs []error
	for _, id := range ids {
		open, err := w.svc.lc.reconcile(ctx, id)
		if err != nil {
			errs = append(errs, err)
		}
		if open {
			if err := w.rdb.ZAddXX(ctx, st.openKey(), redis.Z{Score: next, Member: id}).Err(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func hostID() string {
	h, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", h, os.Getpid())
}

// asynqLogger routes Asynq's logs into slog.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...)) }
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...)) }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }
func (a asynqLogger) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...)); os.Exit(1) }
