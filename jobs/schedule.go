package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/robfig/cron/v3"

	"taskstream/progress"
)

// ScheduleEntry is one periodic job of a schedule file: a cron spec and
// what to submit at each of its ticks.
type ScheduleEntry struct {
	// Name identifies the entry (1 to 64 of a-z 0-9 _ -), in the jobs it
	// makes ("schedule") and in GET /api/schedules.
	Name string `json:"name"`
	// Spec is a cron spec: five fields (minute hour day month weekday),
	// or @hourly, @daily, @weekly, @monthly, @every 90s; CRON_TZ=Zone in
	// front picks a time zone (default UTC).
	Spec   string          `json:"spec"`
	Type   string          `json:"type"`
	Params json.RawMessage `json:"params,omitempty"`
	// Options are the submit options queue, priority, timeout and
	// max_retry (delay and run_at make no sense for a periodic job).
	Options

	sched cron.Schedule
}

// scheduleFile is the file's shape: {"schedules": [entry, ...]}.
type scheduleFile struct {
	Schedules []ScheduleEntry `json:"schedules"`
}

// cronParser reads five-field specs and descriptors (@daily, @every 1h).
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// LoadSchedule reads and checks the schedule file at path. An error names
// the entry and what is wrong with it, for a one-line start-up failure.
func LoadSchedule(path string, reg *Registry) ([]ScheduleEntry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("schedule file: %w", err)
	}
	return ParseSchedule(b, reg)
}

// ParseSchedule checks a schedule file's contents (JSON, see scheduleFile)
// against reg: every entry's spec parses, its type exists, its params and
// options pass the type's checks, and names are unique.
func ParseSchedule(b []byte, reg *Registry) ([]ScheduleEntry, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f scheduleFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("schedule file: not the expected JSON ({\"schedules\": [{\"name\", \"spec\", \"type\", \"params\", ...}]}): %w", err)
	}
	if dec.More() {
		return nil, errors.New("schedule file: data after the object")
	}
	seen := map[string]bool{}
	for i := range f.Schedules {
		e := &f.Schedules[i]
		where := fmt.Sprintf("schedule file: entry %d (%q)", i+1, e.Name)
		if !ValidQueueName(e.Name) { // the same alphabet as queue names
			return nil, fmt.Errorf("%s: name: want 1 to 64 of a-z 0-9 _ -", where)
		}
		if seen[e.Name] {
			return nil, fmt.Errorf("%s: name used twice", where)
		}
		seen[e.Name] = true
		sched, err := parseSpec(e.Spec)
		if err != nil {
			return nil, fmt.Errorf("%s: spec %q: %w", where, e.Spec, err)
		}
		e.sched = sched
		if e.Next(time.Now()).IsZero() {
			return nil, fmt.Errorf("%s: spec %q never fires", where, e.Spec)
		}
		t, ok := reg.Lookup(e.Type)
		if !ok {
			return nil, fmt.Errorf("%s: unknown type %q", where, e.Type)
		}
		norm, err := t.Decode(e.Params)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		e.Params = norm
		if e.Delay != "" || e.RunAt != "" {
			return nil, fmt.Errorf("%s: delay and run_at are not options of a periodic job", where)
		}
		if _, err := t.resolveOptions(e.Options, time.Now(), time.Hour); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
	}
	return f.Schedules, nil
}

// parseSpec parses a cron spec. The parser panics on some malformed specs
// (a "CRON_TZ=" with nothing after it): that is an error like any other.
func parseSpec(spec string) (sched cron.Schedule, err error) {
	defer func() {
		if p := recover(); p != nil {
			sched, err = nil, fmt.Errorf("malformed (%v)", p)
		}
	}()
	return cronParser.Parse(withUTC(spec))
}

// withUTC makes UTC the time zone of a spec that names none (cron's own
// default is the process's local zone, which differs between machines).
func withUTC(spec string) string {
	if strings.HasPrefix(spec, "CRON_TZ=") || strings.HasPrefix(spec, "TZ=") {
		return spec
	}
	return "CRON_TZ=UTC " + spec
}

