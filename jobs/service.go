package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"taskstream/progress"
)

// Errors returned by Service; the web layer maps them to HTTP statuses.
var (
	ErrNotFound    = errors.New("jobs: job not found")
	ErrConflict    = errors.New("jobs: job already finished")
	ErrUnknownType = errors.New("jobs: unknown job type")
)

// Group returns the progress group that carries job id's events.
func Group(id string) string { return "job:" + id }

// Config configures a Service and a Worker. The zero value is usable.
type Config struct {
	// Prefix is prepended to the keys jobs stores besides Asynq's own.
	// Default "ts" (the same as progress.LogConfig.Prefix).
	Prefix string
	// Retention is how long a job's record, and a completed task in Asynq,
	// are kept after the job was created or finished. Default 7 days.
	Retention time.Duration
	// ArtifactDir is where job artifacts (the report CSV) are written by
	// workers and read by the API. Both must see the same directory.
	// Default: "taskstream-artifacts" under the OS temp directory.
	ArtifactDir string
	// JobLink is the link a finished job's notification carries, a format
	// with one %s for the job id. Default "/#job-%s" (the page's anchor).
	JobLink string
	// Logger receives what the service and worker cannot return to a
	// caller (a lost terminal event, a reconcile error). Default
	// slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = "ts"
	}
	if c.Retention <= 0 {
		c.Retention = 7 * 24 * time.Hour
	}
	if c.ArtifactDir == "" {
		c.ArtifactDir = defaultArtifactDir()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.JobLink == "" {
		c.JobLink = "/#job-%s"
	}
	return c
}

// Job is a job's snapshot as the API shows it: state and attempt from
// Asynq and the job record, progress from the last progress event.
type Job struct {
	ID          string             `json:"id"`
	Owner       string             `json:"owner"`
	Type        string             `json:"type"`
	State       string             `json:"state"`
	Params      json.RawMessage    `json:"params"`
	Progress    *progress.Progress `json:"progress"`
	Result      json.RawMessage    `json:"result"`
	Error       *string            `json:"error"`
	Attempt     int                `json:"attempt"`
	CreatedAt   time.Time          `json:"created_at"`
	UpdatedAt   time.Time          `json:"updated_at"`
	LastSeq     int64              `json:"last_seq"`
	Epoch       string             `json:"epoch"`
	HasArtifact bool               `json:"-"`
}

// Service submits, inspects and cancels jobs. It is what the API uses; it
// runs no handlers (see Worker). Safe for concurrent use.
type Service struct {
	reg    *Registry
	log    *progress.Log
	store  *store
	client *asynq.Client
	insp   *asynq.Inspector
	cfg    Config
}

// NewService returns a Service on rdb. It holds no resources of its own:
// closing rdb ends it.
func NewService(rdb redis.UniversalClient, reg *Registry, log *progress.Log, cfg Config) *Service {
	cfg = cfg.withDefaults()
	return &Service{
		reg:    reg,
		log:    log,
		store:  &store{rdb: rdb, prefix: cfg.Prefix, retention: cfg.Retention},
		client: asynq.NewClientFromRedisClient(rdb),
		insp:   asynq.NewInspectorFromRedisClient(rdb),
		cfg:    cfg,
	}
}

// Registry returns the service's job types.
func (s *Service) Registry() *Registry { return s.reg }

// Inspector exposes Asynq's inspector for read-only dashboards.
func (s *Service) Inspector() *asynq.Inspector { return s.insp }

// ArtifactPath returns the file holding job id's artifact, and whether the
// job's type produces one.
func (s *Service) ArtifactPath(j *Job) (string, bool) {
	return artifactPath(s.cfg.ArtifactDir, j.ID), j.HasArtifact
}

