package jobs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/wire"
)

// Job states, as the protocol names them (package wire).
const (
	StateScheduled = wire.StateScheduled
	StatePending   = wire.StatePending
	StateActive    = wire.StateActive
	StateRetry     = wire.StateRetry
	StateCompleted = wire.StateCompleted
	StateFailed    = wire.StateFailed
	StateCanceled  = wire.StateCanceled
)

// Terminal reports whether state is one a job never leaves.
func Terminal(state string) bool { return wire.Terminal(state) }

// store keeps the job records that Asynq does not: type, params, queue,
// creation time, state, attempt, the current Asynq task, the cancel flag
// and the terminal state, plus the indexes: each owner's jobs newest first,
// the open (not final) jobs the reconciler checks, and the running jobs by
// last heartbeat. One hash per job, each its own key, so the store works on
// Redis Cluster; every state change is a script on that one hash (see
// lifecycle), the indexes follow it and are repaired by the reconciler.
type store struct {
	rdb       redis.UniversalClient
	prefix    string
	retention time.Duration
}

func (s *store) jobKey(id string) string { return s.prefix + ":job:" + id }
func (s *store) indexKey(owner string) string {
	return s.prefix + ":jobs:owner:" + owner
}
func (s *store) runningKey() string { return s.prefix + ":running" }

// idemKey is the key of owner's Idempotency-Key key (hashed: the client
// chooses it), uniqueKey the lock of a unique type's job (digest: its
// type, owner and params).
func (s *store) idemKey(owner, key string) string {
	sum := sha256.Sum256([]byte(key))
	return s.prefix + ":idem:" + owner + ":" + hex.EncodeToString(sum[:16])
}
func (s *store) uniqueKey(digest string) string { return s.prefix + ":unique:" + digest }
func (s *store) openKey() string                { return s.prefix + ":jobs:open" } // score: when to check next (µs)
func (s *store) cancelChannel() string          { return s.prefix + ":cancel" }

// record is a job's hash, decoded.
type record struct {
	ID    string
	Owner string
	Type  string
	// Queue is the Asynq queue of the job's tasks: the type's queue the
	// submitter picked, at its priority (AsynqQueue).
	Queue string
	// Timeout and MaxRetry are the submitter's options (0 and -1 in
	// records from before them: the type's defaults).
	Timeout  time.Duration
	MaxRetry int
	// RunAt is when a scheduled job runs (zero: at once).
	RunAt time.Time
	// Unique is the key of the unique lock the job holds ("" when its type
	// is not unique), released when the job ends.
	Unique string
	// Schedule names the schedule entry that made the job ("" for a job
	// submitted through the API).
	Schedule  string
	Params    json.RawMessage
	State     string
	Attempt   int
	Result    json.RawMessage
	Error     string
	Canceled  bool
	Final     string
	CreatedAt time.Time
	UpdatedAt time.Time
	// StartedAt is when the job's first run started (Redis time); zero
	// before, and for records written before it was kept.
	StartedAt time.Time

	// Task is the Asynq task id of the job's current run: the job id for
	// the first, "ID.N" for the N-th task made after a lost worker. Only
	// that task may change the job's state.
	Task string
	// Handoff is set to Task while the task is being enqueued, so the
	// reconciler can finish an enqueue cut short by a crash; HandoffRetry
	// is that task's MaxRetry.
	Handoff      string
	HandoffRetry int
	// Claim is the Redis time (ms) of the last heartbeat of the run that
	// holds the job, 0 when no run holds it.
	Claim int64
	// Left is how many retries Asynq has left for the current task.
	Left int
	// Owed is the op id of a recorded end whose events are not yet known
	// to be in the log ("" when none is owed); OwedAt is when that end was
	// recorded (Redis time, ms) and OwedErr the error its events carry.
	Owed    string
	OwedAt  int64
	OwedErr string
}

