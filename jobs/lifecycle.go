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

	"taskstream/wire"
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
// Off a Redis Cluster (fused) a run's start makes its claim and appends
// its events in one script (startGuard), and a submit's handoff clear and
// the owner's event ride with the enqueue (submittedGuard), and a
// submit's Admission runs in the script that records the job
// (createAdmitted): keys of several slots, which a single Redis or
// Sentinel allows.
//
// A Redis call can fail after Redis applied it (the reply timed out, the
// connection dropped), and the job's record and its log live in different
// slots, so the other changes and their events are two steps. Three rules keep every
// job's end published exactly once anyway:
//   - each transition carries an op id, stored on the record: the same
//     caller retrying the same transition after an unknown outcome is told
//     "already done by you" (and publishes) instead of "moved on";
//   - a final transition also records a debt ("owed": the op id) in the
//     same script, cleared only after its events are in the log, and the
//     job stays in the open index until then, so the reconciler pays a
//     debt older than Config.DebtAge;
//   - the events of a transition are appended once per op id, so the
//     worker's retries and the reconciler paying the same debt append
//     them once: with Log.PublishOnce under the op id on a Cluster, and
//     off one in the same script that clears the debt, only while the
//     debt names the op (endGuard).
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
	// fused: a run's claim and its events are one script (startGuard),
	// which touches the job's hash, the indexes and the job's log, keys
	// of different hash slots: true off a Redis Cluster (the log is not
	// Sharded); on a Cluster they are two steps.
	fused bool
}

// attempt is one run of a job: the task it runs and its number, plus what
// the worker needs to restore the record if Redis loses it.
type attempt struct {
	rec     record // the record as the run started (owner, type, params, …)
	task    string
	n       int
	started time.Time // when this run started, for Observer.JobFinished
	// stop ends the run's retries of a Redis call that failed (the
	// worker is stopping); nil: retry for Config.EndRetryFor.
	stop <-chan struct{}
	// ride, when not nil, takes the run's fused end (endStep) to send it
	// with Asynq's script on the run's task (endGate); nil: the end takes
	// a round trip of its own.
	ride func(*endStep)
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
	RunAt   string `json:"run_at,omitempty"` // a scheduled job's time (RFC 3339)
}

// redisNow is the server's clock in ms inside a script: heartbeats are
// written and judged by the same clock, whatever the workers' clocks say.
const redisNow = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// submit records a new job, publishes its first event (pending, or
// scheduled with its run_at) and enqueues its first task (at run_at for a
// scheduled one). The record carries a handoff mark until the enqueue is
// confirmed, so a crash in between is finished by the reconciler instead
// of leaving the job pending forever; the caller clears it (submitted),
// in the round trip that tells the owner.
//
// announce, when not nil, makes the owner's "submitted" event from the
// first event. Off a Redis Cluster the mark's clear and that event then
// ride with the enqueue, in its round trip (enqueueGate), made only if
// Asynq holds the task; submit reports whether they were (told), and
// when not the caller finishes with submitted as before.
//
// admit, when not nil, is the submit's Admission, run in the script that
// records the job (createAdmitted): the caller passes it off a Redis
// Cluster only, and a refusal is a *RefusedError with nothing written.
//
// It returns the first event.
func (l *lifecycle) submit(ctx context.Context, rec *record, t Type, announce func(first *progress.Event) progress.Post, admit *Admission) (*progress.Event, bool, error) {
	rec.Task, rec.Handoff, rec.HandoffRetry = rec.ID, rec.ID, rec.MaxRetry
	rec.State = StatePending
	first := stateEvent{State: StatePending}
	if !rec.RunAt.IsZero() {
		rec.State = StateScheduled
		first = stateEvent{State: StateScheduled, RunAt: rec.RunAt.UTC().Format(time.RFC3339Nano)}
	}
	// The record and the first event in one round trip, the record's
	// commands first. The first event comes before the enqueue so the
	// group's epoch exists before any watcher subscribes, and it precedes
	// the worker's "active".
	var ev *progress.Event
	if admit != nil {
		var err error
		if ev, err = l.createAdmitted(ctx, rec, first, admit); err != nil {
			return nil, false, err
		}
	} else {
		var created func() error
		evs, errs := l.log.PublishWith(ctx, func(p redis.Pipeliner) { created = l.st.createIn(ctx, p, rec) },
			progress.Post{Group: Group(rec.ID), Name: wire.EventState, Data: first})
		if err := created(); err != nil {
			// No record: nobody may watch the job (a watcher must own it), so
			// a first event that did get in stays unseen and expires with its
			// log.
			return nil, false, err
		}
		if errs[0] != nil {
			// Never enqueued: end the record rather than leave it pending.
			l.end(context.WithoutCancel(ctx), rec.ID, rec.Task, "", StateFailed, nil, "could not record the job's first event")
			return nil, false, errs[0]
		}
		ev = evs[0]
	}
	ectx := ctx
	var told *progress.GuardCmd
	var tellKeys []string
	var tellArgs []any
	var tellGroup string
	if l.fused && announce != nil {
		post := announce(ev)
		if data, err := json.Marshal(post.Data); err != nil {
			// The submitted event's own append (submitted) reports it too.
			l.cfg.Logger.Warn("encoding the submitted event failed", "job", rec.ID, "err", err)
		} else {
			tellArgs, tellGroup = []any{rec.Task, post.Name, string(data)}, post.Group
			ectx = withRider(ctx, &rider{task: rec.Task, queue: func(p redis.Pipeliner, taskKey string) {
				tellKeys = []string{taskKey, l.st.jobKey(rec.ID)}
				var qerr error
				if told, qerr = l.log.QueueGuard(ctx, p, submittedGuard, tellKeys, tellArgs, tellGroup); qerr != nil {
					l.cfg.Logger.Warn("the submitted event can not ride with the enqueue", "job", rec.ID, "err", qerr)
				}
			}})
		}
	}
	if err := l.enqueueTask(ectx, rec, rec.Task, rec.MaxRetry); err != nil {
		l.end(context.WithoutCancel(ctx), rec.ID, rec.Task, "", StateFailed, nil, "could not enqueue: "+err.Error())
		return nil, false, fmt.Errorf("jobs: enqueue %s: %w", rec.ID, err)
	}
	if l.cfg.Observer != nil {
		l.cfg.Observer.JobSubmitted(t.Name)
	}
	if told == nil {
		return ev, false, nil
	}
	reply, _, err := told.Result()
	if errors.Is(err, progress.ErrNoScript) {
		// Redis lacked the script (a restart, or its first use): the same
		// step alone, with its source.
		reply, _, err = l.log.RunGuard(ctx, submittedGuard, tellKeys, tellArgs, tellGroup)
	}
	if err != nil {
		l.cfg.Logger.Warn("finishing a submit with its enqueue failed; it is finished alone", "job", rec.ID, "err", err)
	}
	return ev, err == nil && toInt(reply) == 1, nil
}

