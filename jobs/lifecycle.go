package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"taskstream/progress"
)

// Reasons given to watchers (the state event's error, the job's error)
// when something other than the job's own run ends or interrupts it.
const (
	reasonWorkerLost = "worker lost"
	reasonStateLost  = "state lost"
	reasonDeleted    = "deleted from the queue by an operator"
	reasonArchived   = "archived by an operator"
	reasonOpCanceled = "canceled by an operator"
	msgRestored      = "the job's record was lost (Redis restarted without persistence) and restored by its worker"
	msgRunAgain      = "run again from the archive"
	msgHandBack      = "worker shutting down; the job goes back to the queue"
)

// lifecycle is the one place a job changes state: submit, start, retry,
// hand back, finish, cancel, lost and reconcile. Each transition is one
// script on the job's hash (atomic, and Cluster-safe: one key), and only
// the caller whose script made the change publishes the matching events,
// so every event goes out once and the record (what GET /api/jobs/ID
// shows) always agrees with them.
//
// Every run of a job is an attempt of one Asynq task, and the record names
// the current task and attempt. Transitions made by a run are conditional
// on both still being current: a run that was declared lost (its worker
// stopped sending heartbeats) and replaced by a new task can not publish
// anything more, so a worker that was only slow drops its results instead
// of producing a second end.
type lifecycle struct {
	st     *store
	log    *progress.Log
	reg    *Registry
	client *asynq.Client
	insp   *asynq.Inspector
	cfg    Config
}

// attempt is one run of a job: the task it runs and its number, plus what
// the worker needs to restore the record if Redis loses it.
type attempt struct {
	rec     record // the record as the run started (owner, type, params, …)
	task    string
	n       int
	started time.Time // when this run started, for Observer.JobFinished
}

func (a *attempt) job() string { return a.rec.ID }

// jobOfTask returns the job id of an Asynq task id ("ID" or "ID.N").
func jobOfTask(task string) string {
	id, _, _ := strings.Cut(task, ".")
	return id
}

// genOfTask returns the generation of a task id: 1 for "ID", N for "ID.N".
func genOfTask(task string) int {
	_, g, ok := strings.Cut(task, ".")
	if n, err := strconv.Atoi(g); ok && err == nil && n > 1 {
		return n
	}
	return 1
}

// stateEvent is the payload of a "state" event.
type stateEvent struct {
	State   string `json:"state"`
	Attempt int    `json:"attempt,omitempty"`
	Error   string `json:"error,omitempty"`
	Message string `json:"message,omitempty"`
}

// redisNow is the server's clock in ms inside a script: heartbeats are
// written and judged by the same clock, whatever the workers' clocks say.
const redisNow = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// submit records a new job, publishes its first event (pending) and
// enqueues its first task. The record carries a handoff mark until the
// enqueue is confirmed, so a crash in between is finished by the
// reconciler instead of leaving the job pending forever.
func (l *lifecycle) submit(ctx context.Context, rec *record, t Type) error {
	rec.Task, rec.Handoff, rec.HandoffRetry = rec.ID, rec.ID, t.MaxRetry
	if err := l.st.create(ctx, rec); err != nil {
		return err
	}
	// The pending event comes first so the group's epoch exists before any
	// watcher subscribes, and it precedes the worker's "active".
	if _, err := l.log.Publish(ctx, Group(rec.ID), "state", stateEvent{State: StatePending}); err != nil {
		// Never enqueued: end the record rather than leave it pending.
		l.end(context.WithoutCancel(ctx), rec.ID, rec.Task, "", StateFailed, nil, "could not record the job's first event")
		return err
	}
	if err := l.enqueue(ctx, rec, rec.Task, t.MaxRetry); err != nil {
		l.end(context.WithoutCancel(ctx), rec.ID, rec.Task, "", StateFailed, nil, "could not enqueue: "+err.Error())
		return fmt.Errorf("jobs: enqueue %s: %w", rec.ID, err)
	}
	if l.cfg.Observer != nil {
		l.cfg.Observer.JobSubmitted(t.Name)
	}
	return nil
}