func newJobID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// createIn queues on p the commands that store a new job r: its record
// and its entries in the owner's index and the open index. The function it
// returns reports their first error once p has run.
func (s *store) createIn(ctx context.Context, p redis.Pipeliner, r *record) func() error {
	now := r.CreatedAt
	cmds := []redis.Cmder{
		p.HSet(ctx, s.jobKey(r.ID), recordFields(r)...),
		p.Expire(ctx, s.jobKey(r.ID), s.retention),
		// Microseconds keep quick successive submits in creation order.
		p.ZAdd(ctx, s.indexKey(r.Owner), redis.Z{Score: float64(now.UnixMicro()), Member: r.ID}),
		p.Expire(ctx, s.indexKey(r.Owner), s.retention),
		// The reconciler looks at a scheduled job once it is due: until
		// then its task waits in Asynq's scheduled set, and checking it
		// every pass would spend the pass's batch on jobs that can not
		// have moved (an operator's delete of one is noticed at run_at).
		p.ZAdd(ctx, s.openKey(), redis.Z{Score: float64(latest(now, r.RunAt).UnixMicro()), Member: r.ID}),
	}
	return func() error {
		for _, c := range cmds {
			if err := c.Err(); err != nil {
				return fmt.Errorf("jobs: store job %s: %w", r.ID, err)
			}
		}
		return nil
	}
}

// recordFieldsMax is the most field-value pairs recordFields returns.
const recordFieldsMax = 17

// recordFields returns the fields of a new job r's hash as field-value
// pairs: what createIn and createAdmitted write.
func recordFields(r *record) []any {
	now := r.CreatedAt.UnixMilli()
	fields := make([]any, 0, 2*recordFieldsMax)
	fields = append(fields,
		"owner", r.Owner, "type", r.Type, "queue", r.Queue, "params", string(r.Params), "state", r.State,
		"attempt", 0, "created_at", now, "updated_at", now,
		"task", r.Task, "gen", 1, "handoff", r.Handoff, "handoff_retry", r.HandoffRetry,
		"timeout_ms", r.Timeout.Milliseconds(), "max_retry", r.MaxRetry)
	if !r.RunAt.IsZero() {
		fields = append(fields, "run_at", r.RunAt.UnixMilli())
	}
	if r.Unique != "" {
		fields = append(fields, "unique", r.Unique)
	}
	if r.Schedule != "" {
		fields = append(fields, "schedule", r.Schedule)
	}
	return fields
}

// create stores a new job r (see createIn) in one round trip.
func (s *store) create(ctx context.Context, r *record) error {
	var done func() error
	_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		done = s.createIn(ctx, p, r)
		return nil
	}) // each command's error is read by done
	return done()
}

var errNoRecord = errors.New("no such job")

func (s *store) get(ctx context.Context, id string) (*record, error) {
	m, err := s.rdb.HGetAll(ctx, s.jobKey(id)).Result()
	if err != nil {
		return nil, fmt.Errorf("jobs: read job %s: %w", id, err)
	}
	if len(m) == 0 {
		return nil, errNoRecord
	}
	return decodeRecord(id, m), nil
}

// fieldMap turns a script's reply of HGETALL (field, value, …) into a map.
func fieldMap(v any) (map[string]string, error) {
	flat, ok := v.([]any)
	if !ok || len(flat)%2 != 0 {
		return nil, fmt.Errorf("jobs: a record's fields: unexpected reply %T", v)
	}
	m := make(map[string]string, len(flat)/2)
	for i := 0; i < len(flat); i += 2 {
		k, _ := flat[i].(string)
		v, _ := flat[i+1].(string)
		m[k] = v
	}
	return m, nil
}