// enqueue puts task on the queue for rec (enqueueTask), then clears the
// record's handoff mark for that task.
func (l *lifecycle) enqueue(ctx context.Context, rec *record, task string, maxRetry int) error {
	if err := l.enqueueTask(ctx, rec, task, maxRetry); err != nil {
		return err
	}
	if err := clearHandoffScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(rec.ID)}, task).Err(); err != nil {
		return fmt.Errorf("jobs: clear handoff of %s: %w", rec.ID, err)
	}
	return nil
}

// enqueueTask puts task on the queue for rec, once: a task id Asynq
// already holds counts as done, so the submitter and the reconciler may
// both try.
func (l *lifecycle) enqueueTask(ctx context.Context, rec *record, task string, maxRetry int) error {
	timeout := rec.Timeout
	if t, ok := l.reg.Lookup(rec.Type); ok && timeout <= 0 {
		timeout = t.Timeout
	}
	if timeout <= 0 {
		timeout = time.Hour
	}
	opts := []asynq.Option{asynq.TaskID(task), asynq.Queue(rec.Queue), asynq.MaxRetry(max(maxRetry, 0)),
		asynq.Timeout(timeout), asynq.Retention(l.cfg.Retention)}
	if task == rec.ID && rec.RunAt.After(time.Now()) {
		// The first task of a scheduled job waits in Asynq's scheduled set
		// (later tasks replace a lost run: they run at once).
		opts = append(opts, asynq.ProcessAt(rec.RunAt))
	}
	_, err := l.client.EnqueueContext(ctx, asynq.NewTask(rec.Type, rec.Params, opts...))
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return err
	}
	return nil
}

// submitted finishes the submit of rec, whose first task is enqueued, in
// one round trip: it clears the record's handoff mark, runs also's
// commands (may be nil) and publishes post, the owner's "submitted"
// event. A mark left (its clear failed) is cleared by the reconciler: the
// job is queued either way, and a lost event only means the owner's
// other pages show the job on their next load; both are logged.
func (l *lifecycle) submitted(ctx context.Context, rec *record, also func(redis.Pipeliner), post progress.Post) {
	keys := []string{l.st.jobKey(rec.ID)}
	var clear *redis.Cmd
	_, errs := l.log.PublishWith(ctx, func(p redis.Pipeliner) {
		clear = clearHandoffScript.EvalSha(ctx, p, keys, rec.Task)
		if also != nil {
			also(p)
		}
	}, post)
	if progress.IsNoScript(clear.Err()) { // Redis restarted or its scripts were flushed
		clear = clearHandoffScript.Run(ctx, l.st.rdb, keys, rec.Task)
	}
	if err := clear.Err(); err != nil {
		l.cfg.Logger.Warn("clearing a submitted job's handoff mark failed; the reconciler clears it", "job", rec.ID, "err", err)
	}
	if errs[0] != nil {
		l.cfg.Logger.Warn("job submitted, but its event on the owner's group was lost", "job", rec.ID, "group", post.Group, "err", errs[0])
	}
}