// enqueue puts task on the queue for rec, once: a task id Asynq already
// holds counts as done, so the submitter and the reconciler may both try.
// Then it clears the record's handoff mark for that task.
func (l *lifecycle) enqueue(ctx context.Context, rec *record, task string, maxRetry int) error {
	timeout := time.Hour
	if t, ok := l.reg.Lookup(rec.Type); ok {
		timeout = t.Timeout
	}
	_, err := l.client.EnqueueContext(ctx, asynq.NewTask(rec.Type, rec.Params,
		asynq.TaskID(task), asynq.Queue(rec.Queue), asynq.MaxRetry(max(maxRetry, 0)),
		asynq.Timeout(timeout), asynq.Retention(l.cfg.Retention)))
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return err
	}
	if err := clearHandoffScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(rec.ID)}, task).Err(); err != nil {
		return fmt.Errorf("jobs: clear handoff of %s: %w", rec.ID, err)
	}
	return nil
}

var clearHandoffScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'handoff') == ARGV[1] then redis.call('HDEL', KEYS[1], 'handoff', 'handoff_retry') end
return 1
`)

// startOutcome says what a worker must do with a task it dequeued.
type startOutcome int

const (
	startRun      startOutcome = iota // run it
	startDrop                         // not the job's current task, or the job is over: drop it
	startCanceled                     // canceled before it ran: end it canceled
	startGone                         // the record is gone (Redis lost it): tell watchers, drop it
)

// startScript claims the job for a run of task: it must be the job's
// current task; a failed job whose task an operator ran again from the
// archive is reopened; the attempt number goes up by one. It returns the
// outcome, the attempt, and whether the previous run of the same task died
// holding the job without a word (its retry was never announced).
var startScript = redis.NewScript(redisNow + `
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
local f = redis.call('HMGET', KEYS[1], 'task', 'final', 'canceled', 'state', 'attempt', 'hb')
if (f[1] or ARGV[3]) ~= ARGV[1] then return {'stale'} end
local reopened = 0
if f[2] then
  if f[2] ~= 'failed' or f[3] == '1' then return {'final'} end
  redis.call('HDEL', KEYS[1], 'final', 'result')
  reopened = 1