// Next returns the entry's first tick after t. The ticks of "@every D"
// are the multiples of D since the zero time, not D after whenever a
// process started, so every replica computes the same ticks (and the same
// Idempotency-Keys).
func (e ScheduleEntry) Next(t time.Time) time.Time {
	if every, ok := e.sched.(cron.ConstantDelaySchedule); ok {
		return t.UTC().Truncate(every.Delay).Add(every.Delay)
	}
	return e.sched.Next(t)
}

// SchedulerConfig configures a Scheduler. The zero value of every field but
// Owner is usable.
type SchedulerConfig struct {
	// Owner is the user id the periodic jobs belong to (whoever may watch
	// and cancel them). Required.
	Owner string
	// Lease is the leader lease: one scheduler across all replicas
	// submits. Its Key defaults to PREFIX:scheduler (Config.Prefix).
	Lease progress.LeaderConfig
	// CatchUp is how late a tick may be and still be submitted: a tick
	// that fell while no replica led (the leader died, its successor took
	// over within the lease's TTL) is submitted by the next leader. Each
	// tick is submitted with an Idempotency-Key of its own, so a tick is
	// never submitted twice, whoever submits it. Default 1m; at most
	// Config.IdempotencyTTL.
	CatchUp time.Duration
	// Logger receives each submission and failure. Default the service's.
	Logger *slog.Logger
}

// Scheduler submits the jobs of schedule entries at their ticks, on one
// replica at a time (progress.RunAsLeader). Each tick makes a normal job:
// recorded, with its events, owned by SchedulerConfig.Owner.
type Scheduler struct {
	svc     *Service
	rdb     redis.UniversalClient
	entries []ScheduleEntry
	cfg     SchedulerConfig
}

// NewScheduler returns a scheduler of entries (from ParseSchedule) on svc.
func NewScheduler(svc *Service, rdb redis.UniversalClient, entries []ScheduleEntry, cfg SchedulerConfig) (*Scheduler, error) {
	if cfg.Owner == "" {
		return nil, errors.New("jobs: NewScheduler: empty owner")
	}
	if cfg.Lease.Key == "" {
		cfg.Lease.Key = svc.cfg.Prefix + ":scheduler"
	}
	if cfg.CatchUp <= 0 {
		cfg.CatchUp = time.Minute
	}
	cfg.CatchUp = min(cfg.CatchUp, svc.cfg.IdempotencyTTL)
	if cfg.Logger == nil {
		cfg.Logger = svc.cfg.Logger
	}
	if cfg.Lease.Logger == nil {
		cfg.Lease.Logger = cfg.Logger
	}
	return &Scheduler{svc: svc, rdb: rdb, entries: entries, cfg: cfg}, nil
}

// Run competes for the lead and, while this process has it, submits each
// entry's ticks. It returns when ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	if len(s.entries) == 0 {
		<-ctx.Done()
		return nil
	}
	return progress.RunAsLeader(ctx, s.rdb, s.cfg.Lease, s.lead)
}

// lead submits ticks until ctx ends (the lead is lost or the process
// stops). A new leader first submits each entry's latest tick of the last
// CatchUp, if there is one (a leader change or a restart may have missed
// it; if not, its Idempotency-Key makes it a no-op). A leader that falls
// behind (a submit slower than the spec's interval) skips to the next
// tick rather than queueing up the missed ones.
func (s *Scheduler) lead(ctx context.Context) {
	now := time.Now()
	next := make([]time.Time, len(s.entries))
	for i, e := range s.entries {
		var missed time.Time
		t := e.Next(now.Add(-s.cfg.CatchUp))
		for !t.IsZero() && !t.After(now) {
			missed, t = t, e.Next(t)
		}
		if !missed.IsZero() {
			s.submit(ctx, e, missed)
		}
		next[i] = t
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		// A spec that stopped firing (its next tick is more than the
		// parser's five-year horizon away) has the zero time: ignored.
		soonest := time.Now().Add(24 * time.Hour)
		for _, t := range next {
			if !t.IsZero() && t.Before(soonest) {
				soonest = t
			}
		}
		timer.Reset(time.Until(soonest))
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		now := time.Now()
		for i, e := range s.entries {
			if !next[i].IsZero() && !next[i].After(now) && ctx.Err() == nil {
				s.submit(ctx, e, next[i])
				next[i] = e.Next(now) // now is not before next[i]
			}
		}
	}
}