var clearHandoffScript = progress.NewScript(`
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
// outcome, the attempt, whether the previous run of the same task died
// holding the job without a word (its retry was never announced), and the
// record as the run starts (saving the run a round trip to read it).
var startScript = progress.NewScript(redisNow + startFunc + `return start()`)

// startFunc is startScript's step as a Lua function (KEYS[1], ARGV[1] to
// ARGV[3]), shared with startGuard.
const startFunc = `
local function start()
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
  redis.call('HSETNX', KEYS[1], 'started_at', now)
  return {'ok', n, tonumber(f[5] or '0'), lost, reopened, now, redis.call('HGETALL', KEYS[1])}
end
`

// startGuard is startScript that, when it claims the job, also enters it
// in the running index (KEYS[2], by the claim's time) and a reopened job
// in the open index (KEYS[3], score ARGV[4]), and appends the run's
// events to the job's log (see progress.AppendGuard): the retry of a run
// that died unannounced, then "active", named ARGV[5], their payloads
// from startPayloads (ARGV[6] to ARGV[12]) with the attempts filled in.
// A claim and its events are then one step and one round trip. Used off
// a Redis Cluster only (lifecycle.fused).
var startGuard = progress.NewAppendGuard(redisNow+startFunc+`
local function guard()
  local r = start()
  if r[1] ~= 'ok' then return r, nil end
  redis.call('ZADD', KEYS[2], r[6], ARGV[3])
  if r[5] == 1 then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3]) end
  local posts = {}
  if r[4] == 1 then
    posts[1] = ARGV[5]
    if r[3] == 0 then posts[2] = ARGV[8] else posts[2] = ARGV[6] .. r[3] .. ARGV[7] end
  end
  posts[#posts+1] = ARGV[5]
  if r[5] == 1 then
    posts[#posts+1] = ARGV[11] .. r[2] .. ARGV[12]
  else
    posts[#posts+1] = ARGV[9] .. r[2] .. ARGV[10]
  end
  return r, posts
end
`, 3, 12)

// startPayloads are the payloads of a start's events as startGuard takes
// them: the JSON encoding of each stateEvent, split where its attempt
// goes (so the script writes what json.Marshal would): the retry of a
// run that died unannounced (and the same with no attempt, which
// omitempty leaves out), "active", and "active" of a run from the archive.
var startPayloads = func() []any {
	retryPre, retrySuf := attemptTemplate(stateEvent{State: StateRetry, Error: reasonWorkerLost})
	retryNone, _ := json.Marshal(stateEvent{State: StateRetry, Error: reasonWorkerLost})
	activePre, activeSuf := attemptTemplate(stateEvent{State: StateActive})
	againPre, againSuf := attemptTemplate(stateEvent{State: StateActive, Message: msgRunAgain})
	return []any{retryPre, retrySuf, string(retryNone), activePre, activeSuf, againPre, againSuf}
}()

// attemptTemplate returns ev's JSON encoding, with an attempt, split
// where the attempt's number goes.
func attemptTemplate(ev stateEvent) (string, string) {
	const mark = 1234567891
	ev.Attempt = mark
	b, err := json.Marshal(ev)
	if err != nil {
		panic(err)
	}
	pre, suf, ok := strings.Cut(string(b), strconv.Itoa(mark))
	if !ok || strings.Contains(suf, strconv.Itoa(mark)) {
		panic("jobs: attempt template of " + string(b))
	}
	return pre, suf
}

// start claims the job for a run of task (whose Asynq retries left are
// left) and publishes "state active", preceded by the retry of a run that
// died unannounced. For startRun it returns the attempt.
func (l *lifecycle) start(ctx context.Context, task string, left int) (*attempt, startOutcome, error) {
	id := jobOfTask(task)
	if l.fused {
		return l.startFused(ctx, task, left)
	}
	res, err := startScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(id)}, task, left, id).Slice()
	if err != nil {
		return nil, 0, fmt.Errorf("jobs: start %s: %w", task, err)
	}
	a, outcome, err := l.started(task, res)
	if a == nil || err != nil {
		return a, outcome, err
	}
	n, prev, lost, reopened, now := a.n, int(toInt(res[2])), toInt(res[3]) == 1, toInt(res[4]) == 1, toInt(res[5])
	var posts []progress.Post
	if lost {
		posts = append(posts, progress.Post{Group: Group(id), Name: wire.EventState, Data: stateEvent{State: StateRetry, Attempt: prev, Error: reasonWorkerLost}})
	}
	ev := stateEvent{State: StateActive, Attempt: n}
	if reopened {
		ev.Message = msgRunAgain
	}
	posts = append(posts, progress.Post{Group: Group(id), Name: wire.EventState, Data: ev})
	// The claim's entry in the running index (and a reopened job's in the
	// open index) and the events in one round trip; a failed index write
	// is repaired by the next heartbeat (running) or the reconciler.
	_, errs := l.log.PublishWith(ctx, func(p redis.Pipeliner) {
		p.ZAdd(ctx, l.st.runningKey(), redis.Z{Score: float64(now), Member: id})
		if reopened {
			p.ZAdd(ctx, l.st.openKey(), redis.Z{Score: float64(time.Now().UnixMicro()), Member: id})
		}
	}, posts...)
	for i, err := range errs {
		if err != nil {
			l.cfg.Logger.Error("lifecycle event lost", "job", id, "event", posts[i].Name, "err", err)
		}
	}
	return a, startRun, nil
}

// startFused is start in one script (startGuard): the claim, its index
// entries and its events.
func (l *lifecycle) startFused(ctx context.Context, task string, left int) (*attempt, startOutcome, error) {
	id := jobOfTask(task)
	args := append([]any{task, left, id, time.Now().UnixMicro(), wire.EventState}, startPayloads...)
	reply, _, err := l.log.RunGuard(ctx, startGuard, []string{l.st.jobKey(id), l.st.runningKey(), l.st.openKey()}, args, Group(id))
	if err != nil {
		return nil, 0, fmt.Errorf("jobs: start %s: %w", task, err)
	}
	res, _ := reply.([]any)
	return l.started(task, res)
}

// started reads startScript's reply res: the outcome, and for startRun the
// attempt (counted as started for the Observer).
func (l *lifecycle) started(task string, res []any) (*attempt, startOutcome, error) {
	if len(res) == 0 {
		return nil, 0, fmt.Errorf("jobs: start %s: unexpected reply %v", task, res)
	}
	switch res[0] {
	case "gone":
		return nil, startGone, nil
	case "stale", "final":
		return nil, startDrop, nil
	case "canceled":
		return nil, startCanceled, nil
	}
	if len(res) != 7 {
		return nil, 0, fmt.Errorf("jobs: start %s: unexpected reply %v", task, res)
	}
	id := jobOfTask(task)
	fields, err := fieldMap(res[6])
	if err != nil {
		return nil, 0, fmt.Errorf("jobs: start %s: %w", task, err)
	}
	rec := decodeRecord(id, fields)
	n := int(toInt(res[1]))
	if l.cfg.Observer != nil && n == 1 {
		// The queue wait of a scheduled job starts at its run_at: its
		// delay was asked for, not waited in a queue.
		l.cfg.Observer.JobStarted(rec.Type, time.Since(latest(rec.CreatedAt, rec.RunAt)))
	}
	return &attempt{rec: *rec, task: task, n: n, started: time.Now()}, startRun, nil
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
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

var beatScript = progress.NewScript(redisNow + `
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone', now} end
local f = redis.call('HMGET', KEYS[1], 'task', 'attempt', 'final', 'canceled', 'hb')
if (f[1] or ARGV[3]) ~= ARGV[1] or f[2] ~= ARGV[2] or f[3] or not f[5] then return {'stale', now} end
redis.call('HSET', KEYS[1], 'hb', now)
if f[4] == '1' then return {'canceled', now} end
return {'ok', now}
`)

// beat refreshes a run's claim on its job, and restores the job's record
// (and tells watchers) when Redis lost it while the job ran. It returns
// Redis's time of the beat, for claimRunning: the running index is another
// key (slot), so the caller refreshes it for all its runs in one call.
func (l *lifecycle) beat(ctx context.Context, a *attempt) (beatOutcome, int64, error) {
	res, err := beatScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(a.job())}, a.task, a.n, a.job()).Slice()
	if err != nil {
		return beatOK, 0, fmt.Errorf("jobs: heartbeat of %s: %w", a.job(), err)
	}
	now := toInt(res[1])
	switch res[0] {
	case "stale":
		return beatStale, now, nil
	case "gone":
		created, err := l.restore(ctx, "", a, StateActive, nil, "")
		if err != nil {
			return beatGone, now, err
		}
		if created {
			l.publish(ctx, a.job(), wire.EventState, stateEvent{State: StateActive, Attempt: a.n, Message: msgRestored})
		}
	case "canceled":
		return beatCanceled, now, nil
	}
	return beatOK, now, nil
}

// claimRunning records in the running index, in one call, the beats of
// jobs that beat confirmed (each a redis.Z of beat's time and job id).
func (l *lifecycle) claimRunning(ctx context.Context, beats []redis.Z) error {
	if err := l.st.rdb.ZAdd(ctx, l.st.runningKey(), beats...).Err(); err != nil {
		return fmt.Errorf("jobs: heartbeat of %d running jobs: %w", len(beats), err)
	}
	return nil
}

// restoreScript writes a record that Redis lost, from what the run knows.
var restoreScript = progress.NewScript(redisNow + `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'type', ARGV[2], 'queue', ARGV[3], 'params', ARGV[4],
  'created_at', ARGV[5], 'updated_at', now, 'state', ARGV[6], 'attempt', ARGV[7], 'task', ARGV[8], 'gen', ARGV[13])
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[1], 'final', ARGV[6], 'op', ARGV[14], 'owed', ARGV[14], 'owed_at', now, 'owed_err', ARGV[11])
else
  redis.call('HSET', KEYS[1], 'hb', now)
end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[10]) end
if ARGV[11] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[11]) end
redis.call('PEXPIRE', KEYS[1], ARGV[12])
return 1
`)

// restore recreates a run's job record after Redis lost it (a restart
// without persistence), in state, with the owner's index entry, so the job
// keeps its owner and GET /api/jobs/ID agrees with the events published in
// the log's new epoch. It reports false when the record exists already
// (someone else restored it). A final restore records op and the debt of
// its events, as a final transition does.
func (l *lifecycle) restore(ctx context.Context, op string, a *attempt, state string, result json.RawMessage, errMsg string) (bool, error) {
	final := "0"
	if Terminal(state) {
		final = "1"
	}
	r := a.rec
	n, err := restoreScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(r.ID)},
		r.Owner, r.Type, r.Queue, string(r.Params), r.CreatedAt.UnixMilli(), state, a.n, a.task, final,
		string(result), errMsg, l.cfg.Retention.Milliseconds(), genOfTask(a.task), op).Int()
	if err != nil {
		return false, fmt.Errorf("jobs: restore %s: %w", r.ID, err)
	}
	if n != 1 {
		return false, nil
	}
	_, err = l.st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.ZAdd(ctx, l.st.indexKey(r.Owner), redis.Z{Score: float64(r.CreatedAt.UnixMicro()), Member: r.ID})
		p.Expire(ctx, l.st.indexKey(r.Owner), l.cfg.Retention)
		// A final one too: it owes its events until they are published.
		p.ZAdd(ctx, l.st.openKey(), redis.Z{Score: float64(time.Now().UnixMicro()), Member: r.ID})
		return nil
	})
	if err != nil {
		return true, fmt.Errorf("jobs: restore %s: %w", r.ID, err)
	}
	l.cfg.Logger.Warn("job record was lost (Redis restarted without persistence?) and restored", "job", r.ID, "state", state)
	return true, nil
}

// Results of transitionScript.
const (
	trGone    = -1 // the record is gone
	trMovedOn = 0  // the job moved on (another run, or over)
	trDone    = 1  // this call made the change
	trDoneBy  = 2  // an earlier call with the same op made it (its reply was lost)
)

// transitionScript changes the state of the job if task (and, when given,
// attempt) is still its current run and it is not final. ARGV: task,
// attempt or "", job id, state, final flag, error, result, release the
// run's claim, op id. The op id is stored with the change, and a final
// change also records the debt of its events (owed, owed_at, owed_err)
// until announceEnd clears it. It returns one of the tr constants and the
// job's owner as of the change (a guest's jobs move to the account it
// signs in to), whom the end's notification is for.
var transitionScript = progress.NewScript(redisNow + `
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, ''} end
local f = redis.call('HMGET', KEYS[1], 'task', 'attempt', 'final', 'op', 'owner')
local owner = f[5] or ''
if f[4] and f[4] == ARGV[9] then return {2, owner} end
if (f[1] or ARGV[3]) ~= ARGV[1] then return {0, owner} end
if ARGV[2] ~= '' and f[2] ~= ARGV[2] then return {0, owner} end
if f[3] then return {0, owner} end
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'updated_at', now, 'op', ARGV[9])
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'final', ARGV[4], 'owed', ARGV[9], 'owed_at', now, 'owed_err', ARGV[6]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[7]) end
if ARGV[8] == '1' then redis.call('HDEL', KEYS[1], 'hb') end
return {1, owner}
`)

func (l *lifecycle) transition(ctx context.Context, op, id, task, attemptN, state string, final bool, errMsg string, result json.RawMessage, release bool) (int, error) {
	n, _, err := l.transitionOwner(ctx, op, id, task, attemptN, state, final, errMsg, result, release)
	return n, err
}

// transitionOwner is transition that also returns the job's owner as of
// the change ("" when the record is gone).
func (l *lifecycle) transitionOwner(ctx context.Context, op, id, task, attemptN, state string, final bool, errMsg string, result json.RawMessage, release bool) (int, string, error) {
	res, err := transitionScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(id)},
		task, attemptN, id, state, flag(final), errMsg, string(result), flag(release), op).Slice()
	return transitionReply(id, state, res, err)
}

// transitionReply reads transitionScript's reply: the tr constant and the
// owner.
func transitionReply(id, state string, res []any, err error) (int, string, error) {
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("unexpected reply %v", res)
	}
	if err != nil {
		return 0, "", fmt.Errorf("jobs: %s %s: %w", state, id, err)
	}
	owner, _ := res[1].(string)
	return int(toInt(res[0])), owner, nil
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// newOp returns the id of one transition: a caller keeps it across its
// retries of that transition, so a retry is recognized as the same one.
func newOp() string { return newJobID() }

// persist calls f until it succeeds, waiting EndRetryDelay (doubling up to
// EndRetryMaxDelay) between calls, for at most EndRetryFor or until stop
// is closed: a run's end must outlast a Redis that is paused, failing
// over or slow, because only the run knows its result. It returns f's
// last error.
func (l *lifecycle) persist(ctx context.Context, stop <-chan struct{}, what, id string, f func() error) error {
	deadline := time.Now().Add(l.cfg.EndRetryFor)
	delay := l.cfg.EndRetryDelay
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().Add(delay).After(deadline) {
			return err
		}
		l.cfg.Logger.Warn(what+" failed; retrying", "job", id, "in", delay, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			return err
		case <-ctx.Done():
			t.Stop()
			return err
		}
		delay = min(2*delay, l.cfg.EndRetryMaxDelay)
	}
}

// runTransition makes a's transition op, retrying while its outcome is
// unknown (see persist). It returns a tr constant; trDoneBy counts as
// done.
// It also returns the job's owner as of the change.
//
// lead, when not nil, is the run's last progress report (held by its
// reporter, see progress.ReporterConfig.HoldFinal): the first try appends
// it to the job's log and then makes the transition, in one round trip
// (one less per job), in that order, so that a reader who finds the
// record in its new state finds the report in the log too, as when the
// reporter publishes it itself. The report goes once: a retry makes the
// transition alone (a report lost with a failed round trip is logged, as
// the reporter does).
func (l *lifecycle) runTransition(ctx context.Context, op string, a *attempt, state string, final bool, errMsg string, result json.RawMessage, release bool, lead ...*progress.Progress) (int, string, error) {
	var n int
	var owner string
	var first bool
	if len(lead) > 0 && lead[0] != nil {
		n, owner, first = l.transitionAfterReport(ctx, op, a, state, final, errMsg, result, release, lead[0])
	}
	var err error
	if !first {
		err = l.persist(ctx, a.stop, "recording "+state, a.job(), func() error {
			var err error
			n, owner, err = l.transitionOwner(ctx, op, a.job(), a.task, strconv.Itoa(a.n), state, final, errMsg, result, release)
			return err
		})
	}
	if n == trDoneBy {
		n = trDone
	}
	return n, owner, err
}

// transitionAfterReport appends report to a's job log and then makes a's
// transition op, in one pipeline (see runTransition). It reports whether
// the transition got an answer (n and owner); false: its outcome is
// unknown and the caller makes it again, without the report.
func (l *lifecycle) transitionAfterReport(ctx context.Context, op string, a *attempt, state string, final bool, errMsg string, result json.RawMessage, release bool, report *progress.Progress) (int, string, bool) {
	keys := []string{l.st.jobKey(a.job())}
	args := []any{a.task, strconv.Itoa(a.n), a.job(), state, flag(final), errMsg, string(result), flag(release), op}
	var cmd *redis.Cmd
	_, errs := l.log.PublishThen(ctx, func(p redis.Pipeliner) {
		cmd = transitionScript.EvalSha(ctx, p, keys, args...)
	}, progress.Post{Group: Group(a.job()), Name: wire.EventProgress, Data: report})
	if errs[0] != nil {
		l.cfg.Logger.Warn("progress report lost", "group", Group(a.job()), "err", errs[0])
	}
	res, err := cmd.Slice()
	if err != nil {
		// NOSCRIPT (Redis restarted: the report went again after this,
		// its script loaded) or an unknown outcome: the caller
		// makes the transition again (a transition is idempotent by op).
		return 0, "", false
	}
	n, owner, err := transitionReply(a.job(), state, res, nil)
	return n, owner, err == nil
}

// publishOnce publishes the events of transition op, retrying for a run
// (stop not nil) while Redis is unavailable. It reports whether this call
// appended them (false: an earlier call with op did).
func (l *lifecycle) publishOnce(ctx context.Context, stop <-chan struct{}, op, id string, events ...progress.Draft) (bool, error) {
	var fresh bool
	call := func() error {
		var err error
		_, fresh, err = l.log.PublishOnce(ctx, Group(id), op, events...)
		return err
	}
	if stop == nil {
		return fresh, call()
	}
	return fresh, l.persist(ctx, stop, "publishing lifecycle events", id, call)
}

// retry records that a's run failed and Asynq will run the task again,
// and tells watchers. It reports false when a was no longer current.
func (l *lifecycle) retry(ctx context.Context, a *attempt, errMsg string) bool {
	op := newOp()
	n, _, err := l.runTransition(ctx, op, a, StateRetry, false, errMsg, nil, true)
	if err != nil {
		// Unknown outcome: if it was applied, the next run's start or the
		// lost-job sweep moves the job on; either way Asynq retries.
		l.cfg.Logger.Error("recording retry failed", "job", a.job(), "err", err)
		return true
	}
	if n != trDone {
		return false
	}
	_ = l.st.rdb.ZRem(ctx, l.st.runningKey(), a.job()).Err()
	if _, err := l.publishOnce(ctx, a.stop, op, a.job(), progress.Draft{Name: wire.EventState, Data: stateEvent{State: StateRetry, Attempt: a.n, Error: errMsg}}); err != nil {
		l.cfg.Logger.Error("lifecycle event lost", "job", a.job(), "event", "state retry", "err", err)
	}
	return true
}

// handBack records that a's worker is shutting down and Asynq hands the
// task back to the queue. The run keeps its claim (and its heartbeat)
// until Asynq has done so, so a worker killed while draining is still
// noticed as lost.
func (l *lifecycle) handBack(ctx context.Context, a *attempt) {
	op := newOp()
	n, _, err := l.runTransition(ctx, op, a, StatePending, false, "", nil, false)
	if err != nil {
		l.cfg.Logger.Error("recording hand-back failed", "job", a.job(), "err", err)
	}
	if n == trDone {
		if _, err := l.publishOnce(ctx, a.stop, op, a.job(), progress.Draft{Name: wire.EventState, Data: stateEvent{State: StatePending, Attempt: a.n, Message: msgHandBack}}); err != nil {
			l.cfg.Logger.Error("lifecycle event lost", "job", a.job(), "event", "state pending", "err", err)
		}
	}
}

var releaseScript = progress.NewScript(`
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
// new epoch). It reports false only when a was no longer current (its
// results are dropped); when Redis stayed unavailable for EndRetryFor it
// reports true, and the outcome is settled by the reconciler (a recorded
// end's debt) or the lost-job sweep (an unrecorded one).
func (l *lifecycle) finishRun(ctx context.Context, a *attempt, state string, result json.RawMessage, errMsg string) bool {
	return l.finishRunOp(ctx, newOp(), a, state, result, errMsg)
}