end
if f[3] == '1' then return {'canceled'} end
local lost = 0
if f[6] and f[4] == 'active' then lost = 1 end
local n = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'active', 'left', ARGV[2], 'hb', now, 'updated_at', now, 'task', ARGV[1])
return {'ok', n, tonumber(f[5] or '0'), lost, reopened, now}
`)

// start claims the job for a run of task (whose Asynq retries left are
// left) and publishes "state active", preceded by the retry of a run that
// died unannounced. For startRun it returns the attempt.
func (l *lifecycle) start(ctx context.Context, task string, left int) (*attempt, startOutcome, error) {
	id := jobOfTask(task)
	res, err := startScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(id)}, task, left, id).Slice()
	if err != nil {
		return nil, 0, fmt.Errorf("jobs: start %s: %w", task, err)
	}
	switch res[0] {
	case "gone":
		return nil, startGone, nil
	case "stale", "final":
		return nil, startDrop, nil
	case "canceled":
		return nil, startCanceled, nil
	}
	n, prev, lost, reopened, now := int(toInt(res[1])), int(toInt(res[2])), toInt(res[3]) == 1, toInt(res[4]) == 1, toInt(res[5])
	rec, err := l.st.get(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	_ = l.st.rdb.ZAdd(ctx, l.st.runningKey(), redis.Z{Score: float64(now), Member: id}).Err()
	if reopened {
		_ = l.st.rdb.ZAdd(ctx, l.st.openKey(), redis.Z{Score: float64(time.Now().UnixMicro()), Member: id}).Err()
	}
	if lost {
		l.publish(ctx, id, "state", stateEvent{State: StateRetry, Attempt: prev, Error: reasonWorkerLost})
	}
	ev := stateEvent{State: StateActive, Attempt: n}
	if reopened {
		ev.Message = msgRunAgain
	}
	if l.cfg.Observer != nil && n == 1 {
		l.cfg.Observer.JobStarted(rec.Type, time.Since(rec.CreatedAt))
	}
	l.publish(ctx, id, "state", ev)
	return &attempt{rec: *rec, task: task, n: n, started: time.Now()}, startRun, nil
}

func toInt(v any) int64 {
	n, _ := v.(int64)
	return n
}

// beatOutcome is what a heartbeat learned about a run.
type beatOutcome int

const (
	beatOK       beatOutcome = iota
	beatStale                // the run no longer holds the job: stop it, drop its results
	beatCanceled             // the job was canceled: stop the run
	beatGone                 // the record is gone: restore it
)

var beatScript = redis.NewScript(redisNow + `
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone', now} end
local f = redis.call('HMGET', KEYS[1], 'task', 'attempt', 'final', 'canceled', 'hb')
if (f[1] or ARGV[3]) ~= ARGV[1] or f[2] ~= ARGV[2] or f[3] or not f[5] then return {'stale', now} end
redis.call('HSET', KEYS[1], 'hb', now)
if f[4] == '1' then return {'canceled', now} end
return {'ok', now}
`)

// beat refreshes a run's claim on its job, and restores the job's record
// (and tells watchers) when Redis lost it while the job ran.
func (l *lifecycle) beat(ctx context.Context, a *attempt) (beatOutcome, error) {
	res, err := beatScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(a.job())}, a.task, a.n, a.job()).Slice()
	if err != nil {
		return beatOK, fmt.Errorf("jobs: heartbeat of %s: %w", a.job(), err)
	}
	now := toInt(res[1])
	switch res[0] {
	case "stale":
		return beatStale, nil
	case "gone":
		created, err := l.restore(ctx, a, StateActive, nil, "")
		if err != nil {
			return beatGone, err
		}
		if created {
			l.publish(ctx, a.job(), "state", stateEvent{State: StateActive, Attempt: a.n, Message: msgRestored})
		}
	}
	if err := l.st.rdb.ZAdd(ctx, l.st.runningKey(), redis.Z{Score: float64(now), Member: a.job()}).Err(); err != nil {
		return beatOK, fmt.Errorf("jobs: heartbeat of %s: %w", a.job(), err)
	}
	if res[0] == "canceled" {
		return beatCanceled, nil
	}
	return beatOK, nil
}

// restoreScript writes a record that Redis lost, from what the run knows.
var restoreScript = redis.NewScript(redisNow + `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'type', ARGV[2], 'queue', ARGV[3], 'params', ARGV[4],
  'created_at', ARGV[5], 'updated_at', now, 'state', ARGV[6], 'attempt', ARGV[7], 'task', ARGV[8], 'gen', ARGV[13])
