package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
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
	// Queues maps queue names to priorities. Default: every queue of the
	// registered types, priority 1.
	Queues map[string]int
	// ShutdownTimeout is how long running jobs get to finish on shutdown;
	// shortly before it ends their contexts are canceled, and Asynq hands
	// them back to the queue for another worker. Default 8s.
	ShutdownTimeout time.Duration
	// PollInterval is how often an idle worker checks empty queues for new
	// jobs: the pickup delay of a new job. Default 1s (Asynq's default).
	PollInterval time.Duration
	// CancelPoll is how often a running job checks its cancel flag, in
	// case the cancel signal on pub/sub was missed. Default 2s.
	CancelPoll time.Duration
	// ReconcileInterval is how often one worker checks jobs whose worker
	// died (kill -9) and publishes their retry or failure, once Asynq has
	// recovered them. Default 15s.
	ReconcileInterval time.Duration
	// Reporter configures each job's progress reporter (rate limits).
	Reporter progress.ReporterConfig
}

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
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 8 * time.Second
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.CancelPoll <= 0 {
		c.CancelPoll = 2 * time.Second
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = 15 * time.Second
	}
	return c
}

// Worker runs job handlers from Asynq queues and emits each job's lifecycle
// events, so handlers only do their work and report progress:
// "state" active / retry / completed / failed / canceled, then "result" or
// "failed" as the job's last event.
//
// Background components, each started by Start and stopped by Shutdown:
// the Asynq server (runs handlers), the cancel listener (stops a running
// job when the API cancels it) and the reconciler (finishes jobs whose
// worker died). Shutdown order: stop taking jobs, let running jobs finish
// or hand them back, and only then stop the cancel listener and the
// reconciler, so a cancel that arrives while jobs drain still works.
type Worker struct {
	svc    *Service
	rdb    redis.UniversalClient
	srv    *asynq.Server
	cfg    WorkerConfig
	logger *slog.Logger

	stopJobs context.Context // canceled shortly before Asynq hands running jobs back
	stop     context.CancelFunc

	mu      sync.Mutex
	running map[string]context.CancelCauseFunc

	bgCtx    context.Context
	bgCancel context.CancelFunc
	bg       sync.WaitGroup
	once     sync.Once
}

var (
	errCanceledByUser = errors.New("canceled by request")
	errWorkerStopping = errors.New("worker shutting down")
)

// NewWorker returns a worker for svc's job types on rdb. Call Start.
func NewWorker(svc *Service, rdb redis.UniversalClient, cfg WorkerConfig) *Worker {
	cfg = cfg.withDefaults(svc.reg)
	w := &Worker{svc: svc, rdb: rdb, cfg: cfg, logger: svc.cfg.Logger.With("component", "worker"), running: map[string]context.CancelCauseFunc{}}
	w.stopJobs, w.stop = context.WithCancel(context.Background())
	w.bgCtx, w.bgCancel = context.WithCancel(context.Background())
	w.srv = asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              cfg.Concurrency,
		Queues:                   cfg.Queues,
		ShutdownTimeout:          cfg.ShutdownTimeout,
		TaskCheckInterval:        cfg.PollInterval,
		DelayedTaskCheckInterval: max(cfg.PollInterval, time.Second),
		Logger:                   asynqLogger{w.logger},
		LogLevel:                 asynq.WarnLevel,
		RetryDelayFunc: func(n int, err error, t *asynq.Task) time.Duration {
			return min(time.Duration(1<<min(n, 10))*time.Second, 5*time.Minute)
		},
	})
	return w
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
	w.bg.Add(2)
	go func() { defer w.bg.Done(); w.cancelListener(w.bgCtx) }()
	go func() { defer w.bg.Done(); w.reconcileLoop(w.bgCtx) }()
	w.logger.Info("worker started", "concurrency", w.cfg.Concurrency, "queues", w.cfg.Queues)
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
		w.bgCancel()
		w.bg.Wait()
		w.logger.Info("worker stopped")
	})
}