// finishRunOp is finishRun as transition op: calling it again with the
// same op (the reply of the first call was lost) publishes the end once.
func (l *lifecycle) finishRunOp(ctx context.Context, op string, a *attempt, state string, result json.RawMessage, errMsg string) bool {
	return l.finishRunHow(ctx, op, a, state, result, errMsg) != finishStale
}

// finishOutcome is how a run's end went (finishRunHow).
type finishOutcome int

const (
	finishRecorded finishOutcome = iota // the end is recorded: announced, or owed to the reconciler
	finishStale                         // a was no longer current: its results are dropped
	finishUnknown                       // Redis stayed unavailable for EndRetryFor: the reconciler or the lost-job sweep settles it
)

// finishRunHow is finishRunOp that tells a recorded end from one whose
// outcome is unknown, for the run to leave its result with Asynq in that
// case only (the lost-job sweep and the reconciler end a job whose task
// Asynq completed with Asynq's copy of the result).
//
// lead, when not nil, is the run's last progress report, appended just
// before its end is recorded, in the same round trip (see runTransition).
func (l *lifecycle) finishRunHow(ctx context.Context, op string, a *attempt, state string, result json.RawMessage, errMsg string, lead ...*progress.Progress) finishOutcome {
	n, owner, err := l.runTransition(ctx, op, a, state, true, errMsg, result, true, lead...)
	if err != nil {
		l.cfg.Logger.Error("recording the end of a job failed; the reconciler or the lost-job sweep settles it", "job", a.job(), "state", state, "err", err)
		return finishUnknown
	}
	if n == trGone {
		created, err := l.restore(ctx, op, a, state, result, errMsg)
		if err != nil {
			l.cfg.Logger.Error("restoring a lost job record failed", "job", a.job(), "err", err)
		}
		if !created { // restored meanwhile (by our heartbeat, or our own reply was lost): end it as usual
			n, owner, err = l.runTransition(ctx, op, a, state, true, errMsg, result, true)
			if err != nil {
				l.cfg.Logger.Error("recording the end of a job failed", "job", a.job(), "state", state, "err", err)
				return finishUnknown
			}
		} else {
			n, owner = trDone, a.rec.Owner // restored with the owner the run knows
		}
	}
	if n != trDone {
		return finishStale
	}
	// Counted before the events go out: a watcher that saw the end finds
	// it in the metrics of this process.
	if l.cfg.Observer != nil {
		l.cfg.Observer.JobFinished(a.rec.Type, state, time.Since(a.started), true)
	}
	l.announceEnd(ctx, a.stop, op, a.job(), state, result, errMsg, &a.rec, owner, a.ride)
	return finishRecorded
}

