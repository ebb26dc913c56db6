package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// quotaLua is an admission check for the tests: at most args[1] submits
// per key keys[1], refused with args[2]. It counts refused ones too (a
// check may write its own key whatever it answers).
const quotaLua = `
local n = redis.call('INCR', keys[1])
if n > tonumber(args[1]) then return tonumber(args[2]) end
return 0
`

// quota returns an admission of n submits on key, refused with 7.
func quota(key string, n int) *Admission {
	return &Admission{Lua: quotaLua, Keys: []string{key}, Args: []any{n, 7}}
}

// keySet returns every key in Redis but skip, sorted.
func keySet(t *testing.T, rdb redis.UniversalClient, skip string) []string {
	t.Helper()
	keys, err := rdb.Keys(context.Background(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	keys = slices.DeleteFunc(keys, func(k string) bool { return k == skip })
	slices.Sort(keys)
	return keys
}

// A submit's admission check runs in the script that records the job off
// a Redis Cluster (fused): an admitted submit takes the round trips of a
// submit without a check, a refused one a single round trip, and leaves
// nothing of the job (no record, no index entry, no event, no task, no
// lock). It runs alone, first, as a check of the caller's own would,
// when the request takes locks before its record (an Idempotency-Key, a
// unique type), when it is invalid (the check still answers first), and
// always on a Cluster (two steps).
func TestSubmitAdmission(t *testing.T) {
	cases := []struct {
		name      string
		req       Request
		quota     int
		wantErr   func(error) bool
		fusedRTs  int64 // round trips of the submit when fused
		othersRTs int64 // the same in two steps
		counted   int64 // the check's count after the two submits
	}{
		{name: "admitted", req: Request{Type: "steps", Params: json.RawMessage(`{"steps":1}`)}, quota: 100,
			fusedRTs: 2, othersRTs: 4, counted: 2},
		{name: "admitted, scheduled", req: Request{Type: "steps", Params: json.RawMessage(`{"steps":1}`), Options: Options{Delay: "1h"}}, quota: 100,
			fusedRTs: 3, othersRTs: 4, counted: 2},
		{name: "refused", req: Request{Type: "steps", Params: json.RawMessage(`{"steps":1}`)},
			wantErr: refusedWith7, fusedRTs: 1, othersRTs: 1, counted: 2},
		{name: "refused, scheduled", req: Request{Type: "steps", Params: json.RawMessage(`{"steps":1}`), Options: Options{Delay: "1h"}},
			wantErr: refusedWith7, fusedRTs: 1, othersRTs: 1, counted: 2},
		{name: "refused, with an Idempotency-Key", req: Request{Type: "steps", Params: json.RawMessage(`{"steps":1}`), IdempotencyKey: "k"},
			wantErr: refusedWith7, fusedRTs: 1, othersRTs: 1, counted: 2},
		{name: "refused, unique type", req: Request{Type: "uniq", Params: json.RawMessage(`{"k":"a"}`)},
			wantErr: refusedWith7, fusedRTs: 1, othersRTs: 1, counted: 2},
		{name: "invalid, refused", req: Request{Type: "steps", Params: json.RawMessage(`{"steps":"x"}`)},
			wantErr: refusedWith7, fusedRTs: 1, othersRTs: 1, counted: 2},
		{name: "invalid, admitted", req: Request{Type: "steps", Params: json.RawMessage(`{"steps":"x"}`)}, quota: 100,
			wantErr: func(err error) bool { var pe *ParamError; return errors.As(err, &pe) }, fusedRTs: 1, othersRTs: 1, counted: 2},
		{name: "unknown type, refused", req: Request{Type: "nope"},
			wantErr: refusedWith7, fusedRTs: 1, othersRTs: 1, counted: 2},
	}
	newEnv := func(t *testing.T, srv *progresstest.Server) *jobEnv { return newOptionEnv(t, srv, Config{}, nil) }
	forBothPathsOf(t, newEnv, func(t *testing.T, e *jobEnv) {
		fused := e.svc.lc.fused
		rdb := e.svc.store.rdb
		rt := &roundTrips{}
		rdb.(*redis.Client).AddHook(rt.hook())
		ctx := context.Background()
		// Every script once, so Redis knows it: a script's first use
		// (EVALSHA, NOSCRIPT, EVAL) is not what is counted.
		for _, a := range []*Admission{quota("warm:1", 100), quota("warm:2", 0)} {
			for _, req := range []Request{{Type: "steps", Params: json.RawMessage(`{"steps":1}`), Admit: a}, {Type: "steps", Params: json.RawMessage(`{"steps":1}`)}} {
				_, _, _ = e.svc.SubmitRequest(ctx, "warm", req)
			}
		}
		for _, c := range cases {
			key := "quota:" + c.name
			for i := range 2 {
				before := keySet(t, rdb, key)
				req := c.req
				req.Admit = quota(key, c.quota)
				rt.n.Store(0)
				job, _, err := e.svc.SubmitRequest(ctx, "u1", req)
				want := c.othersRTs
				if fused {
					want = c.fusedRTs
				}
				if got := rt.n.Load(); i == 1 && got != want {
					t.Errorf("%s: %d round trips, want %d", c.name, got, want)
				}
				if c.wantErr != nil {
					if !c.wantErr(err) {
						t.Fatalf("%s: %v", c.name, err)
					}
					if after := keySet(t, rdb, key); !slices.Equal(before, after) {
						t.Fatalf("%s: the refused submit left keys: before %v, after %v", c.name, before, after)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				e.checkSubmitted(t, job, req)
			}
			if n, err := rdb.Get(ctx, key).Int64(); err != nil || n != c.counted {
				t.Errorf("%s: the check counted %d (%v), want %d", c.name, n, err, c.counted)
			}
		}
	})
}

func refusedWith7(err error) bool {
	var re *RefusedError
	return errors.As(err, &re) && re.Reply == 7
}

// checkSubmitted checks that job, submitted with req, is recorded as a
// submit without an admission check records it: the same hash (but for
// the job's own id and times), in its owner's index and the open index,
// with its first event and its task.
func (e *jobEnv) checkSubmitted(t *testing.T, job *Job, req Request) {
	t.Helper()
	ctx := context.Background()
	rdb := e.svc.store.rdb
	req.Admit, req.IdempotencyKey = nil, ""
	plain, _, err := e.svc.SubmitRequest(ctx, "u1", req)
	if err != nil {
		t.Fatal(err)
	}
	got, want := rdb.HGetAll(ctx, e.svc.store.jobKey(job.ID)).Val(), rdb.HGetAll(ctx, e.svc.store.jobKey(plain.ID)).Val()
	for _, m := range []map[string]string{got, want} {
		for _, f := range []string{"task", "created_at", "updated_at", "run_at"} {
			if _, ok := m[f]; !ok && f != "run_at" {
				t.Fatalf("the record %v has no %s", m, f)
			}
			delete(m, f)
		}
	}
	if !maps.Equal(got, want) {
		t.Fatalf("the record with a check %v, without %v", got, want)
	}
	for _, key := range []string{e.svc.store.jobKey(job.ID), e.svc.store.indexKey("u1")} {
		if ttl := rdb.PTTL(ctx, key).Val(); ttl <= 0 {
			t.Fatalf("%s has no expiry (%v)", key, ttl)
		}
	}
	for _, key := range []string{e.svc.store.indexKey("u1"), e.svc.store.openKey()} {
		if err := rdb.ZScore(ctx, key, job.ID).Err(); err != nil {
			t.Fatalf("%s does not hold %s: %v", key, job.ID, err)
		}
	}
	snap, err := e.log.Read(ctx, Group(job.ID), 0)
	if err != nil || len(snap.Events) != 1 || snap.Events[0].Name != wire.EventState || snap.Epoch != job.Epoch || job.LastSeq != 1 {
		t.Fatalf("the job's log: %+v (%v), the job %+v", snap, err, job)
	}
	var first stateEvent
	if err := json.Unmarshal(snap.Events[0].Data, &first); err != nil || first.State != job.State {
		t.Fatalf("the first event %s (%v), the job is %s", snap.Events[0].Data, err, job.State)
	}
	rec, err := e.svc.store.get(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.insp.GetTaskInfo(rec.Queue, rec.Task); err != nil {
		t.Fatalf("Asynq's task: %v", err)
	}
}

// On a real Redis Cluster (the check's key, the job's and its log's in
// different slots) the check is a step of its own, first, and the submit
// goes on as without one: admitted, the job is recorded and queued;
// refused, nothing of it is written.
func TestSubmitAdmissionOnCluster(t *testing.T) {
	c := progresstest.NewCluster(t, 3)
	rdb := c.Client(t)
	log := progress.NewLog(rdb, progress.LogConfig{})
	reg, err := NewRegistry(Builtin()...)
	if err != nil {
		t.Fatal(err)
	}
	e := &jobEnv{t: t, log: log, svc: NewService(rdb, reg, log, Config{ArtifactDir: t.TempDir()})}
	if e.svc.lc.fused {
		t.Fatal("a service on a cluster fuses steps across slots")
	}
	ctx := context.Background()
	req := Request{Type: "steps", Params: json.RawMessage(`{"steps":1}`), Admit: quota("quota:cluster", 1)}
	job, _, err := e.svc.SubmitRequest(ctx, "u1", req)
	if err != nil {
		t.Fatal(err)
	}
	e.checkSubmitted(t, job, req)
	indexes := []string{e.svc.store.indexKey("u1"), e.svc.store.openKey()}
	before := make([]int64, len(indexes))
	for i, k := range indexes {
		before[i] = rdb.ZCard(ctx, k).Val()
	}
	if _, _, err := e.svc.SubmitRequest(ctx, "u1", req); !refusedWith7(err) {
		t.Fatalf("over the quota: %v", err)
	}
	for i, k := range indexes {
		if after := rdb.ZCard(ctx, k).Val(); after != before[i] || after == 0 {
			t.Fatalf("the refused submit changed %s: %d jobs, then %d", k, before[i], after)
		}
	}
	if n := rdb.Get(ctx, "quota:cluster").Val(); n != "2" {
		t.Fatalf("the check counted %s, want 2", n)
	}
}

// PrepareAdmission makes an admission's two scripts (the check alone and
// the check with the job's creation), registered for the start's load,
// and a submit's Admission of the same Lua and counts then uses them
// instead of making its own.
func TestPrepareAdmissionRegistersItsScripts(t *testing.T) {
	lua := quotaLua + "-- prepared\n"
	before := len(progress.Scripts())
	PrepareAdmission(lua, 1, 2)
	prepared := progress.Scripts()
	if len(prepared) < before+2 {
		t.Fatalf("PrepareAdmission registered %d scripts, want 2", len(prepared)-before)
	}
	a := &Admission{Lua: lua, Keys: []string{"k"}, Args: []any{1, 7}}
	if !slices.Contains(prepared, a.aloneScript()) {
		t.Error("the admission's check alone is not the prepared script")
	}
	if g := a.createGuard(); g != a.createGuard() {
		t.Error("the admission's creation guard is made again on each use")
	}
	if n := len(progress.Scripts()); n != len(prepared) {
		t.Errorf("the prepared admission's first use made %d scripts more", n-len(prepared))
	}
}