if ARGV[9] == '1' then redis.call('HSET', KEYS[1], 'final', ARGV[6]) else redis.call('HSET', KEYS[1], 'hb', now) end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[10]) end
if ARGV[11] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[11]) end
redis.call('PEXPIRE', KEYS[1], ARGV[12])
return 1
`)

// restore recreates a run's job record after Redis lost it (a restart
// without persistence), in state, with the owner's index entry, so the job
// keeps its owner and GET /api/jobs/ID agrees with the events published in
// the log's new epoch. It reports false when the record exists already
// (someone else restored it).
func (l *lifecycle) restore(ctx context.Context, a *attempt, state string, result json.RawMessage, errMsg string) (bool, error) {
	final := "0"
	if Terminal(state) {
		final = "1"
	}
	r := a.rec
	n, err := restoreScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(r.ID)},
		r.Owner, r.Type, r.Queue, string(r.Params), r.CreatedAt.UnixMilli(), state, a.n, a.task, final,
		string(result), errMsg, l.cfg.Retention.Milliseconds(), genOfTask(a.task)).Int()
	if err != nil {
		return false, fmt.Errorf("jobs: restore %s: %w", r.ID, err)
	}
	if n != 1 {
		return false, nil
	}
	_, err = l.st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, l.st.indexKey(r.Owner), redis.Z{Score: float64(r.CreatedAt.UnixMicro()), Member: r.ID})
		p.Expire(ctx, l.st.indexKey(r.Owner), l.cfg.Retention)
		if final == "0" {
			p.ZAdd(ctx, l.st.openKey(), redis.Z{Score: float64(time.Now().UnixMicro()), Member: r.ID})
		}
		return nil
	})
	if err != nil {
		return true, fmt.Errorf("jobs: restore %s: %w", r.ID, err)
	}
	l.cfg.Logger.Warn("job record was lost (Redis restarted without persistence?) and restored", "job", r.ID, "state", state)
	return true, nil
}

// transitionScript changes the state of the job if task (and, when given,
// attempt) is still its current run and it is not final. ARGV: task,
// attempt or "", job id, state, final flag, error, result, release the
// run's claim. It returns 1 when it made the change, 0 when the job
// moved on, -1 when the record is gone.
var transitionScript = redis.NewScript(redisNow + `
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local f = redis.call('HMGET', KEYS[1], 'task', 'attempt', 'final')
if (f[1] or ARGV[3]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and f[2] ~= ARGV[2] then return 0 end
if f[3] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'updated_at', now)
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'final', ARGV[4]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[7]) end
if ARGV[8] == '1' then redis.call('HDEL', KEYS[1], 'hb') end
return 1
`)

func (l *lifecycle) transition(ctx context.Context, id, task, attemptN, state string, final bool, errMsg string, result json.RawMessage, release bool) (int, error) {
	n, err := transitionScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(id)},
		task, attemptN, id, state, flag(final), errMsg, string(result), flag(release)).Int()
	if err != nil {
		return 0, fmt.Errorf("jobs: %s %s: %w", state, id, err)
	}
	return n, nil
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// retry records that a's run failed and Asynq will run the task again,
// and tells watchers. It reports false when a was no longer current.
func (l *lifecycle) retry(ctx context.Context, a *attempt, errMsg string) bool {
	n, err := l.transition(ctx, a.job(), a.task, strconv.Itoa(a.n), StateRetry, false, errMsg, nil, true)
	if err != nil {
		l.cfg.Logger.Error("recording retry failed", "job", a.job(), "err", err)
	}
	if n != 1 {
		return false
	}
	_ = l.st.rdb.ZRem(ctx, l.st.runningKey(), a.job()).Err()
	l.publish(ctx, a.job(), "state", stateEvent{State: StateRetry, Attempt: a.n, Error: errMsg})
	return true
}

// handBack records that a's worker is shutting down and Asynq hands the
// task back to the queue. The run keeps its claim (and its heartbeat)
// until Asynq has done so, so a worker killed while draining is still
// noticed as lost.
func (l *lifecycle) handBack(ctx context.Context, a *attempt) {
	n, err := l.transition(ctx, a.job(), a.task, strconv.Itoa(a.n), StatePending, false, "", nil, false)
	if err != nil {
		l.cfg.Logger.Error("recording hand-back failed", "job", a.job(), "err", err)
	}
	if n == 1 {
		l.publish(ctx, a.job(), "state", stateEvent{State: StatePending, Attempt: a.n, Message: msgHandBack})
	}
}

var releaseScript = redis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'task', 'attempt')
if f[1] == ARGV[1] and f[2] == ARGV[2] then redis.call('HDEL', KEYS[1], 'hb') end
return 1
`)

// release drops a's claim when its run returns without a transition of its
// own (after a hand-back).
func (l *lifecycle) release(ctx context.Context, a *attempt) {
	if err := releaseScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(a.job())}, a.task, a.n).Err(); err != nil {
		l.cfg.Logger.Warn("releasing a job's claim failed; the lost-job sweep will", "job", a.job(), "err", err)
	}
}

