package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	// ErrDuplicate: a unique type's job with the same params is not
	// finished yet (a *JobError names it).
	ErrDuplicate = errors.New("jobs: a job of this unique type with these params is not finished yet")
	// ErrKeyReused: an Idempotency-Key came again with a different
	// request (a *JobError names the job the key made).
	ErrKeyReused = errors.New("jobs: this Idempotency-Key was used for a different request")
	// ErrKeyInFlight: the first request with an Idempotency-Key is still
	// being handled after Config.IdempotencyWait (a *JobError names the
	// job it is making).
	ErrKeyInFlight = errors.New("jobs: a request with this Idempotency-Key is still being handled")
)

// JobError is an error about an existing job: Err is ErrDuplicate,
// ErrKeyReused or ErrKeyInFlight, Job that job's id.
type JobError struct {
	Err error
	Job string
}

func (e *JobError) Error() string { return e.Err.Error() + ": job " + e.Job }
func (e *JobError) Unwrap() error { return e.Err }

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
	// MaxDelay is the furthest ahead a job may be scheduled (the "delay"
	// and "run_at" options). Default 30 days.
	MaxDelay time.Duration
	// IdempotencyTTL is how long an Idempotency-Key keeps naming the job
	// it made: the same key from the same owner within it returns that
	// job. Default 24h.
	IdempotencyTTL time.Duration
	// IdempotencyWait is how long a request waits for the job of a
	// concurrent request with the same key to be recorded, before it is
	// answered ErrKeyInFlight. A crashed first request's reservation
	// expires after twice this. Default 5s.
	IdempotencyWait time.Duration
	// OwnerCache is how many owners of jobs it submitted (with
	// Request.OwnerKept) a Service remembers, so that IsOwner answers
	// their owners without Redis; each is kept for Retention at most.
	// About 150 bytes each. Default DefaultOwnerCache (16384: 16 s of
	// submits at 1,000 jobs/s); negative: none.
	OwnerCache int
}

// DefaultOwnerCache is Config.OwnerCache's default.
const DefaultOwnerCache = 16384

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
	if c.MaxDelay <= 0 {
		c.MaxDelay = 30 * 24 * time.Hour
	}
	if c.IdempotencyTTL <= 0 {
		c.IdempotencyTTL = 24 * time.Hour
	}
	if c.IdempotencyWait <= 0 {
		c.IdempotencyWait = 5 * time.Second
	}
	if c.OwnerCache == 0 {
		c.OwnerCache = DefaultOwnerCache
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
	Queue     string             `json:"queue"`     // the type's queue it went to
	Priority  string             `json:"priority"`  // high, normal or low
	Timeout   string             `json:"timeout"`   // bound of one run, a Go duration
	MaxRetry  int                `json:"max_retry"` // retries of a failed run
	RunAt     *time.Time         `json:"run_at"`    // when a scheduled job runs; null: at once
	Schedule  string             `json:"schedule,omitempty"`
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
	// owners answers IsOwner for the jobs this process submitted for kept
	// owners (nil: Config.OwnerCache < 0).
	owners *ownerCache
}

// NewService returns a Service on rdb, with log on the same Redis (a job's
// changes and its events share scripts and pipelines). It holds no
// resources of its own: closing rdb ends it.
func NewService(rdb redis.UniversalClient, reg *Registry, log *progress.Log, cfg Config) *Service {
	cfg = cfg.withDefaults()
	st := &store{rdb: rdb, prefix: cfg.Prefix, retention: cfg.Retention}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	return &Service{
		reg: reg, log: log, store: st, insp: insp, cfg: cfg, owners: newOwnerCache(cfg.OwnerCache, cfg.Retention),
		lc: &lifecycle{st: st, log: log, reg: reg, client: asynqClient(rdb, !log.Sharded()), insp: insp, cfg: cfg,
			fused: !log.Sharded()},
	}
}

// asynqClient returns the service's Asynq client on rdb: through an
// enqueueGate when fused (off a Redis Cluster), so that a submit's last
// step rides with its enqueue.
func asynqClient(rdb redis.UniversalClient, fused bool) *asynq.Client {
	if fused {
		return asynq.NewClientFromRedisClient(&enqueueGate{UniversalClient: rdb})
	}
	return asynq.NewClientFromRedisClient(rdb)
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
	j, _, err := s.SubmitRequest(ctx, owner, Request{Type: typ, Params: params})
	return j, err
}

// Request is a submission: type, params and options, plus what a caller
// adds besides the body.
type Request struct {
	Type   string
	Params json.RawMessage
	Options
	// IdempotencyKey, when set, makes the request idempotent for its
	// owner: sent again within Config.IdempotencyTTL it returns the job
	// the first made. 1 to 255 printable ASCII characters.
	IdempotencyKey string
	// Schedule names the schedule entry that submits it ("" for the API).
	Schedule string
	// Admit, when set, is a check the request must pass before anything
	// of its job is written (the caller's rate limit): refused, the
	// submit returns a *RefusedError. It runs first, before the request
	// is validated, as a check of the caller's own would; off a Redis
	// Cluster a valid request without an IdempotencyKey, of a type that
	// is not unique, has it run in the step that records the job instead,
	// saving its round trip.
	Admit *Admission
	// OwnerKept says the owner's jobs never change hands (Transfer is
	// never called with this owner as from, on any replica): the service
	// may then remember the job's owner in this process and answer
	// IsOwner for it without Redis. A guest's jobs move to the account it
	// signs in to: a guest's submits must leave it false.
	OwnerKept bool
}