// end ends the job from outside a run (the submitter, a cancel, the
// reconciler), if task is still its current task and attemptN (when not
// "") its current attempt. One try: when its outcome is unknown, the
// reconciler settles it (it pays a recorded end's debt, or ends the job
// again).
func (l *lifecycle) end(ctx context.Context, id, task, attemptN, state string, result json.RawMessage, errMsg string) bool {
	op := newOp()
	n, owner, err := l.transitionOwner(ctx, op, id, task, attemptN, state, true, errMsg, result, true)
	if err != nil {
		l.cfg.Logger.Error("recording the end of a job failed; the reconciler settles it", "job", id, "state", state, "err", err)
		return false
	}
	if n != trDone && n != trDoneBy {
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
	l.announceEnd(ctx, nil, op, id, state, result, errMsg, nil, owner, nil)
	return true
}

// clearDebtScript clears a recorded end's debt once its events are in the
// log (ARGV: the op that owes them), and returns the job's owner as it is
// now (a guest's jobs move to the account it signs in to), or nil when
// the record is gone.
var clearDebtScript = progress.NewScript(`
if redis.call('HGET', KEYS[1], 'owed') == ARGV[1] then redis.call('HDEL', KEYS[1], 'owed', 'owed_at', 'owed_err') end
return redis.call('HGET', KEYS[1], 'owner')
`)

// announceEnd publishes the recorded end op, once however often it is
// called: "state", then "result" or "failed" as the job's last event, in
// one atomic append; then clears the record's debt, takes the job out of
// the open and running indexes and notifies the owner (when this call
// appended the events). Until the debt is cleared the job stays open, so
// the reconciler pays it if this fails (Redis unavailable for a run's
// EndRetryFor, or stop nil: one try).
//
// rec is the job's record when the caller has it (nil: it is read); only
// what never changes in a job's life is taken from it (its type and its
// unique lock). owner is the owner to notify as the end's transition
// returned it, whose notification then goes in the round trip that
// clears the debt; "" (a caller without a transition of its own): the
// owner is read when the debt is cleared and notified after.
//
// Off a Redis Cluster (fused) all of it is one round trip (endStep), the
// lock's release included. ride, when not nil, is handed that end instead
// of it being sent now, to go with a later round trip (a run's: Asynq's
// script on its task, see endGate); whoever takes it settles it.
func (l *lifecycle) announceEnd(ctx context.Context, stop <-chan struct{}, op, id string, state string, result json.RawMessage, errMsg string, rec *record, owner string, ride func(*endStep)) {
	if rec == nil {
		var err error
		if rec, err = l.st.get(ctx, id); err != nil && !errors.Is(err, errNoRecord) {
			l.cfg.Logger.Warn("reading an ended job's record failed: no notification, its unique lock (if any) expires by itself", "job", id, "err", err)
		}
	}
	if l.fused {
		e, err := l.newEndStep(ctx, stop, op, id, state, result, errMsg, rec, owner)
		switch {
		case err != nil:
			l.cfg.Logger.Error("publishing a job's end failed; the reconciler publishes it", "job", id, "state", state, "err", err)
		case ride != nil:
			ride(e)
		default:
			e.run()
		}
		return
	}
	l.announceEndSteps(ctx, stop, op, id, state, result, errMsg, rec, owner)
}

// announceEndSteps is announceEnd on a Redis Cluster, in three round trips
// (the unique lock's release, the events, then the debt's clear, the
// indexes and the notification), and off one for a job whose record is
// gone (see endStep). rec is the job's record or nil.
func (l *lifecycle) announceEndSteps(ctx context.Context, stop <-chan struct{}, op, id string, state string, result json.RawMessage, errMsg string, rec *record, owner string) {
	// A unique type's lock ends with the job (its end is recorded), before
	// the end goes out: a watcher that sees it may submit the same job
	// again at once. Every announcer releases it, and only a lock that is
	// still this job's.
	if rec != nil && rec.Unique != "" {
		if err := releaseLockScript.Run(ctx, l.st.rdb, []string{rec.Unique}, id).Err(); err != nil {
			l.cfg.Logger.Warn("releasing a unique job's lock failed; it expires by itself", "job", id, "err", err)
		}
	}
	fresh, err := l.publishOnce(ctx, stop, op, id, endEvents(state, result, errMsg)...)
	if err != nil {
		l.cfg.Logger.Error("publishing a job's end failed; the reconciler publishes it", "job", id, "state", state, "err", err)
		return
	}
	// One round trip clears the debt and takes the job out of the open and
	// running indexes. The events are in the log already, so the indexes
	// may be left even if the script fails: the open index only serves to
	// find ends whose events were not published.
	// The notification goes once, with the events that were appended
	// now (fresh): the reconciler's second try appends nothing.
	keys := []string{l.st.jobKey(id)}
	var debt *redis.Cmd
	clearDebt := func(p redis.Pipeliner) {
		debt = clearDebtScript.EvalSha(ctx, p, keys, op)
		p.ZRem(ctx, l.st.openKey(), id)
		p.ZRem(ctx, l.st.runningKey(), id)
	}
	notifyNow := fresh && rec != nil && owner != ""
	if notifyNow {
		_, errs := l.log.PublishWith(ctx, clearDebt, l.notification(id, owner, rec.Type, state, errMsg))
		if errs[0] != nil {
			l.cfg.Logger.Warn("job notification lost", "job", id, "owner", owner, "err", errs[0])
		}
	} else {
		_, _ = l.st.rdb.Pipelined(ctx, func(p redis.Pipeliner) error { clearDebt(p); return nil })
	}
	if progress.IsNoScript(debt.Err()) { // Redis restarted or its scripts were flushed
		debt = clearDebtScript.Run(ctx, l.st.rdb, keys, op)
	}
	now, err := debt.Text()
	if err != nil && !errors.Is(err, redis.Nil) {
		// Published: the reconciler's second try appends nothing.
		l.cfg.Logger.Warn("clearing a job's event debt failed", "job", id, "err", err)
		return
	}
	if !notifyNow && fresh && rec != nil && now != "" {
		l.notifyOwner(ctx, id, now, rec.Type, state, errMsg)
	}
}

// releaseLockScript deletes a lock (a unique type's, or an
// Idempotency-Key's reservation) if it still names ARGV[1] as the first
// word of its value: a lock that expired and was taken by another job is
// left alone.
var releaseLockScript = progress.NewScript(releaseLockFunc + `return release_lock(KEYS[1], ARGV[1])`)

// releaseLockFunc is releaseLockScript's step as a Lua function
// release_lock(key, id), shared with endUniqueGuard.
const releaseLockFunc = `
local function release_lock(key, id)
  local v = redis.call('GET', key)
  if v and (v == id or string.sub(v, 1, string.len(id) + 1) == id .. ' ') then
    return redis.call('DEL', key)
  end
  return 0
end
`

// payDebt publishes the end of a final job whose events were not
// confirmed published (its announcer failed or died), once the debt is
// older than DebtAge by the server's clock, so a live announcer usually
// finishes first (and if not, PublishOnce keeps it to one end). It
// reports whether the job stays open (the debt is not paid yet).
func (l *lifecycle) payDebt(ctx context.Context, rec *record) (bool, error) {
	now, err := l.st.rdb.Time(ctx).Result()
	if err != nil {
		return true, fmt.Errorf("jobs: read the server's clock: %w", err)
	}
	if now.Sub(time.UnixMilli(rec.OwedAt)) < l.cfg.DebtAge {
		return true, nil
	}
	l.cfg.Logger.Warn("publishing the end of a job whose events were owed", "job", rec.ID, "state", rec.Final)
	l.announceEnd(ctx, nil, rec.Owed, rec.ID, rec.Final, rec.Result, rec.OwedErr, rec, "", nil)
	after, err := l.st.get(ctx, rec.ID)
	if err != nil {
		return true, err
	}
	return after.Owed != "", nil
}

// stateLost tells the watchers of a job whose record is gone, and can not
// be restored, that it ended: nothing will run it again.
func (l *lifecycle) stateLost(ctx context.Context, id string) {
	l.publish(ctx, id, wire.EventState, stateEvent{State: StateFailed, Error: reasonStateLost})
	l.publish(ctx, id, wire.EventFailed, map[string]string{"error": reasonStateLost})
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
	// Only a waiting task is deleted. A run that ended meanwhile (the
	// worker saw the signal first) has left its task archived or
	// completed, and that record stays: Asynq's DeleteTask would take it
	// too. A task that starts after this look finds the flag and is
	// dropped by its worker, so the delete below may find nothing.
	info, err := l.insp.GetTaskInfo(rec.Queue, rec.Task)
	switch {
	case err == nil && info.State == asynq.TaskStateActive:
		// Its worker saw the signal (or sees the flag when it beats or
		// polls) and ends the job itself.
		return true, nil
	case err == nil && !waiting(info.State):
		// Over in Asynq: ended by its run, or archived by an operator
		// before the reconciler noticed. The reconciler's rule ends the
		// job as the task's state says (archived and canceled: canceled).
		_, err := l.reconcile(context.WithoutCancel(ctx), id)
		return true, err
	case err == nil:
		err = l.insp.DeleteTask(rec.Queue, rec.Task)
	}
	switch {
	case err == nil, errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
		// Not queued any more (or never): nobody else will end it, so the
		// end must be recorded even if the caller has gone away.
		l.end(context.WithoutCancel(ctx), id, rec.Task, "", StateCanceled, nil, "")
	default:
		// Started between the look and the delete, or Asynq could not be
		// asked: the flag is set, and the worker (or the reconciler) ends
		// the job.
	}
	return true, nil
}

// waiting reports whether a task in state s has not started: the states a
// cancel deletes.
func waiting(s asynq.TaskState) bool {
	switch s {
	case asynq.TaskStatePending, asynq.TaskStateScheduled, asynq.TaskStateRetry, asynq.TaskStateAggregating:
		return true
	}
	return false
}

var markCanceledScript = progress.NewScript(`
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
// told it is stale. A final end records op (ARGV[6]) and the debt of its
// events, as a final transition does.
var lostScript = progress.NewScript(redisNow + `
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
local f = redis.call('HMGET', KEYS[1], 'task', 'attempt', 'final', 'hb', 'left', 'gen', 'canceled')
if (f[1] or ARGV[1]) ~= ARGV[3] or f[2] ~= ARGV[4] or f[3] or not f[4] then return {'skip'} end
if tonumber(f[4]) > now - tonumber(ARGV[2]) then return {'alive'} end
redis.call('HDEL', KEYS[1], 'hb')
if f[7] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'canceled', 'final', 'canceled', 'updated_at', now,
    'op', ARGV[6], 'owed', ARGV[6], 'owed_at', now, 'owed_err', '')
  return {'canceled'}
end
local left = tonumber(f[5] or '0')
if left <= 0 then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'final', 'failed', 'error', ARGV[5], 'updated_at', now,
    'op', ARGV[6], 'owed', ARGV[6], 'owed_at', now, 'owed_err', ARGV[5])
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
	op := newOp()
	res, err := lostScript.Run(ctx, l.st.rdb, []string{l.st.jobKey(id)},
		id, lostAfter.Milliseconds(), rec.Task, rec.Attempt, reasonWorkerLost, op).Slice()
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
		l.announceEnd(ctx, nil, op, id, StateCanceled, nil, "", rec, "", nil)
		return nil
	case "failed":
		l.cfg.Logger.Warn("worker lost on the job's last attempt", "job", id, "attempt", rec.Attempt)
		l.announceEnd(ctx, nil, op, id, StateFailed, nil, reasonWorkerLost, rec, "", nil)
		return nil
	}
	task, _ := res[1].(string)
	left := int(toInt(res[2]))
	l.cfg.Logger.Warn("worker lost; the job runs again", "job", id, "attempt", rec.Attempt, "task", task)
	_ = l.st.rdb.ZRem(ctx, l.st.runningKey(), id).Err()
	l.publish(ctx, id, wire.EventState, stateEvent{State: StateRetry, Attempt: rec.Attempt, Error: reasonWorkerLost})
	if err := l.enqueue(ctx, rec, task, left); err != nil {
		return fmt.Errorf("jobs: enqueue the next run of %s (the reconciler retries): %w", id, err)
	}
	return nil
}

