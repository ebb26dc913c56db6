package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"taskstream/progress"
	"taskstream/wire"
)

// Errors returned by Service; the web layer maps them to HTTP statuses.
var (
	ErrNotFound    = errors.New("jobs: job not found")
	ErrConflict    = errors.New("jobs: job already finished")
	ErrUnknownType = errors.New("jobs: unknown job type")
)

// Group returns the progress group that carries job id's events.
func Group(id string) string { return wire.JobGroup(id).String() }

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
	// EndRetryDelay is how long a run waits before it retries recording
	// or publishing its job's state change after a Redis call failed (a
	// timeout leaves the outcome unknown; the retry is recognized as the
	// same change). Each further wait doubles, up to EndRetryMaxDelay.
	// Default 200ms.
	EndRetryDelay time.Duration
	// EndRetryMaxDelay caps the wait between such retries. Default 5s.
	EndRetryMaxDelay time.Duration
	// EndRetryFor bounds how long a run keeps retrying; after it, the
	// reconciler or the lost-job sweep settles the job. Default 1m.
	EndRetryFor time.Duration
	// DebtAge is how old a recorded end whose events are not known to be
	// published must be before the reconciler publishes them (its
	// announcer failed or died); younger ones are left to their announcer.
	// Default 5s.
	DebtAge time.Duration
	// JobLink is the link a finished job's notification carries, a format
	// with one %s for the job id. Default "/#job-%s" (the page's anchor).
	JobLink string
	// Logger receives what the service and worker cannot return to a
	// caller (a lost terminal event, a reconcile error). Default
	// slog.Default().
	Logger *slog.Logger
	// Observer is told of submissions, starts and ends (metrics). Default
	// nil: nothing is told.
	Observer Observer
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
	if c.EndRetryDelay <= 0 {
		c.EndRetryDelay = 200 * time.Millisecond
	}
	if c.EndRetryMaxDelay <= 0 {
		c.EndRetryMaxDelay = 5 * time.Second
	}
	if c.EndRetryFor <= 0 {
		c.EndRetryFor = time.Minute
	}
	if c.DebtAge <= 0 {
		c.DebtAge = 5 * time.Second
	}
	if c.JobLink == "" {
		c.JobLink = "/#job-%s"
	}
	return c
}

// Job is a job's snapshot as the API shows it: state, attempt, result and
// error from the job record (which every transition updates together with
// the events it publishes, and the reconciler keeps in line with Asynq),
// progress from the last progress event.
type Job struct {
	ID        string             `json:"id"`
	Owner     string             `json:"owner"`
	Type      string             `json:"type"`
	State     string             `json:"state"`
	Params    json.RawMessage    `json:"params"`
	Progress  *progress.Progress `json:"progress"`
	Result    json.RawMessage    `json:"result"`
	Error     *string            `json:"error"`
	Attempt   int                `json:"attempt"`
	CreatedAt time.Time          `json:"created_at"`
	UpdatedAt time.Time          `json:"updated_at"`
	// StartedAt is when the job's first attempt started, null before.
	StartedAt *time.Time `json:"started_at"`
	// FinishedAt is when the job reached its final state, null before.
	FinishedAt  *time.Time `json:"finished_at"`
	LastSeq     int64      `json:"last_seq"`
	Epoch       string     `json:"epoch"`
	HasArtifact bool       `json:"-"`
}

// Service submits, inspects and cancels jobs. It is what the API uses; it
// runs no handlers (see Worker). Safe for concurrent use.
type Service struct {
	reg   *Registry
	log   *progress.Log
	store *store
	insp  *asynq.Inspector
	lc    *lifecycle
	cfg   Config
}

