package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
	"taskstream/wire"
)

// Admission is a check a submit must pass in Redis before anything of
// its job is written: the caller's policy (the web layer's per-user
// submit limit), which jobs runs without knowing it. Off a Redis Cluster
// it runs in the very script that records the job and appends its first
// event, so it costs no round trip of its own and a refused submit
// writes nothing of the job; on a Cluster (the check's keys and the job's
// live in different slots) it is a script of its own, run first.
type Admission struct {
	// Lua is the body of a Lua function of (keys, args), the tables of
	// Keys and Args, that returns 0 to admit the submit or a positive
	// integer to refuse it (its meaning is the caller's: RefusedError
	// hands it back). It may write its own keys whatever it returns, must
	// touch no others, and reads KEYS and ARGV never (it is not alone in
	// its script). The caller's code vouches for it: each distinct Lua is
	// a script Redis and this process keep, so it must be a constant of
	// the caller's, never built from a request.
	Lua  string
	Keys []string
	Args []any
}

// RefusedError is SubmitRequest's error when the request's Admission
// refused it: Reply is what the check returned. Nothing of the job was
// written (no record, no event, no index entry, no lock left).
type RefusedError struct{ Reply int64 }

func (e *RefusedError) Error() string {
	return "jobs: submit refused by its admission check (" + strconv.FormatInt(e.Reply, 10) + ")"
}

// admissionScripts holds the scripts made from each Admission.Lua: the
// check alone (*redis.Script, key "alone" + Lua) and the check with the
// job's creation (*progress.AppendGuard, key with the counts of its keys
// and args). Their number is bounded by the callers' constants (see
// Admission.Lua).
var admissionScripts sync.Map

// PrepareAdmission makes the scripts of an Admission whose Lua is lua
// with keys keys and args args, as its first submit would: a caller
// whose admission is known in advance prepares it while its package
// initializes, so that the scripts are in progress's registry when the
// process loads them at start (progress.LoadScripts), and its first
// submits go by digest.
func PrepareAdmission(lua string, keys, args int) {
	a := &Admission{Lua: lua, Keys: make([]string, keys), Args: make([]any, args)}
	a.aloneScript()
	a.createGuard()
}

// aloneScript returns the script that runs a's check by itself.
func (a *Admission) aloneScript() *redis.Script {
	key := "alone\x00" + a.Lua
	if s, ok := admissionScripts.Load(key); ok {
		return s.(*redis.Script)
	}
	s, _ := admissionScripts.LoadOrStore(key, progress.NewScript("local function admit(keys, args)\n"+a.Lua+"\nend\nreturn admit(KEYS, ARGV)"))
	return s.(*redis.Script)
}

// admit runs a's check alone, in a round trip of its own: nil when it
// admits, a *RefusedError when it refuses.
func (a *Admission) admit(ctx context.Context, rdb redis.Scripter) error {
	n, err := a.aloneScript().Run(ctx, rdb, a.Keys, a.Args...).Int64()
	if err != nil {
		return fmt.Errorf("jobs: admission check: %w", err)
	}
	if n != 0 {
		return &RefusedError{Reply: n}
	}
	return nil
}

// createKeys and createArgs are the counts of createGuard's own keys and
// args before an Admission's: the job's hash, its owner's index and the
// open index; the job id, the retention (ms), the two index scores, the
// first event's name and payload, and recordFieldsMax field-value pairs.
const (
	createKeys = 3
	createArgs = 6 + 2*recordFieldsMax
)

// createGuard returns the guarded append that records a job behind a's
// check (see lifecycle.createAdmitted): if the check admits, the job's
// record and index entries as store.createIn makes them, and its first
// event; if it refuses, nothing but what the check itself wrote, and its
// reply.
func (a *Admission) createGuard() *progress.AppendGuard {
	nk, na := len(a.Keys), len(a.Args)
	key := "create\x00" + strconv.Itoa(nk) + "\x00" + strconv.Itoa(na) + "\x00" + a.Lua
	if g, ok := admissionScripts.Load(key); ok {
		return g.(*progress.AppendGuard)
	}
	src := "local function admit(keys, args)\n" + a.Lua + "\nend\n" + `
local function guard()
  local ak, aa = {}, {}
  for i = 1, ` + strconv.Itoa(nk) + ` do ak[i] = KEYS[` + strconv.Itoa(createKeys) + ` + i] end
  for i = 1, ` + strconv.Itoa(na) + ` do aa[i] = ARGV[` + strconv.Itoa(createArgs) + ` + i] end
  local r = admit(ak, aa)
  if r ~= 0 then return r, nil end
  local f = {}
  for i = 7, ` + strconv.Itoa(createArgs) + `, 2 do
    if ARGV[i] ~= '' then f[#f+1] = ARGV[i]; f[#f+1] = ARGV[i+1] end
  end
  redis.call('HSET', KEYS[1], unpack(f))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  return 0, {ARGV[5], ARGV[6]}
end
`
	g, _ := admissionScripts.LoadOrStore(key, progress.NewAppendGuard(src, createKeys+nk, createArgs+na))
	return g.(*progress.AppendGuard)
}

// createAdmitted records the new job rec and appends its first event
// (first) behind a's check, in one script and one round trip (off a
// Redis Cluster only: the check's keys, the job's and its log's are of
// different slots). It returns the event, a *RefusedError when the check
// refused (nothing of the job was written), or an error whose outcome is
// unknown: the job may have been recorded, so it is ended as submit ends
// a job whose first event failed.
func (l *lifecycle) createAdmitted(ctx context.Context, rec *record, first stateEvent, a *Admission) (*progress.Event, error) {
	payload, err := json.Marshal(first)
	if err != nil {
		return nil, fmt.Errorf("jobs: encode the first event of %s: %w", rec.ID, err)
	}
	keys := append([]string{l.st.jobKey(rec.ID), l.st.indexKey(rec.Owner), l.st.openKey()}, a.Keys...)
	args := make([]any, 0, createArgs+len(a.Args))
	args = append(args, rec.ID, l.st.retention.Milliseconds(), rec.CreatedAt.UnixMicro(),
		latest(rec.CreatedAt, rec.RunAt).UnixMicro(), wire.EventState, string(payload))
	fields := recordFields(rec)
	for len(fields) < 2*recordFieldsMax {
		fields = append(fields, "", "")
	}
	args = append(append(args, fields...), a.Args...)
	reply, evs, err := l.log.RunGuard(ctx, a.createGuard(), keys, args, Group(rec.ID))
	if err == nil {
		if n := toInt(reply); n != 0 {
			return nil, &RefusedError{Reply: n}
		}
		if len(evs) == 1 {
			return evs[0], nil
		}
		err = fmt.Errorf("unexpected reply %v with %d events", reply, len(evs))
	}
	l.end(context.WithoutCancel(ctx), rec.ID, rec.Task, "", StateFailed, nil, "could not record the job's first event")
	return nil, fmt.Errorf("jobs: record job %s: %w", rec.ID, err)
}