// SubmitRequest is Submit with options. It reports whether the job is an
// earlier one that req's Idempotency-Key made (nothing new was recorded).
// Errors: ErrUnknownType, *ParamError, *OptionError, a *JobError
// (ErrDuplicate, ErrKeyReused, ErrKeyInFlight), or an infrastructure
// error.
func (s *Service) SubmitRequest(ctx context.Context, owner string, req Request) (*Job, bool, error) {
	now := time.Now().UTC()
	t, norm, opts, err := s.validate(req, now)
	// The admission check rides with the record only when nothing is
	// taken before the record (an Idempotency-Key's reservation, a unique
	// lock) and the request is valid; otherwise it runs first, alone, so a
	// refused request is refused before anything else, as when the caller
	// checked it itself.
	admit := req.Admit
	if admit != nil && (!s.lc.fused || err != nil || req.IdempotencyKey != "" || t.Unique > 0) {
		if err := admit.admit(ctx, s.store.rdb); err != nil {
			return nil, false, err
		}
		admit = nil
	}
	if err != nil {
		return nil, false, err
	}
	rec := &record{
		ID: newJobID(), Owner: owner, Type: t.Name, Queue: opts.asynqQueue(), Params: norm, CreatedAt: now,
		Timeout: opts.Timeout, MaxRetry: opts.MaxRetry, RunAt: opts.RunAt, Schedule: req.Schedule,
	}
	// Locks are taken only for a request that is valid, so a bad one never
	// holds a key. Each lock's value starts with the job id it is for.
	var locks []string
	release := func() {
		for _, k := range locks {
			if err := releaseLockScript.Run(context.WithoutCancel(ctx), s.store.rdb, []string{k}, rec.ID).Err(); err != nil {
				s.cfg.Logger.Warn("releasing a submit's lock failed; it expires by itself", "key", k, "err", err)
			}
		}
	}
	if req.IdempotencyKey != "" {
		fp := fingerprint(t.Name, norm, req.Options, opts)
		key := s.store.idemKey(owner, req.IdempotencyKey)
		existing, err := s.reserveKey(ctx, key, rec.ID, fp)
		if err != nil {
			return nil, false, err
		}
		if existing != nil {
			return existing, true, nil
		}
		locks = append(locks, key)
	}
	if t.Unique > 0 {
		key := s.store.uniqueKey(uniqueDigest(owner, t.Name, norm))
		other, err := s.takeUnique(ctx, key, rec.ID, t.Unique)
		if err != nil || other != "" {
			release()
			if err != nil {
				return nil, false, fmt.Errorf("jobs: unique lock of %s: %w", t.Name, err)
			}
			return nil, false, &JobError{Err: ErrDuplicate, Job: other}
		}
		rec.Unique = key
		locks = append(locks, key)
	}
	// The job as it stands after its first event, from what was just
	// written: reading it back would cost two Redis round trips per submit
	// (a worker may have moved it on already; Get shows that, and the
	// position lets a watcher catch up). Every tab and program watching
	// the owner's group sees the new job, wherever it was submitted.
	var j *Job
	var post progress.Post
	announce := func(first *progress.Event) progress.Post {
		rec.CreatedAt = rec.CreatedAt.Truncate(time.Millisecond) // as the record stores it
		rec.UpdatedAt = rec.CreatedAt
		j = s.view(rec)
		j.Epoch, j.LastSeq = first.Epoch, first.Seq
		if first.Time.After(j.UpdatedAt) {
			j.UpdatedAt = first.Time.UTC()
		}
		post = progress.Post{Group: progress.UserGroup(owner), Name: wire.EventSubmitted, Data: j}
		return post
	}
	ride := announce
	if req.IdempotencyKey != "" {
		ride = nil // its reservation is kept in the round trip below
	}
	first, told, err := s.lc.submit(ctx, rec, t, ride, admit)
	if err != nil {
		release()
		return nil, false, err
	}
	if req.OwnerKept {
		s.owners.add(rec.ID, owner, now)
	}
	if j == nil {
		announce(first)
	}
	if told { // with the enqueue: the handoff mark is gone, the owner told
		return j, false, nil
	}
	// In one round trip the handoff mark goes, the owner is told and an
	// Idempotency-Key's reservation becomes the key's answer for
	// IdempotencyTTL.
	var keep *redis.BoolCmd
	also := func(p redis.Pipeliner) {
		if req.IdempotencyKey != "" {
			keep = p.PExpire(ctx, locks[0], s.cfg.IdempotencyTTL)
		}
	}
	s.lc.submitted(ctx, rec, also, post)
	if keep != nil && keep.Err() != nil {
		s.cfg.Logger.Warn("keeping an Idempotency-Key failed; a retry of the request may make a second job", "job", rec.ID, "err", keep.Err())
	}
	return j, false, nil
}