// Submit validates params for typ, records the job as owner's, publishes
// its first "state" event (pending) and enqueues it. Errors:
// ErrUnknownType, *ParamError, or an infrastructure error.
func (s *Service) Submit(ctx context.Context, owner, typ string, params json.RawMessage) (*Job, error) {
	t, ok := s.reg.Lookup(typ)
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownType, typ)
	}
	norm, err := t.Decode(params)
	if err != nil {
		return nil, err
	}
	rec := &record{ID: newJobID(), Owner: owner, Type: t.Name, Queue: t.Queue, Params: norm, State: StatePending, CreatedAt: time.Now().UTC()}
	if err := s.store.create(ctx, rec); err != nil {
		return nil, err
	}
	// The pending event comes first so the group's epoch exists before any
	// watcher subscribes, and it precedes the worker's "active".
	if _, err := s.log.Publish(ctx, Group(rec.ID), "state", stateEvent{State: StatePending}); err != nil {
		// Never enqueued: end the record rather than leave it pending.
		s.finish(context.WithoutCancel(ctx), rec.ID, StateFailed, nil, "could not record the job's first event")
		return nil, err
	}
	task := asynq.NewTask(t.Name, norm,
		asynq.TaskID(rec.ID), asynq.Queue(t.Queue), asynq.MaxRetry(t.MaxRetry),
		asynq.Timeout(t.Timeout), asynq.Retention(s.cfg.Retention))
	if _, err := s.client.EnqueueContext(ctx, task); err != nil {
		msg := "could not enqueue: " + err.Error()
		s.finish(context.WithoutCancel(ctx), rec.ID, StateFailed, nil, msg)
		return nil, fmt.Errorf("jobs: enqueue %s: %w", rec.ID, err)
	}
	return s.Get(ctx, rec.ID)
}

// stateEvent is the payload of a "state" event.
type stateEvent struct {
	State   string `json:"state"`
	Attempt int    `json:"attempt,omitempty"`
	Error   string `json:"error,omitempty"`
	Message string `json:"message,omitempty"`
}

// Get returns job id, or ErrNotFound.
func (s *Service) Get(ctx context.Context, id string) (*Job, error) {
	rec, err := s.store.get(ctx, id)
	if errors.Is(err, errNoRecord) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	j := &Job{
		ID: id, Owner: rec.Owner, Type: rec.Type, State: rec.State, Params: rec.Params, Attempt: rec.Attempt,
		CreatedAt: rec.CreatedAt, UpdatedAt: rec.UpdatedAt,
	}
	if t, ok := s.reg.Lookup(rec.Type); ok {
		j.HasArtifact = t.HasArtifact
	}
	if rec.Final == "" {
		// Not finished by our own record: Asynq knows best where it is.
		info, err := s.insp.GetTaskInfo(rec.Queue, id)
		switch {
		case err == nil:
			j.State = taskState(info, rec)
			if info.State == asynq.TaskStateActive || info.Retried+1 > j.Attempt {
				j.Attempt = max(j.Attempt, info.Retried+1)
			}
			if info.LastErr != "" {
				j.Error = &info.LastErr
			}
		case errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
			// Deleted by a cancel, or past Asynq's retention: the record stands.
		default:
			return nil, fmt.Errorf("jobs: inspect %s: %w", id, err)
		}
	} else {
		j.State = rec.Final
	}
	if rec.Error != "" {
		j.Error = &rec.Error
	}
	if len(rec.Result) > 0 {
		j.Result = rec.Result
	}
	// One read gives the epoch, the last seq and the recent events; the
	// snapshot's progress is the newest progress among them.
	tail, err := s.log.Tail(ctx, Group(id), 64)
	if err != nil {
		return nil, err
	}
	j.Epoch, j.LastSeq = tail.Epoch, tail.LastSeq
	if last := tail.Newest(); last != nil && last.Time.After(j.UpdatedAt) {
		j.UpdatedAt = last.Time.UTC()
	}
	if ev := tail.Newest("progress"); ev != nil {
		var p progress.Progress
		if err := json.Unmarshal(ev.Data, &p); err != nil {
			return nil, fmt.Errorf("jobs: decode progress of %s: %w", id, err)
		}
		j.Progress = &p
	}
	return j, nil
}

// taskState maps Asynq's task state onto the job states of the protocol.
func taskState(info *asynq.TaskInfo, rec *record) string {
	switch info.State {
	case asynq.TaskStateActive:
		return StateActive
	case asynq.TaskStateRetry:
		return StateRetry
	case asynq.TaskStateCompleted:
		return StateCompleted
	case asynq.TaskStateArchived:
		if rec.Canceled {
			return StateCanceled
		}
		return StateFailed
	default: // pending, scheduled, aggregating
		if rec.State == StateRetry {
			return StateRetry
		}
		return StatePending
	}
}

// List returns up to limit of owner's jobs, newest first.
func (s *Service) List(ctx context.Context, owner string, limit int) ([]*Job, error) {
	if limit <= 0 {
		limit = 100
	}
	ids, err := s.store.list(ctx, owner, int64(limit))
	if err != nil {
		return nil, err
	}
	out := make([]*Job, 0, len(ids))
	for _, id := range ids {
		j, err := s.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue // expired between the index read and now
		}
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, nil
}