// decodeRecord decodes the hash m of job id.
func decodeRecord(id string, m map[string]string) *record {
	r := &record{
		ID: id, Owner: m["owner"], Type: m["type"], Queue: m["queue"], Params: json.RawMessage(m["params"]),
		State: m["state"], Error: m["error"], Canceled: m["canceled"] == "1", Final: m["final"],
		CreatedAt: millis(m["created_at"]), UpdatedAt: millis(m["updated_at"]),
	}
	if v := m["started_at"]; v != "" {
		r.StartedAt = millis(v)
	}
	r.Attempt, _ = strconv.Atoi(m["attempt"])
	if ms, err := strconv.ParseInt(m["timeout_ms"], 10, 64); err == nil {
		r.Timeout = time.Duration(ms) * time.Millisecond
	}
	r.MaxRetry = -1
	if n, err := strconv.Atoi(m["max_retry"]); err == nil {
		r.MaxRetry = n
	}
	if v := m["run_at"]; v != "" {
		r.RunAt = millis(v)
	}
	r.Unique, r.Schedule = m["unique"], m["schedule"]
	r.Task = m["task"]
	if r.Task == "" {
		r.Task = id // records from before per-run tasks
	}
	r.Handoff = m["handoff"]
	r.HandoffRetry, _ = strconv.Atoi(m["handoff_retry"])
	r.Claim, _ = strconv.ParseInt(m["hb"], 10, 64)
	r.Left, _ = strconv.Atoi(m["left"])
	r.Owed, r.OwedErr = m["owed"], m["owed_err"]
	r.OwedAt, _ = strconv.ParseInt(m["owed_at"], 10, 64)
	if v, ok := m["result"]; ok {
		r.Result = json.RawMessage(v)
	}
	return r
}

func millis(s string) time.Time {
	n, _ := strconv.ParseInt(s, 10, 64)
	return time.UnixMilli(n).UTC()
}

// trim drops owner's index entries whose record has expired.
func (s *store) trim(ctx context.Context, owner string) error {
	cutoff := time.Now().Add(-s.retention).UnixMicro()
	if err := s.rdb.ZRemRangeByScore(ctx, s.indexKey(owner), "-inf", "("+strconv.FormatInt(cutoff, 10)).Err(); err != nil {
		return fmt.Errorf("jobs: trim index: %w", err)
	}
	return nil
}

// indexEntry is one job in an owner's index: its id and its score, the
// creation time in microseconds.
type indexEntry struct {
	id    string
	score int64
}

// page returns up to n of owner's index entries, newest first, that come
// after (are older than) the entry (score, id); score < 0 starts at the
// newest. Entries of equal score are ordered by id, descending, as
// ZREVRANGEBYSCORE orders them, so a cursor never skips or repeats one.
func (s *store) page(ctx context.Context, owner string, score int64, id string, n int64) ([]indexEntry, error) {
	max := "+inf"
	if score >= 0 {
		max = strconv.FormatInt(score, 10)
	}
	var out []indexEntry
	offset := int64(0)
	for int64(len(out)) < n {
		zs, err := s.rdb.ZRevRangeByScoreWithScores(ctx, s.indexKey(owner), &redis.ZRangeBy{
			Max: max, Min: "-inf", Offset: offset, Count: n,
		}).Result()
		if err != nil {
			return nil, fmt.Errorf("jobs: list: %w", err)
		}
		for _, z := range zs {
			e := indexEntry{id: z.Member.(string), score: int64(z.Score)}
			if score >= 0 && e.score == score && e.id >= id {
				continue // at or before the cursor
			}
			out = append(out, e)
		}
		if int64(len(zs)) < n {
			break
		}
		offset += int64(len(zs))
	}
	if int64(len(out)) > n {
		out = out[:n]
	}
	return out, nil
}

// transfer gives every job of from to to: the records' owner and the
// index. Each job moves on its own (its keys may live on different Cluster
// slots); a crash midway leaves some jobs with each owner, and running it
// again finishes the move.
func (s *store) transfer(ctx context.Context, from, to string) (int, error) {
	zs, err := s.rdb.ZRangeWithScores(ctx, s.indexKey(from), 0, -1).Result()
	if err != nil {
		return 0, fmt.Errorf("jobs: list jobs of %s: %w", from, err)
	}
	for _, z := range zs {
		id := z.Member.(string)
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, s.jobKey(id), "owner", to)
			p.ZAdd(ctx, s.indexKey(to), z)
			p.Expire(ctx, s.indexKey(to), s.retention)
			p.ZRem(ctx, s.indexKey(from), id)
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("jobs: transfer %s: %w", id, err)
		}
	}
	return len(zs), nil
}

func (s *store) owner(ctx context.Context, id string) (string, error) {
	v, err := s.rdb.HGet(ctx, s.jobKey(id), "owner").Result()
	if errors.Is(err, redis.Nil) {
		return "", errNoRecord
	}
	if err != nil {
		return "", fmt.Errorf("jobs: owner of %s: %w", id, err)
	}
	return v, nil
}