// tickKey is the Idempotency-Key of an entry's tick.
func tickKey(name string, tick time.Time) string {
	return "schedule:" + name + ":" + tick.UTC().Format(time.RFC3339)
}

func (s *Scheduler) lastKey(name string) string { return s.svc.cfg.Prefix + ":schedule:last:" + name }

// tickSubmitTimeout bounds one tick's submit once it has begun.
const tickSubmitTimeout = 10 * time.Second

// submit makes the job of e's tick, once across replicas and retries.
//
// A submit that has begun is finished even when the lead is lost or the
// process stops meanwhile (ctx ends): cut halfway, it would leave the
// tick's job recorded but failed ("could not enqueue") and its
// Idempotency-Key released, so the tick would have a failed job instead
// of a run. Finishing it is safe: another leader's submit of the same
// tick replays this one.
func (s *Scheduler) submit(ctx context.Context, e ScheduleEntry, tick time.Time) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tickSubmitTimeout)
	defer cancel()
	j, replayed, err := s.svc.SubmitRequest(sctx, s.cfg.Owner, Request{
		Type: e.Type, Params: e.Params, Options: e.Options, IdempotencyKey: tickKey(e.Name, tick), Schedule: e.Name,
	})
	var je *JobError
	switch {
	case errors.As(err, &je) && errors.Is(err, ErrDuplicate):
		s.cfg.Logger.Info("periodic job skipped: the previous one of this unique type is still running", "schedule", e.Name, "tick", tick, "job", je.Job)
		return
	case err != nil:
		if ctx.Err() == nil {
			s.cfg.Logger.Error("periodic job not submitted", "schedule", e.Name, "tick", tick, "err", err)
		}
		return
	case replayed:
		return // another leader submitted this tick
	}
	last, _ := json.Marshal(lastRun{Job: j.ID, At: tick.UTC()})
	if err := s.rdb.Set(sctx, s.lastKey(e.Name), last, s.svc.cfg.Retention).Err(); err != nil {
		s.cfg.Logger.Warn("recording a schedule's last run failed", "schedule", e.Name, "err", err)
	}
	s.cfg.Logger.Info("periodic job submitted", "schedule", e.Name, "tick", tick, "job", j.ID)
}

// lastRun is a schedule entry's last submitted tick.
type lastRun struct {
	Job string    `json:"job"`
	At  time.Time `json:"at"`
}

// ScheduleView is an entry as GET /api/schedules shows it.
type ScheduleView struct {
	Name    string          `json:"name"`
	Spec    string          `json:"spec"`
	Type    string          `json:"type"`
	Params  json.RawMessage `json:"params"`
	Options Options         `json:"options"`
	NextRun time.Time       `json:"next_run"`
	LastRun *time.Time      `json:"last_run"` // the last submitted tick; null when none is known
	LastJob string          `json:"last_job,omitempty"`
	Owner   string          `json:"owner"`
}

// Entries returns the entries with their next tick after now and their
// last submitted one (read from Redis: any replica can answer), sorted by
// name.
func (s *Scheduler) Entries(ctx context.Context, now time.Time) ([]ScheduleView, error) {
	out := make([]ScheduleView, 0, len(s.entries))
	if len(s.entries) == 0 {
		return out, nil
	}
	keys := make([]string, len(s.entries))
	for i, e := range s.entries {
		keys[i] = s.lastKey(e.Name)
	}
	// One round trip per entry at most, each its own key (Cluster-safe).
	cmds := make([]*redis.StringCmd, len(keys))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Get(ctx, k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("jobs: read schedules' last runs: %w", err)
	}
	for i, e := range s.entries {
		v := ScheduleView{Name: e.Name, Spec: e.Spec, Type: e.Type, Params: e.Params, Options: e.Options, NextRun: e.Next(now).UTC(), Owner: s.cfg.Owner}
		var last lastRun
		if b, err := cmds[i].Bytes(); err == nil && json.Unmarshal(b, &last) == nil {
			v.LastRun, v.LastJob = &last.At, last.Job
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