func (w *Worker) handler(t Type) asynq.HandlerFunc {
	return func(ctx context.Context, task *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		retried, _ := asynq.GetRetryCount(ctx)
		maxRetry, _ := asynq.GetMaxRetry(ctx)
		attempt := retried + 1
		// Lifecycle events must go out even when the job's context ends.
		pubCtx := context.WithoutCancel(ctx)
		st := w.svc.store

		if canceled, err := st.canceled(ctx, id); err == nil && canceled {
			w.svc.finish(pubCtx, id, StateCanceled, nil, "")
			return fmt.Errorf("job %s canceled before it started: %w", id, asynq.SkipRetry)
		}
		runCtx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		w.track(id, cancel)
		defer w.untrack(id)
		defer context.AfterFunc(w.stopJobs, func() { cancel(errWorkerStopping) })()
		go w.pollCancel(runCtx, id, cancel)

		if err := w.rdb.ZAdd(ctx, st.runningKey(), redis.Z{Score: float64(time.Now().UnixMilli()), Member: id}).Err(); err != nil {
			return fmt.Errorf("jobs: record running %s: %w", id, err)
		}
		if err := st.setState(ctx, id, StateActive, attempt, ""); err != nil {
			return err
		}
		w.svc.publish(pubCtx, id, "state", stateEvent{State: StateActive, Attempt: attempt})

		rep := progress.NewReporter(pubCtx, w.svc.log, Group(id), w.cfg.Reporter)
		env := Env{JobID: id, Attempt: attempt, ArtifactDir: w.svc.cfg.ArtifactDir}
		result, err := runSafely(runCtx, t, task.Payload(), env, rep)
		rep.Close()
		if err == nil {
			b, merr := json.Marshal(result)
			if merr == nil {
				if _, werr := task.ResultWriter().Write(b); werr != nil {
					w.logger.Warn("storing result in asynq failed; the job record has it", "job", id, "err", werr)
				}
				w.svc.finish(pubCtx, id, StateCompleted, b, "")
				return nil
			}
			err = fmt.Errorf("encode result: %w", merr)
		}

		cause := context.Cause(runCtx)
		canceled, _ := st.canceled(pubCtx, id)
		switch {
		case errors.Is(cause, errCanceledByUser) || canceled:
			w.svc.finish(pubCtx, id, StateCanceled, nil, "")
			return fmt.Errorf("job %s: %w: %w", id, errCanceledByUser, asynq.SkipRetry)
		case errors.Is(cause, errWorkerStopping):
			_ = st.setState(pubCtx, id, StatePending, 0, "")
			_ = w.rdb.ZRem(pubCtx, st.runningKey(), id).Err()
			w.svc.publish(pubCtx, id, "state", stateEvent{State: StatePending, Attempt: attempt, Message: "worker shutting down; the job goes back to the queue"})
			// Asynq hands the job back when its shutdown timeout ends and
			// then cancels ctx; returning earlier would count as a failure.
			<-ctx.Done()
			return ctx.Err()
		}
		if retried < maxRetry && !errors.Is(err, asynq.SkipRetry) {
			_ = st.setState(pubCtx, id, StateRetry, attempt, err.Error())
			w.svc.publish(pubCtx, id, "state", stateEvent{State: StateRetry, Attempt: attempt, Error: err.Error()})
			return err
		}
		w.svc.finish(pubCtx, id, StateFailed, nil, err.Error())
		return err
	}
}

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

func (w *Worker) track(id string, cancel context.CancelCauseFunc) {
	w.mu.Lock()
	w.running[id] = cancel
	w.mu.Unlock()
}

func (w *Worker) untrack(id string) {
	w.mu.Lock()
	delete(w.running, id)
	w.mu.Unlock()
}

func (w *Worker) cancelRunning(id string) {
	w.mu.Lock()
	cancel := w.running[id]
	w.mu.Unlock()
	if cancel != nil {
		cancel(errCanceledByUser)
	}
}

// pollCancel is the fallback for a cancel signal lost on pub/sub.
func (w *Worker) pollCancel(ctx context.Context, id string, cancel context.CancelCauseFunc) {
	t := time.NewTicker(w.cfg.CancelPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if c, err := w.svc.store.canceled(ctx, id); err == nil && c {
				cancel(errCanceledByUser)
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

// reconcile finishes the jobs whose worker died mid-run. Asynq's recoverer
// moves such a task to retry or to the archive after its lease expires,
// without calling any handler; this publishes the matching events.
func (w *Worker) reconcile(ctx context.Context) error {
	st := w.svc.store
	cutoff := time.Now().Add(-45 * time.Second).UnixMilli()
	ids, err := w.rdb.ZRangeByScore(ctx, st.runningKey(), &redis.ZRangeBy{Min: "-inf", Max: fmt.Sprint(cutoff)}).Result()
	if err != nil {
		return fmt.Errorf("list running jobs: %w", err)
	}
	for _, id := range ids {
		rec, err := st.get(ctx, id)
		if errors.Is(err, errNoRecord) || (err == nil && rec.Final != "") {
			_ = w.rdb.ZRem(ctx, st.runningKey(), id).Err()
			continue
		}
		if err != nil {
			return err
		}
		info, err := w.svc.insp.GetTaskInfo(rec.Queue, id)
		if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
			_ = w.rdb.ZRem(ctx, st.runningKey(), id).Err()
			continue
		}
		if err != nil {
			return fmt.Errorf("inspect %s: %w", id, err)
		}
		switch info.State {
		case asynq.TaskStateActive:
			// still running somewhere (or not yet recovered by Asynq)
		case asynq.TaskStateArchived:
			w.svc.finish(ctx, id, StateFailed, nil, orDefault(info.LastErr, "worker lost"))
		case asynq.TaskStateCompleted:
			_ = w.rdb.ZRem(ctx, st.runningKey(), id).Err()
		default: // retry, pending, scheduled: it will run again
			if rec.State == StateActive {
				msg := orDefault(info.LastErr, "worker lost")
				_ = st.setState(ctx, id, StateRetry, rec.Attempt, msg)
				w.svc.publish(ctx, id, "state", stateEvent{State: StateRetry, Attempt: rec.Attempt, Error: msg})
			}
			_ = w.rdb.ZRem(ctx, st.runningKey(), id).Err()
		}
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
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