// finishRun ends the job from its run a: state is completed, failed or
// canceled. When Redis lost the record while the job ran, the record is
// restored with the end, so the end still reaches watchers (in the log's
// new epoch). It reports whether a's end was recorded (false: a was no
// longer current, and its results are dropped).
func (l *lifecycle) finishRun(ctx context.Context, a *attempt, state string, result json.RawMessage, errMsg string) bool {
	n, err := l.transition(ctx, a.job(), a.task, strconv.Itoa(a.n), state, true, errMsg, result, true)
	if err != nil {
		l.cfg.Logger.Error("recording the end of a job failed", "job", a.job(), "state", state, "err", err)
		return false
	}
	if n == -1 {
		created, err := l.restore(ctx, a, state, result, errMsg)
		if err != nil {
			l.cfg.Logger.Error("restoring a lost job record failed", "job", a.job(), "err", err)
		}
		if !created { // restored meanwhile (by our heartbeat): end it as usual
			n, err = l.transition(ctx, a.job(), a.task, strconv.Itoa(a.n), state, true, errMsg, result, true)
			if err != nil {
				l.cfg.Logger.Error("recording the end of a job failed", "job", a.job(), "state", state, "err", err)
			}
		} else {
			n = 1
		}
	}
	if n != 1 {
		return false
	}
	// Counted before the events go out: a watcher that saw the end finds
	// it in the metrics of this process.
	if l.cfg.Observer != nil {
		l.cfg.Observer.JobFinished(a.rec.Type, state, time.Since(a.started), true)
	}
	l.announceEnd(ctx, a.job(), state, result, errMsg)
	return true
}

// end ends the job from outside a run (the submitter, a cancel, the
// reconciler), if task is still its current task and attemptN (when not
// "") its current attempt.
func (l *lifecycle) end(ctx context.Context, id, task, attemptN, state string, result json.RawMessage, errMsg string) bool {
	n, err := l.transition(ctx, id, task, attemptN, state, true, errMsg, result, true)
	if err != nil {
		l.cfg.Logger.Error("recording the end of a job failed", "job", id, "state", state, "err", err)
		return false
	}
	if n != 1 {
		return false
	}
	if l.cfg.Observer != nil {
		// The type is in the record (which the end keeps); one read, on
		// this rare path only. Counted before the events go out, as in
		// finishRun.
		if rec, err := l.st.get(ctx, id); err == nil {
			l.cfg.Observer.JobFinished(rec.Type, state, 0, false)
		} else {
			l.cfg.Logger.Warn("job end not counted in metrics: record unreadable", "job", id, "err", err)
		}
	}
	l.announceEnd(ctx, id, state, result, errMsg)
	return true
}

// announceEnd publishes a recorded end: "state", then "result" or
// "failed" as the job's last event, and notifies the owner; the job leaves
// the open and running indexes.
func (l *lifecycle) announceEnd(ctx context.Context, id, state string, result json.RawMessage, errMsg string) {
	_, _ = l.st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, l.st.openKey(), id)
		p.ZRem(ctx, l.st.runningKey(), id)
		return nil
	})
	l.publish(ctx, id, "state", stateEvent{State: state, Error: errMsg})
	switch state {
	case StateCompleted:
		l.publish(ctx, id, "result", map[string]json.RawMessage{"result": orNull(result)})
	case StateFailed:
		l.publish(ctx, id, "failed", map[string]string{"error": errMsg})
	}
	l.notifyOwner(ctx, id, state, errMsg)
}

// stateLost tells the watchers of a job whose record is gone, and can not
// be restored, that it ended: nothing will run it again.
func (l *lifecycle) stateLost(ctx context.Context, id string) {
	l.publish(ctx, id, "state", stateEvent{State: StateFailed, Error: reasonStateLost})
	l.publish(ctx, id, "failed", map[string]string{"error": reasonStateLost})
}

