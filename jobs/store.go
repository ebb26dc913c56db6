package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Job states (PROTOCOL.md).
const (
	StatePending   = "pending"
	StateActive    = "active"
	StateRetry     = "retry"
	StateCompleted = "completed"
	StateFailed    = "failed"
	StateCanceled  = "canceled"
)

// Terminal reports whether state is one a job never leaves.
func Terminal(state string) bool {
	return state == StateCompleted || state == StateFailed || state == StateCanceled
}

// store keeps the job records that Asynq does not: type, params, queue,
// creation time, the cancel flag and the terminal state, plus the index
// that lists jobs newest first. One hash per job, each its own key, so the
// store works on Redis Cluster.
type store struct {
	rdb       redis.UniversalClient
	prefix    string
	retention time.Duration
}

func (s *store) jobKey(id string) string { return s.prefix + ":job:" + id }
func (s *store) indexKey(owner string) string {
	return s.prefix + ":jobs:owner:" + owner
}
func (s *store) runningKey() string    { return s.prefix + ":running" }
func (s *store) cancelChannel() string { return s.prefix + ":cancel" }

// record is a job's hash, decoded.
type record struct {
	ID        string
	Owner     string
	Type      string
	Queue     string
	Params    json.RawMessage
	State     string
	Attempt   int
	Result    json.RawMessage
	Error     string
	Canceled  bool
	Final     string
	CreatedAt time.Time
	UpdatedAt time.Time
}

func newJobID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *store) create(ctx context.Context, r *record) error {
	now := r.CreatedAt
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.jobKey(r.ID), map[string]any{
			"owner": r.Owner, "type": r.Type, "queue": r.Queue, "params": string(r.Params), "state": StatePending,
			"attempt": 0, "created_at": now.UnixMilli(), "updated_at": now.UnixMilli(),
		})
		p.Expire(ctx, s.jobKey(r.ID), s.retention)
		// Microseconds keep quick successive submits in creation order.
		p.ZAdd(ctx, s.indexKey(r.Owner), redis.Z{Score: float64(now.UnixMicro()), Member: r.ID})
		p.Expire(ctx, s.indexKey(r.Owner), s.retention)
		return nil
	})
	if err != nil {
		return fmt.Errorf("jobs: store job %s: %w", r.ID, err)
	}
	return nil
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
	r := &record{
		ID: id, Owner: m["owner"], Type: m["type"], Queue: m["queue"], Params: json.RawMessage(m["params"]),
		State: m["state"], Error: m["error"], Canceled: m["canceled"] == "1", Final: m["final"],
		CreatedAt: millis(m["created_at"]), UpdatedAt: millis(m["updated_at"]),
	}
	r.Attempt, _ = strconv.Atoi(m["attempt"])
	if v, ok := m["result"]; ok {
		r.Result = json.RawMessage(v)
	}
	return r, nil
}

func millis(s string) time.Time {
	n, _ := strconv.ParseInt(s, 10, 64)
	return time.UnixMilli(n).UTC()
}

// setState records a non-terminal state change.
func (s *store) setState(ctx context.Context, id, state string, attempt int, errMsg string) error {
	fields := map[string]any{"state": state, "updated_at": time.Now().UnixMilli()}
	if attempt > 0 {
		fields["attempt"] = attempt
	}
	if errMsg != "" {
		fields["error"] = errMsg
	}
	if err := s.rdb.HSet(ctx, s.jobKey(id), fields).Err(); err != nil {
		return fmt.Errorf("jobs: record state of %s: %w", id, err)
	}
	return nil
}

// finishScript sets the terminal state once: the first caller wins and
// gets 1; everyone after gets 0 and must not publish terminal events again.
var finishScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[1], 'final', ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
return 1
`)

// finish records a terminal state; it reports whether this call was the
// one that did (false when the job was already final or is unknown).
func (s *store) finish(ctx context.Context, id, state string, result json.RawMessage, errMsg string) (bool, error) {
	n, err := finishScript.Run(ctx, s.rdb, []string{s.jobKey(id)},
		state, time.Now().UnixMilli(), string(result), errMsg).Int()
	if err != nil {
		return false, fmt.Errorf("jobs: finish %s: %w", id, err)
	}
	if err := s.rdb.ZRem(ctx, s.runningKey(), id).Err(); err != nil {
		return n == 1, fmt.Errorf("jobs: finish %s: %w", id, err)
	}
	return n == 1, nil
}

// markCanceled sets the cancel flag and tells every worker, so an active
// run stops; it reports false when the job is already final.
func (s *store) markCanceled(ctx context.Context, id string) (bool, error) {
	n, err := markCanceledScript.Run(ctx, s.rdb, []string{s.jobKey(id)}).Int()
	if err != nil {
		return false, fmt.Errorf("jobs: cancel %s: %w", id, err)
	}
	if n != 1 {
		return false, nil
	}
	if err := s.rdb.Publish(ctx, s.cancelChannel(), id).Err(); err != nil {
		return true, fmt.Errorf("jobs: signal cancel of %s: %w", id, err)
	}
	return true, nil
}

var markCanceledScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'final') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'canceled', '1')
return 1
`)

func (s *store) canceled(ctx context.Context, id string) (bool, error) {
	v, err := s.rdb.HGet(ctx, s.jobKey(id), "canceled").Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	return v == "1", err
}

// list returns owner's job ids, newest first, dropping index entries
// whose record has expired.
func (s *store) list(ctx context.Context, owner string, limit int64) ([]string, error) {
	cutoff := time.Now().Add(-s.retention).UnixMicro()
	if err := s.rdb.ZRemRangeByScore(ctx, s.indexKey(owner), "-inf", "("+strconv.FormatInt(cutoff, 10)).Err(); err != nil {
		return nil, fmt.Errorf("jobs: trim index: %w", err)
	}
	ids, err := s.rdb.ZRevRange(ctx, s.indexKey(owner), 0, limit-1).Result()
	if err != nil {
		return nil, fmt.Errorf("jobs: list: %w", err)
	}
	return ids, nil
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