// NewService returns a Service on rdb. It holds no resources of its own:
// closing rdb ends it.
func NewService(rdb redis.UniversalClient, reg *Registry, log *progress.Log, cfg Config) *Service {
	cfg = cfg.withDefaults()
	st := &store{rdb: rdb, prefix: cfg.Prefix, retention: cfg.Retention}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	return &Service{
		reg: reg, log: log, store: st, insp: insp, cfg: cfg,
		lc: &lifecycle{st: st, log: log, reg: reg, client: asynq.NewClientFromRedisClient(rdb), insp: insp, cfg: cfg},
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
	if err := s.lc.submit(ctx, rec, t); err != nil {
		return nil, err
	}
	j, err := s.Get(ctx, rec.ID)
	if err != nil {
		return nil, err
	}
	// Every tab and program watching the owner's group sees the new job,
	// wherever it was submitted. The job exists either way: a lost event
	// only means those pages show it on their next load.
	if _, err := s.log.Publish(ctx, progress.UserGroup(owner), wire.EventSubmitted, j); err != nil {
		s.cfg.Logger.Warn("job submitted, but its event on the owner's group was lost", "job", j.ID, "owner", owner, "err", err)
	}
	return j, nil
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
	if rec.Final != "" {
		j.State = rec.Final
	}
	if j.Attempt == 0 {
		j.Attempt = 1 // not run yet: waiting for its first attempt
	}
	// A completed job has no error: one kept from a failed earlier attempt
	// stays in the job's events, not in its state.
	if rec.Error != "" && j.State != StateCompleted {
		j.Error = &rec.Error
	}
	if !rec.StartedAt.IsZero() {
		j.StartedAt = &rec.StartedAt
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
	if ev := tail.Newest(wire.EventProgress); ev != nil {
		var p progress.Progress
		if err := json.Unmarshal(ev.Data, &p); err != nil {
			return nil, fmt.Errorf("jobs: decode progress of %s: %w", id, err)
		}
		j.Progress = &p
	}
	if Terminal(j.State) {
		// The final transition is the record's last update, and the job's
		// last event is its end.
		end := j.UpdatedAt
		j.FinishedAt = &end
	}
	return j, nil
}

// List returns up to limit of owner's jobs, newest first.
func (s *Service) List(ctx context.Context, owner string, limit int) ([]*Job, error) {
	page, err := s.ListPage(ctx, owner, ListQuery{Limit: limit})
	if err != nil {
		return nil, err
	}
	return page.Jobs, nil
}

// ErrBadCursor is returned by ListPage for a Before it did not make.
var ErrBadCursor = errors.New("jobs: malformed list cursor")

// ListQuery selects a page of an owner's jobs, newest first.
type ListQuery struct {
	// State and Type keep only the jobs in that state or of that type;
	// "" keeps all.
	State, Type string
	// Before is a ListPage.Next: the page starts after the job it names.
	// "" starts at the newest job.
	Before string
	// Limit is the most jobs a page holds. Default 100.
	Limit int
	// Scan bounds how many jobs one call reads to fill a filtered page,
	// so a rare state cannot make one request read every job; a page cut
	// short by it has fewer than Limit jobs and a Next. Default 10 × Limit,
	// at least 1000.
	Scan int
}

// ListPage is one page of jobs and the cursor of the next.
type ListPage struct {
	Jobs []*Job
	// Next is the Before of the next page; "" when there are no more jobs.
	Next string
}

// ListPage returns a page of owner's jobs, newest first, filtered by q.
// Errors: ErrBadCursor, or an infrastructure error.
func (s *Service) ListPage(ctx context.Context, owner string, q ListQuery) (ListPage, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	if q.Scan <= 0 {
		q.Scan = max(10*q.Limit, 1000)
	}
	score, after := int64(-1), ""
	if q.Before != "" {
		e, err := parseCursor(q.Before)
		if err != nil {
			return ListPage{}, err
		}
		score, after = e.score, e.id
	}
	if err := s.store.trim(ctx, owner); err != nil {
		return ListPage{}, err
	}
	filtered := q.State != "" || q.Type != ""
	var page ListPage
	scanned := 0
	for len(page.Jobs) < q.Limit && scanned < q.Scan {
		// Unfiltered, one more than asked tells whether a next page exists.
		want := int64(q.Limit - len(page.Jobs) + 1)
		if filtered {
			want = int64(min(max(q.Limit, 50), q.Scan-scanned))
		}
		entries, err := s.store.page(ctx, owner, score, after, want)
		if err != nil {
			return ListPage{}, err
		}
		if len(entries) == 0 {
			return page, nil
		}
		for i, e := range entries {
			if len(page.Jobs) == q.Limit {
				// Another entry exists beyond the page.
				page.Next = cursor(entries[i-1])
				return page, nil
			}
			scanned++
			score, after = e.score, e.id
			j, err := s.Get(ctx, e.id)
			if errors.Is(err, ErrNotFound) {
				continue // expired between the index read and now
			}
			if err != nil {
				return ListPage{}, err
			}
			if (q.State == "" || j.State == q.State) && (q.Type == "" || j.Type == q.Type) {
				page.Jobs = append(page.Jobs, j)
			}
		}
		if int64(len(entries)) < want {
			return page, nil // the index is exhausted
		}
	}
	// Full, or the scan bound was reached: more jobs may follow.
	page.Next = cursor(indexEntry{id: after, score: score})
	return page, nil
}

// cursor is the opaque form of a list position: "SCORE-ID", the index
// entry's score (creation time, µs) and the job id.
func cursor(e indexEntry) string { return strconv.FormatInt(e.score, 10) + "-" + e.id }

// parseCursor reads a cursor made by cursor; anything else (it comes from
// clients) is ErrBadCursor.
func parseCursor(s string) (indexEntry, error) {
	n, id, ok := strings.Cut(s, "-")
	v, err := strconv.ParseInt(n, 10, 64)
	if !ok || err != nil || v < 0 || id == "" || strconv.FormatInt(v, 10) != n {
		return indexEntry{}, fmt.Errorf("%w: %q", ErrBadCursor, s)
	}
	return indexEntry{id: id, score: v}, nil
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
	ok, err := s.lc.cancel(ctx, id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrConflict, id)
	}
	return s.Get(ctx, id)
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
	case wire.EventResult, wire.EventFailed:
		return true
	case wire.EventState:
		var s stateEvent
		return json.Unmarshal(data, &s) == nil && s.State == StateCanceled
	}
	return false
}