// cancel marks job id canceled and tells every worker, so a running job
// stops; a queued one is deleted from the queue and ends at once. It
// reports false when the job is already final.
func (l *lifecycle) cancel(ctx context.Context, id string) (bool, error) {
	n, err := markCanceledScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(id)}).Int()
	if err != nil {
		return false, fmt.Errorf("jobs: cancel %s: %w", id, err)
	}
	if n != 1 {
		return false, nil
	}
	if err := l.st.rdb.Publish(ctx, l.st.cancelChannel(), id).Err(); err != nil {
		// A running job's worker still sees the flag at its next poll.
		l.cfg.Logger.Warn("cancel signal not sent", "job", id, "err", err)
	}
	rec, err := l.st.get(ctx, id)
	if err != nil {
		return true, err
	}
	switch err := l.insp.DeleteTask(rec.Queue, rec.Task); {
	case err == nil, errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
		// Not queued any more (or never): nobody else will end it, so the
		// end must be recorded even if the caller has gone away.
		l.end(context.WithoutCancel(ctx), id, rec.Task, "", StateCanceled, nil, "")
	default:
		// Active: the worker saw the signal (or sees the flag when it
		// beats or polls) and ends the job itself.
	}
	return true, nil
}

var markCanceledScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'final') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'canceled', '1')
return 1
`)

func (l *lifecycle) canceled(ctx context.Context, id string) (bool, error) {
	v, err := l.st.rdb.HGet(ctx, l.st.jobKey(id), "canceled").Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	return v == "1", err
}

// lostScript judges a run's claim by the server's clock: older than
// ARGV[2] ms means the run's worker is gone. The job is then canceled (if
// asked), failed (no retries left) or given a new task: a new task id, so
// Asynq can run it now although it still holds the old task as active
// under the dead worker's lease, and so a late run of the old task is
// told it is stale.
var lostScript = redis.NewScript(redisNow + `
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
local f = redis.call('HMGET', KEYS[1], 'task', 'attempt', 'final', 'hb', 'left', 'gen', 'canceled')
if (f[1] or ARGV[1]) ~= ARGV[3] or f[2] ~= ARGV[4] or f[3] or not f[4] then return {'skip'} end
if tonumber(f[4]) > now - tonumber(ARGV[2]) then return {'alive'} end
redis.call('HDEL', KEYS[1], 'hb')
if f[7] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'canceled', 'final', 'canceled', 'updated_at', now)
  return {'canceled'}
end
local left = tonumber(f[5] or '0')
if left <= 0 then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'final', 'failed', 'error', ARGV[5], 'updated_at', now)
  return {'failed'}
end
local gen = tonumber(f[6] or '1') + 1
local task = ARGV[1] .. '.' .. gen
redis.call('HSET', KEYS[1], 'gen', gen, 'task', task, 'handoff', task, 'handoff_retry', left - 1,
  'state', 'retry', 'error', ARGV[5], 'updated_at', now)