// Cancel stops job id: a queued job is deleted from the queue and ends
// "canceled" at once; a running one is signaled and its worker ends it
// "canceled" without retrying. Cancelling a finished job is ErrConflict.
func (s *Service) Cancel(ctx context.Context, id string) (*Job, error) {
	j, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if Terminal(j.State) {
		return nil, fmt.Errorf("%w: %s is %s", ErrConflict, id, j.State)
	}
	ok, err := s.store.markCanceled(ctx, id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrConflict, id)
	}
	rec, err := s.store.get(ctx, id)
	if err != nil {
		return nil, err
	}
	switch err := s.insp.DeleteTask(rec.Queue, id); {
	case err == nil, errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
		// Not queued any more (or never): nobody else will end it, so the
		// end must be recorded even if the caller has gone away.
		s.finish(context.WithoutCancel(ctx), id, StateCanceled, nil, "")
	default:
		// Active: the worker saw the signal (or sees the flag when it
		// polls) and ends the job itself.
	}
	return s.Get(ctx, id)
}

// finish records a terminal state once and publishes its events: "state",
// then "result" or "failed" as the job's last event. Publishing errors are
// returned to no one: the state is recorded, and a watcher that missed the
// events sees the state in the job snapshot.
func (s *Service) finish(ctx context.Context, id, state string, result json.RawMessage, errMsg string) bool {
	first, err := s.store.finish(ctx, id, state, result, errMsg)
	if err != nil {
		s.cfg.Logger.Error("recording terminal state failed", "job", id, "state", state, "err", err)
	}
	if !first {
		return false
	}
	s.publish(ctx, id, "state", stateEvent{State: state, Error: errMsg})
	defer s.notifyOwner(ctx, id, state, errMsg)
	switch state {
	case StateCompleted:
		s.publish(ctx, id, "result", map[string]json.RawMessage{"result": orNull(result)})
	case StateFailed:
		s.publish(ctx, id, "failed", map[string]string{"error": errMsg})
	}
	return true
}

func orNull(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return b
}

// publish sends a lifecycle event to the job's group. A lost event is
// logged, not returned: the job record already holds the state, so
// watchers that missed it still see it in the job snapshot.
func (s *Service) publish(ctx context.Context, id, name string, data any) {
	if _, err := s.log.Publish(ctx, Group(id), name, data); err != nil {
		s.cfg.Logger.Error("lifecycle event lost", "job", id, "event", name, "err", err)
	}
}

// Owner returns the id of job id's owner, or ErrNotFound.
func (s *Service) Owner(ctx context.Context, id string) (string, error) {
	owner, err := s.store.owner(ctx, id)
	if errors.Is(err, errNoRecord) {
		return "", fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return owner, err
}

// Transfer makes every job of owner from belong to owner to (a guest who
// signs in keeps the jobs submitted as a guest). It returns how many moved.
func (s *Service) Transfer(ctx context.Context, from, to string) (int, error) {
	if from == to {
		return 0, nil
	}
	return s.store.transfer(ctx, from, to)
}

// FinalEvent reports whether an event of a job's group is the job's last
// one: "result", "failed", or a "state" event whose state is canceled.
// Streams that follow one job end after it.
func FinalEvent(name string, data json.RawMessage) bool {
	switch name {
	case "result", "failed":
		return true
	case "state":
		var s stateEvent
		return json.Unmarshal(data, &s) == nil && s.State == StateCanceled
	}
	return false
}

// notifyOwner tells the job's owner, on every tab, that it has finished.
func (s *Service) notifyOwner(ctx context.Context, id, state, errMsg string) {
	rec, err := s.store.get(ctx, id)
	if err != nil || rec.Owner == "" {
		return
	}
	owner, typ := rec.Owner, rec.Type
	n := progress.Notification{
		Title: fmt.Sprintf("Job %s %s", typ, state),
		Body:  fmt.Sprintf("%s job %s has %s.", typ, id, state),
		Link:  fmt.Sprintf(s.cfg.JobLink, id),
	}
	if errMsg != "" {
		n.Body += " " + errMsg
	}
	if _, err := progress.Notify(ctx, s.log, progress.UserGroup(owner), n); err != nil {
		s.cfg.Logger.Warn("job notification lost", "job", id, "owner", owner, "err", err)
	}
}
