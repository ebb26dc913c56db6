package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// optionType is a job type with every option bound set: two queues, a
// timeout of 1m up to 10m, 2 retries up to 5.
func optionType() Type {
	return Define(Spec[struct {
		N int `json:"n"`
	}]{
		Name: "opt", Schema: `{"type":"object","properties":{"n":{"type":"integer","default":1}},"additionalProperties":false}`,
		Queue: "default", Queues: []string{"bulk"}, Timeout: time.Minute, MaxTimeout: 10 * time.Minute,
		MaxRetry: 2, RetryLimit: 5,
		Run: func(ctx context.Context, p struct {
			N int `json:"n"`
		}, env Env, r Reporter) (any, error) {
			return map[string]int{"n": p.N}, nil
		},
	})
}

// uniqueType is a job type that is unique for a minute, and runs until
// the test opens its gate.
func uniqueType(gate <-chan struct{}) Type {
	return Define(Spec[struct {
		K string `json:"k"`
	}]{
		Name: "uniq", Schema: `{"type":"object","properties":{"k":{"type":"string"}},"additionalProperties":false}`,
		Unique: time.Minute,
		Run: func(ctx context.Context, _ struct {
			K string `json:"k"`
		}, env Env, r Reporter) (any, error) {
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return "ok", nil
		},
	})
}

func intp(n int) *int { return &n }