return {'retry', task, left - 1}
`)

// lost checks job id, listed among the running jobs with an old heartbeat:
// if its run's claim is stale by the server's clock, watchers are told
// "state retry" ("worker lost") and a new task runs the job again at
// once; with no retries left it fails. A run that completed in Asynq
// while its end was not recorded is finished instead.
func (l *lifecycle) lost(ctx context.Context, id string, lostAfter time.Duration) error {
	rec, err := l.st.get(ctx, id)
	if errors.Is(err, errNoRecord) {
		return l.st.rdb.ZRem(ctx, l.st.runningKey(), id).Err()
	}
	if err != nil {
		return err
	}
	if rec.Final != "" || rec.Claim == 0 {
		return l.st.rdb.ZRem(ctx, l.st.runningKey(), id).Err()
	}
	if info, err := l.insp.GetTaskInfo(rec.Queue, rec.Task); err == nil && info.State == asynq.TaskStateCompleted {
		l.end(ctx, id, rec.Task, strconv.Itoa(rec.Attempt), StateCompleted, info.Result, "")
		return nil
	}
	res, err := lostScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(id)},
		id, lostAfter.Milliseconds(), rec.Task, rec.Attempt, reasonWorkerLost).Slice()
	if err != nil {
		return fmt.Errorf("jobs: lost %s: %w", id, err)
	}
	switch res[0] {
	case "alive":
		return nil
	case "skip", "gone":
		return l.st.rdb.ZRem(ctx, l.st.runningKey(), id).Err()
	case "canceled":
		l.cfg.Logger.Warn("worker lost while a canceled job ran", "job", id, "attempt", rec.Attempt)
		l.announceEnd(ctx, id, StateCanceled, nil, "")
		return nil
	case "failed":
		l.cfg.Logger.Warn("worker lost on the job's last attempt", "job", id, "attempt", rec.Attempt)
		l.announceEnd(ctx, id, StateFailed, nil, reasonWorkerLost)
		return nil
	}
	task, _ := res[1].(string)
	left := int(toInt(res[2]))
	l.cfg.Logger.Warn("worker lost; the job runs again", "job", id, "attempt", rec.Attempt, "task", task)
	_ = l.st.rdb.ZRem(ctx, l.st.runningKey(), id).Err()
	l.publish(ctx, id, "state", stateEvent{State: StateRetry, Attempt: rec.Attempt, Error: reasonWorkerLost})
	if err := l.enqueue(ctx, rec, task, left); err != nil {
		return fmt.Errorf("jobs: enqueue the next run of %s (the reconciler retries): %w", id, err)
	}
	return nil
}

// reconcile brings job id's record in line with Asynq when something
// other than our own code moved its task: an operator's delete (ends
// canceled), archive (failed), a run whose end was not recorded
// (completed), or an enqueue cut short (enqueued now). A job a run holds
// is left to its heartbeat and the lost-job sweep. It reports whether the
// job is still open.
func (l *lifecycle) reconcile(ctx context.Context, id string) (bool, error) {
	rec, err := l.st.get(ctx, id)
	if errors.Is(err, errNoRecord) {
		return false, l.st.rdb.ZRem(ctx, l.st.openKey(), id).Err()
	}
	if err != nil {
		return true, err
	}
	if rec.Final != "" {
		return false, l.st.rdb.ZRem(ctx, l.st.openKey(), id).Err()
	}
	if rec.Claim != 0 {
		return true, nil
	}
	info, err := l.insp.GetTaskInfo(rec.Queue, rec.Task)
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
		if rec.Handoff == rec.Task {
			return true, l.enqueue(ctx, rec, rec.Task, rec.HandoffRetry)
		}
		reason := reasonDeleted
		if rec.Canceled {
			reason = "" // the owner's cancel deleted it
		}
		l.end(ctx, id, rec.Task, "", StateCanceled, nil, reason)
		return false, nil
	case err != nil:
		return true, fmt.Errorf("jobs: inspect %s: %w", rec.Task, err)
	}
	switch info.State {
	case asynq.TaskStateArchived:
		if rec.Canceled {
			l.end(ctx, id, rec.Task, "", StateCanceled, nil, "")
		} else {
			l.end(ctx, id, rec.Task, "", StateFailed, nil, reasonArchived)
		}
		return false, nil
	case asynq.TaskStateCompleted:
		l.end(ctx, id, rec.Task, "", StateCompleted, info.Result, "")
		return false, nil
	}
	if rec.Handoff == rec.Task { // queued, but the mark outlived a crash
		return true, clearHandoffScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(id)}, rec.Task).Err()
	}
	return true, nil
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
func (l *lifecycle) publish(ctx context.Context, id, name string, data any) {
	if _, err := l.log.Publish(ctx, Group(id), name, data); err != nil {
		l.cfg.Logger.Error("lifecycle event lost", "job", id, "event", name, "err", err)
	}
}

// notifyOwner tells the job's owner, on every tab, that it has finished.
func (l *lifecycle) notifyOwner(ctx context.Context, id, state, errMsg string) {
	rec, err := l.st.get(ctx, id)
	if err != nil || rec.Owner == "" {
		return
	}
	owner, typ := rec.Owner, rec.Type
	n := progress.Notification{
		Title: fmt.Sprintf("Job %s %s", typ, state),
		Body:  fmt.Sprintf("%s job %s has %s.", typ, id, state),
		Link:  fmt.Sprintf(l.cfg.JobLink, id),
	}
	if errMsg != "" {
		n.Body += " " + errMsg
	}
	if _, err := progress.Notify(ctx, l.log, progress.UserGroup(owner), n); err != nil {
		l.cfg.Logger.Warn("job notification lost", "job", id, "owner", owner, "err", err)
	}
}