// validate checks req: its type, params, options and Idempotency-Key,
// with now the time of the request. It returns the type, the normalized
// params and the resolved options.
func (s *Service) validate(req Request, now time.Time) (Type, json.RawMessage, runOptions, error) {
	t, ok := s.reg.Lookup(req.Type)
	if !ok {
		return Type{}, nil, runOptions{}, fmt.Errorf("%w %q", ErrUnknownType, req.Type)
	}
	norm, err := t.Decode(req.Params)
	if err != nil {
		return Type{}, nil, runOptions{}, err
	}
	opts, err := t.resolveOptions(req.Options, now, s.cfg.MaxDelay)
	if err != nil {
		return Type{}, nil, runOptions{}, err
	}
	opts.RunAt = opts.RunAt.Truncate(time.Millisecond) // as the record stores it
	if err := checkIdempotencyKey(req.IdempotencyKey); err != nil {
		return Type{}, nil, runOptions{}, err
	}
	return t, norm, opts, nil
}

// checkIdempotencyKey checks an Idempotency-Key header's value.
func checkIdempotencyKey(k string) error {
	if k == "" {
		return nil
	}
	if len(k) > 255 {
		return badOption("Idempotency-Key", "must be at most 255 characters")
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return badOption("Idempotency-Key", "must be printable ASCII without spaces")
		}
	}
	return nil
}

// reserveKey takes an Idempotency-Key for job id with fingerprint fp, or
// returns the job the key already names. The reservation is one SET NX
// (so of concurrent requests exactly one makes a job) and lives for
// 2×IdempotencyWait until the job is recorded, so a request that crashes
// in between does not hold the key for a day. A request that finds the
// key taken with the same fingerprint waits up to IdempotencyWait for
// that job's record.
func (s *Service) reserveKey(ctx context.Context, key, id, fp string) (*Job, error) {
	deadline := time.Now().Add(s.cfg.IdempotencyWait)
	poll := max(s.cfg.IdempotencyWait/100, time.Millisecond)
	for {
		ok, err := s.store.rdb.SetNX(ctx, key, id+" "+fp, 2*s.cfg.IdempotencyWait).Result()
		if err != nil {
			return nil, fmt.Errorf("jobs: reserve idempotency key: %w", err)
		}
		if ok {
			return nil, nil
		}
		v, err := s.store.rdb.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			continue // expired between the two calls: try to take it
		}
		if err != nil {
			return nil, fmt.Errorf("jobs: read idempotency key: %w", err)
		}
		other, otherFP, _ := strings.Cut(v, " ")
		if otherFP != fp {
			return nil, &JobError{Err: ErrKeyReused, Job: other}
		}
		j, err := s.Get(ctx, other)
		if err == nil {
			return j, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, &JobError{Err: ErrKeyInFlight, Job: other}
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// takeUnique takes a unique type's lock for job id, or returns the job
// that holds it. A lock that ends between the two reads (its job just
// ended) is taken on the next try.
func (s *Service) takeUnique(ctx context.Context, key, id string, ttl time.Duration) (string, error) {
	for range 3 {
		ok, err := s.store.rdb.SetNX(ctx, key, id, ttl).Result()
		if err != nil || ok {
			return "", err
		}
		other, err := s.store.rdb.Get(ctx, key).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		return other, err
	}
	return "", errors.New("the lock changed hands three times in a row")
}

// uniqueDigest identifies a unique type's job: owner, type and params.
func uniqueDigest(owner, typ string, params json.RawMessage) string {
	b, _ := json.Marshal([]any{owner, typ, params})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
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
	j := s.view(rec)
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

// view is the snapshot of a job that its record gives: everything but
// what its log adds (epoch, last seq, progress, the time of its newest
// event, and so when a final job finished).
func (s *Service) view(rec *record) *Job {
	id := rec.ID
	j := &Job{
		ID: id, Owner: rec.Owner, Type: rec.Type, State: rec.State, Params: rec.Params, Attempt: rec.Attempt,
		CreatedAt: rec.CreatedAt, UpdatedAt: rec.UpdatedAt, MaxRetry: rec.MaxRetry, Schedule: rec.Schedule,
	}
	j.Queue, j.Priority = splitAsynqQueue(rec.Queue)
	timeout := rec.Timeout
	if t, ok := s.reg.Lookup(rec.Type); ok {
		j.HasArtifact = t.HasArtifact
		if timeout <= 0 {
			timeout = t.Timeout
		}
		if j.MaxRetry < 0 {
			j.MaxRetry = t.MaxRetry
		}
	}
	j.Timeout = timeout.String()
	j.MaxRetry = max(j.MaxRetry, 0)
	if !rec.RunAt.IsZero() {
		at := rec.RunAt
		j.RunAt = &at
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
	return j
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
// Streams that follow one job end after it. The rule is the protocol's
// (wire.FinalJobEvent), so clients apply the same one.
func FinalEvent(name string, data json.RawMessage) bool { return wire.FinalJobEvent(name, data) }