func TestResolveOptions(t *testing.T) {
	typ := optionType()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	const maxDelay = 30 * 24 * time.Hour
	cases := []struct {
		name  string
		in    Options
		want  runOptions
		field string // the *OptionError's field; "" when in is valid
	}{
		{name: "defaults", want: runOptions{Queue: "default", Priority: PriorityNormal, Timeout: time.Minute, MaxRetry: 2}},
		{name: "all set", in: Options{Queue: "bulk", Priority: "high", Timeout: "10m", MaxRetry: intp(5)},
			want: runOptions{Queue: "bulk", Priority: PriorityHigh, Timeout: 10 * time.Minute, MaxRetry: 5}},
		{name: "no retries", in: Options{MaxRetry: intp(0)},
			want: runOptions{Queue: "default", Priority: PriorityNormal, Timeout: time.Minute, MaxRetry: 0}},
		{name: "delay", in: Options{Delay: "3s"},
			want: runOptions{Queue: "default", Priority: PriorityNormal, Timeout: time.Minute, MaxRetry: 2, RunAt: now.Add(3 * time.Second)}},
		{name: "run_at", in: Options{RunAt: "2030-01-02T05:04:05+01:00"},
			want: runOptions{Queue: "default", Priority: PriorityNormal, Timeout: time.Minute, MaxRetry: 2, RunAt: now.Add(time.Hour)}},
		{name: "delay at the bound", in: Options{Delay: "720h"},
			want: runOptions{Queue: "default", Priority: PriorityNormal, Timeout: time.Minute, MaxRetry: 2, RunAt: now.Add(maxDelay)}},
		{name: "unknown queue", in: Options{Queue: "critical"}, field: "queue"},
		{name: "priority queue name", in: Options{Queue: "default:high"}, field: "queue"},
		{name: "bad priority", in: Options{Priority: "urgent"}, field: "priority"},
		{name: "timeout not a duration", in: Options{Timeout: "10"}, field: "timeout"},
		{name: "timeout too short", in: Options{Timeout: "500ms"}, field: "timeout"},
		{name: "timeout over the type's max", in: Options{Timeout: "11m"}, field: "timeout"},
		{name: "negative retries", in: Options{MaxRetry: intp(-1)}, field: "max_retry"},
		{name: "retries over the limit", in: Options{MaxRetry: intp(6)}, field: "max_retry"},
		{name: "delay and run_at", in: Options{Delay: "1s", RunAt: "2030-01-02T04:00:00Z"}, field: "run_at"},
		{name: "delay not a duration", in: Options{Delay: "soon"}, field: "delay"},
		{name: "zero delay", in: Options{Delay: "0s"}, field: "delay"},
		{name: "negative delay", in: Options{Delay: "-1s"}, field: "delay"},
		{name: "delay too long", in: Options{Delay: "721h"}, field: "delay"},
		{name: "run_at not RFC 3339", in: Options{RunAt: "tomorrow"}, field: "run_at"},
		{name: "run_at without zone", in: Options{RunAt: "2030-01-02T04:00:00"}, field: "run_at"},
		{name: "run_at now", in: Options{RunAt: "2030-01-02T03:04:05Z"}, field: "run_at"},
		{name: "run_at in the past", in: Options{RunAt: "2029-12-31T00:00:00Z"}, field: "run_at"},
		{name: "run_at too far", in: Options{RunAt: "2030-02-02T03:04:06Z"}, field: "run_at"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := typ.resolveOptions(c.in, now, maxDelay)
			if c.field != "" {
				var oe *OptionError
				if !errors.As(err, &oe) || oe.Field != c.field {
					t.Fatalf("error %v, want an *OptionError about %q", err, c.field)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.RunAt.Equal(c.want.RunAt) {
				t.Fatalf("run_at %v, want %v", got.RunAt, c.want.RunAt)
			}
			got.RunAt, c.want.RunAt = time.Time{}, time.Time{}
			if got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestExpandQueues(t *testing.T) {
	got := ExpandQueues(map[string]int{"default": 3, "bulk": 1})
	want := map[string]int{"default:high": 12, "default": 6, "default:low": 3, "bulk:high": 4, "bulk": 2, "bulk:low": 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for q := range want {
		base, prio := splitAsynqQueue(q)
		if AsynqQueue(base, prio) != q {
			t.Errorf("%s splits into %s %s, which does not join back", q, base, prio)
		}
	}
}

// FuzzSubmitOptions feeds arbitrary submit bodies through the options'
// decoding and checks: no panic, and whatever is accepted is within the
// type's bounds.
func FuzzSubmitOptions(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"queue":"bulk","priority":"low","timeout":"2m","max_retry":3}`, `{"delay":"3s"}`,
		`{"run_at":"2030-01-02T03:04:06Z"}`, `{"delay":"1s","run_at":"2030-01-02T03:04:06Z"}`,
		`{"timeout":"9223372036854775807ns"}`, `{"delay":"-0s"}`, `{"max_retry":99999999999}`,
		`{"run_at":"9999-12-31T23:59:59Z"}`, `{"queue":""}`, `{"priority":null}`,
	} {
		f.Add(s)
	}
	typ := optionType()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body string) {
		var o Options
		if json.Unmarshal([]byte(body), &o) != nil {
			return
		}
		r, err := typ.resolveOptions(o, now, time.Hour)
		if err != nil {
			var oe *OptionError
			if !errors.As(err, &oe) || oe.Field == "" {
				t.Fatalf("error %v is not an *OptionError naming a field", err)
			}
			return
		}
		if !slices.Contains(typ.Queues, r.Queue) || PriorityWeight[r.Priority] == 0 {
			t.Fatalf("accepted queue %q priority %q", r.Queue, r.Priority)
		}
		if r.Timeout < time.Second || r.Timeout > typ.MaxTimeout || r.MaxRetry < 0 || r.MaxRetry > typ.RetryLimit {
			t.Fatalf("accepted timeout %v max_retry %d", r.Timeout, r.MaxRetry)
		}
		if !r.RunAt.IsZero() && (!r.RunAt.After(now) || r.RunAt.Sub(now) > time.Hour) {
			t.Fatalf("accepted run_at %v", r.RunAt)
		}
		fingerprint(typ.Name, json.RawMessage(`{}`), o, r) // must not panic
	})
}

// newOptionEnv is a job environment with optionType and uniqueType, and
// the given service settings.
func newOptionEnv(t *testing.T, srv *progresstest.Server, cfg Config, gate <-chan struct{}) *jobEnv {
	rdb := srv.Client(t)
	log := progress.NewLog(rdb, progress.LogConfig{})
	reg, err := NewRegistry(append(Builtin(), optionType(), uniqueType(gate))...)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ArtifactDir = t.TempDir()
	return &jobEnv{t: t, srv: srv, log: log, svc: NewService(rdb, reg, log, cfg)}
}

func TestSubmitOptionsReachAsynq(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newOptionEnv(t, srv, Config{}, nil)
		ctx := context.Background()
		j, _, err := e.svc.SubmitRequest(ctx, "u1", Request{Type: "opt", Params: json.RawMessage(`{"n":7}`),
			Options: Options{Queue: "bulk", Priority: "high", Timeout: "5m", MaxRetry: intp(4)}})
		if err != nil {
			t.Fatal(err)
		}
		if j.Queue != "bulk" || j.Priority != "high" || j.Timeout != "5m0s" || j.MaxRetry != 4 || j.RunAt != nil || j.State != StatePending {
			t.Fatalf("job %+v", j)
		}
		info, err := e.svc.Inspector().GetTaskInfo("bulk:high", j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if info.Timeout != 5*time.Minute || info.MaxRetry != 4 || info.State != asynq.TaskStatePending {
			t.Fatalf("asynq task %+v", info)
		}
		// A worker with the default queues serves every queue and priority.
		e.startWorkerWith(quick())
		e.waitFinal(j.ID)
		done := e.waitState(j.ID, StateCompleted)
		if string(done.Result) != `{"n":7}` || done.Queue != "bulk" || done.Priority != "high" {
			t.Fatalf("finished job %+v", done)
		}
		// Without options, the type's defaults.
		d, err := e.svc.Submit(ctx, "u1", "opt", nil)
		if err != nil {
			t.Fatal(err)
		}
		if d.Queue != "default" || d.Priority != "normal" || d.Timeout != "1m0s" || d.MaxRetry != 2 {
			t.Fatalf("default options %+v", d)
		}
	})
}

func TestScheduledJob(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newOptionEnv(t, srv, Config{}, nil)
		ctx := context.Background()
		// Scheduled in the near future; the worker starts only once the
		// job is seen scheduled, so the test does not race the delay.
		j, _, err := e.svc.SubmitRequest(ctx, "u1", Request{Type: "opt", Options: Options{Delay: "300ms"}})
		if err != nil {
			t.Fatal(err)
		}
		if j.State != StateScheduled || j.RunAt == nil || j.RunAt.Before(j.CreatedAt) {
			t.Fatalf("job %+v, want scheduled with run_at", j)
		}
		snap := e.events(j.ID)
		if len(snap.Events) != 1 || snap.Events[0].Name != wire.EventState {
			t.Fatalf("first events %s", describe(snap))
		}
		var first stateEvent
		if err := json.Unmarshal(snap.Events[0].Data, &first); err != nil || first.State != StateScheduled || first.RunAt == "" {
			t.Fatalf("first event %s", snap.Events[0].Data)
		}
		if at, err := time.Parse(time.RFC3339Nano, first.RunAt); err != nil || !at.Equal(*j.RunAt) {
			t.Fatalf("event run_at %q, job run_at %v", first.RunAt, j.RunAt)
		}
		e.startWorkerWith(quick())
		e.waitFinal(j.ID)
		e.waitState(j.ID, StateCompleted)
		if got := stateNames(e.events(j.ID)); got != "scheduled/0 active/1 completed/0" {
			t.Fatalf("states %q", got)
		}
	})
}

func TestCancelScheduledJob(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newOptionEnv(t, srv, Config{}, nil)
		e.startWorkerWith(quick())
		ctx := context.Background()
		j, _, err := e.svc.SubmitRequest(ctx, "u1", Request{Type: "opt", Options: Options{RunAt: time.Now().Add(time.Hour).Format(time.RFC3339)}})
		if err != nil {
			t.Fatal(err)
		}
		info, err := e.svc.Inspector().GetTaskInfo("default", j.ID)
		if err != nil || info.State != asynq.TaskStateScheduled {
			t.Fatalf("asynq task %+v %v, want scheduled", info, err)
		}
		c, err := e.svc.Cancel(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if c.State != StateCanceled {
			t.Fatalf("after cancel: %s", c.State)
		}
		if _, err := e.svc.Inspector().GetTaskInfo("default", j.ID); !errors.Is(err, asynq.ErrTaskNotFound) {
			t.Fatalf("the scheduled task is still in asynq: %v", err)
		}
		if got := stateNames(e.waitFinal(j.ID)); got != "scheduled/0 canceled/0" {
			t.Fatalf("states %q", got)
		}
		if _, err := e.svc.Cancel(ctx, j.ID); !errors.Is(err, ErrConflict) {
			t.Fatalf("second cancel: %v", err)
		}
	})
}

func TestIdempotencyKey(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newOptionEnv(t, srv, Config{IdempotencyWait: 2 * time.Second}, nil)
		ctx := context.Background()
		req := Request{Type: "opt", Params: json.RawMessage(`{"n":1}`), Options: Options{Delay: "1h"}, IdempotencyKey: "order-42"}
		first, replayed, err := e.svc.SubmitRequest(ctx, "u1", req)
		if err != nil || replayed {
			t.Fatalf("first: %v replayed %v", err, replayed)
		}
		// The same request again, params written differently but equal
		// once normalized (the default filled in): the same job.
		again := req
		again.Params = json.RawMessage(`{}`)
		second, replayed, err := e.svc.SubmitRequest(ctx, "u1", again)
		if err != nil || !replayed || second.ID != first.ID {
			t.Fatalf("second: %v replayed %v id %s, want %s", err, replayed, second.ID, first.ID)
		}
		// A different request with the same key names the first job.
		for _, diff := range []Request{
			{Type: "opt", Params: json.RawMessage(`{"n":2}`), Options: Options{Delay: "1h"}},
			{Type: "opt", Params: json.RawMessage(`{"n":1}`), Options: Options{Delay: "2h"}},
			{Type: "opt", Params: json.RawMessage(`{"n":1}`), Options: Options{Delay: "1h", Priority: "low"}},
			{Type: "steps", Params: json.RawMessage(`{"steps":1}`)},
		} {
			diff.IdempotencyKey = req.IdempotencyKey
			_, _, err := e.svc.SubmitRequest(ctx, "u1", diff)
			var je *JobError
			if !errors.Is(err, ErrKeyReused) || !errors.As(err, &je) || je.Job != first.ID {
				t.Fatalf("%+v: %v, want ErrKeyReused naming %s", diff, err, first.ID)
			}
		}
		// Another owner's key is another key.
		other, replayed, err := e.svc.SubmitRequest(ctx, "u2", req)
		if err != nil || replayed || other.ID == first.ID {
			t.Fatalf("other owner: %v replayed %v", err, replayed)
		}
		// A bad key is a bad request.
		bad := req
		bad.IdempotencyKey = "has space"
		var oe *OptionError
		if _, _, err := e.svc.SubmitRequest(ctx, "u1", bad); !errors.As(err, &oe) || oe.Field != "Idempotency-Key" {
			t.Fatalf("bad key: %v", err)
		}

		// Concurrent duplicates make one job.
		const n = 16
		var wg sync.WaitGroup
		ids := make([]string, n)
		errs := make([]error, n)
		fresh := make([]bool, n)
		for i := range n {
			wg.Go(func() {
				j, replayed, err := e.svc.SubmitRequest(ctx, "u3", req)
				errs[i] = err
				if err == nil {
					ids[i], fresh[i] = j.ID, !replayed
				}
			})
		}
		wg.Wait()
		made := 0
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("request %d: %v", i, errs[i])
			}
			if ids[i] != ids[0] {
				t.Fatalf("request %d got job %s, request 0 got %s", i, ids[i], ids[0])
			}
			if fresh[i] {
				made++
			}
		}
		list, err := e.svc.List(ctx, "u3", 100)
		if err != nil {
			t.Fatal(err)
		}
		if made != 1 || len(list) != 1 {
			t.Fatalf("%d requests made a job, u3 has %d jobs; want 1 and 1", made, len(list))
		}
	})
}

func TestUniqueType(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		gate := make(chan struct{})
		e := newOptionEnv(t, srv, Config{}, gate)
		e.startWorkerWith(quick())
		ctx := context.Background()
		first, err := e.svc.Submit(ctx, "u1", "uniq", json.RawMessage(`{"k":"a"}`))
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.svc.Submit(ctx, "u1", "uniq", json.RawMessage(`{"k":"a"}`))
		var je *JobError
		if !errors.Is(err, ErrDuplicate) || !errors.As(err, &je) || je.Job != first.ID {
			t.Fatalf("duplicate: %v, want ErrDuplicate naming %s", err, first.ID)
		}
		// Other params, or another owner: not a duplicate.
		b, err := e.svc.Submit(ctx, "u1", "uniq", json.RawMessage(`{"k":"b"}`))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.Submit(ctx, "u2", "uniq", json.RawMessage(`{"k":"a"}`)); err != nil {
			t.Fatal(err)
		}
		// A canceled job frees its params at once ...
		if _, err := e.svc.Cancel(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
		e.waitFinal(b.ID)
		if _, err := e.svc.Submit(ctx, "u1", "uniq", json.RawMessage(`{"k":"b"}`)); err != nil {
			t.Fatalf("after cancel: %v", err)
		}
		// ... and so does a finished one.
		close(gate)
		e.waitFinal(first.ID)
		e.waitState(first.ID, StateCompleted)
		if _, err := e.svc.Submit(ctx, "u1", "uniq", json.RawMessage(`{"k":"a"}`)); err != nil {
			t.Fatalf("after the first completed: %v", err)
		}
		// An idempotent retry of a unique submit returns the job rather
		// than a conflict.
		r := Request{Type: "uniq", Params: json.RawMessage(`{"k":"c"}`), IdempotencyKey: "k1"}
		c1, _, err := e.svc.SubmitRequest(ctx, "u1", r)
		if err != nil {
			t.Fatal(err)
		}
		c2, replayed, err := e.svc.SubmitRequest(ctx, "u1", r)
		if err != nil || !replayed || c2.ID != c1.ID {
			t.Fatalf("idempotent retry: %v replayed %v", err, replayed)
		}
	})
}

// An operator who deletes a scheduled job's waiting task (asynqmon) ends
// the job canceled once it is due, as for a pending one.
func TestOperatorDeletesScheduledTask(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newOptionEnv(t, srv, Config{}, nil)
		ctx := context.Background()
		j, _, err := e.svc.SubmitRequest(ctx, "u1", Request{Type: "opt", Options: Options{Delay: "500ms"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.svc.Inspector().DeleteTask("default", j.ID); err != nil {
			t.Fatal(err)
		}
		e.startWorkerWith(quick())
		e.checkEnd(j.ID, e.waitFinal(j.ID), StateCanceled, reasonDeleted)
	})
}