// reconcile brings job id's record in line with Asynq when something
// other than our own code moved its task: an operator's delete (ends
// canceled), archive (failed), a run whose end was not recorded
// (completed), or an enqueue cut short (enqueued now). It also publishes
// the end of a final job that still owes its events (see payDebt). A job a run holds
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
		if rec.Owed != "" { // its end's events may not have been published
			return l.payDebt(ctx, rec)
		}
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
func (l *lifecycle) notifyOwner(ctx context.Context, id, owner, typ, state, errMsg string) {
	post := l.notification(id, owner, typ, state, errMsg)
	if _, err := progress.Notify(ctx, l.log, post.Group, post.Data.(progress.Notification)); err != nil {
		l.cfg.Logger.Warn("job notification lost", "job", id, "owner", owner, "err", err)
	}
}

// notification is the event that tells a job's owner it has finished.
func (l *lifecycle) notification(id, owner, typ, state, errMsg string) progress.Post {
	n := progress.Notification{
		Title: fmt.Sprintf("Job %s %s", typ, state),
		Body:  fmt.Sprintf("%s job %s has %s.", typ, id, state),
		Link:  fmt.Sprintf(l.cfg.JobLink, id),
	}
	if errMsg != "" {
		n.Body += " " + errMsg
	}
	return progress.Post{Group: progress.UserGroup(owner), Name: wire.EventNotification, Data: n}
}
