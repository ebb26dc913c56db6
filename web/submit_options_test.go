package web

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// errorOf returns the error object of an error body.
func errorOf(body map[string]any) map[string]any {
	e, _ := body["error"].(map[string]any)
	return e
}

func TestSubmitOptions(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		status, job, h := e.do("POST", "/api/jobs", map[string]any{
			"type": "steps", "params": map[string]any{"steps": 2, "interval_ms": 10},
			"queue": "critical", "priority": "high", "timeout": "90s", "max_retry": 0,
		})
		if status != http.StatusAccepted || h.Get("Location") != "/api/jobs/"+job["id"].(string) {
			t.Fatalf("submit: %d %v", status, job)
		}
		checkJobObject(t, job, "", "steps")
		id := job["id"].(string)
		for _, j := range []map[string]any{job, e.getJob(id)} {
			if j["queue"] != "critical" || j["priority"] != "high" || j["timeout"] != "1m30s" || j["max_retry"] != 0.0 || j["run_at"] != nil {
				t.Fatalf("options in the job: %v", j)
			}
		}
		e.waitState(id, "completed")

		// Without options: the type's defaults, shown too.
		d := e.getJob(e.submit("steps", map[string]any{"steps": 1}))
		if d["queue"] != "default" || d["priority"] != "normal" || d["max_retry"] != 3.0 || d["timeout"] == "" {
			t.Fatalf("default options: %v", d)
		}

		// The job types listing says what each type allows.
		res := e.doRaw("GET", "/api/job-types", nil)
		var types []map[string]any
		if err := json.Unmarshal(res.body, &types); err != nil {
			t.Fatal(err)
		}
		byName := map[string]map[string]any{}
		for _, ty := range types {
			byName[ty["type"].(string)] = ty
		}
		st, rep := byName["steps"], byName["report"]
		if q, _ := json.Marshal(st["queues"]); string(q) != `["default","critical","bulk"]` ||
			st["retry_limit"] != 10.0 || st["max_retry"] != 3.0 || st["max_timeout"] == "" || st["unique"] != nil {
			t.Fatalf("steps: %v", st)
		}
		if p, _ := json.Marshal(st["priorities"]); string(p) != `["high","normal","low"]` {
			t.Fatalf("priorities %s", p)
		}
		if rep["unique"] != "10m0s" {
			t.Fatalf("report: %v", rep)
		}
	})
}

func TestSubmitOptionErrors(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		steps := map[string]any{"steps": 1}
		cases := []struct {
			name  string
			body  map[string]any
			field string
		}{
			{"queue the type does not allow", map[string]any{"type": "primes", "params": map[string]any{"n": 10}, "queue": "critical"}, "queue"},
			{"priority", map[string]any{"type": "steps", "params": steps, "priority": "asap"}, "priority"},
			{"timeout not a duration", map[string]any{"type": "steps", "params": steps, "timeout": "1 hour"}, "timeout"},
			{"timeout over the type's max", map[string]any{"type": "primes", "params": map[string]any{"n": 10}, "timeout": "2h"}, "timeout"},
			{"max_retry over the limit", map[string]any{"type": "steps", "params": steps, "max_retry": 11}, "max_retry"},
			{"max_retry negative", map[string]any{"type": "steps", "params": steps, "max_retry": -1}, "max_retry"},
			{"max_retry a string", map[string]any{"type": "steps", "params": steps, "max_retry": "3"}, "max_retry"},
			{"delay and run_at", map[string]any{"type": "steps", "params": steps, "delay": "1s", "run_at": "2099-01-01T00:00:00Z"}, "run_at"},
			{"delay zero", map[string]any{"type": "steps", "params": steps, "delay": "0s"}, "delay"},
			{"delay over 30 days", map[string]any{"type": "steps", "params": steps, "delay": "721h"}, "delay"},
			{"run_at in the past", map[string]any{"type": "steps", "params": steps, "run_at": "2020-01-01T00:00:00Z"}, "run_at"},
			{"run_at malformed", map[string]any{"type": "steps", "params": steps, "run_at": "next tuesday"}, "run_at"},
			{"params", map[string]any{"type": "steps", "params": map[string]any{"steps": 0}}, "params.steps"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				status, body, _ := e.do("POST", "/api/jobs", c.body)
				er := errorOf(body)
				if status != http.StatusBadRequest || er["code"] != CodeBadRequest || er["field"] != c.field ||
					!strings.Contains(er["message"].(string), strings.TrimPrefix(c.field, "params.")) {
					t.Fatalf("status %d body %v, want 400 bad_request naming %q", status, body, c.field)
				}
			})
		}
		status, body, _ := e.do("POST", "/api/jobs", map[string]any{"type": "steps", "params": steps}, "Idempotency-Key", strings.Repeat("k", 256))
		if er := errorOf(body); status != http.StatusBadRequest || er["field"] != "Idempotency-Key" {
			t.Fatalf("long key: %d %v", status, body)
		}
		// Nothing was recorded by any of them.
		if _, list, _ := e.do("GET", "/api/jobs", nil); len(list["jobs"].([]any)) != 0 {
			t.Fatalf("bad submits made jobs: %v", list)
		}
	})
}

func TestScheduledJobOverHTTP(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		runAt := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
		status, job, _ := e.do("POST", "/api/jobs", map[string]any{
			"type": "steps", "params": map[string]any{"steps": 1}, "run_at": runAt.Format(time.RFC3339),
		})
		if status != http.StatusAccepted || job["state"] != wire.StateScheduled || job["run_at"] != runAt.Format(time.RFC3339) {
			t.Fatalf("submit: %d %v", status, job)
		}
		id := job["id"].(string)
		ws := e.dial()
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: wire.JobGroup(id).String()})
		if f := ws.read(); f.Type != wire.TypeSubscribed {
			t.Fatalf("subscribe: %+v", f)
		}
		var first struct {
			State string `json:"state"`
			RunAt string `json:"run_at"`
		}
		f := ws.read()
		if err := json.Unmarshal(f.Data, &first); err != nil || f.Event != wire.EventState || first.State != wire.StateScheduled || first.RunAt != runAt.Format(time.RFC3339) {
			t.Fatalf("first event %+v (%s)", f, f.Data)
		}
		status, c, _ := e.do("POST", "/api/jobs/"+id+"/cancel", nil)
		if status != http.StatusAccepted || c["state"] != wire.StateCanceled {
			t.Fatalf("cancel: %d %v", status, c)
		}
		f = ws.read()
		if !isTerminalEvent(f) || !strings.Contains(string(f.Data), wire.StateCanceled) {
			t.Fatalf("after cancel: %+v (%s)", f, f.Data)
		}

		// A short delay runs the job after it, as usual.
		status, job, _ = e.do("POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]any{"steps": 1}, "delay": "200ms"})
		if status != http.StatusAccepted || job["state"] != wire.StateScheduled {
			t.Fatalf("submit with delay: %d %v", status, job)
		}
		e.waitState(job["id"].(string), wire.StateCompleted)
	})
}

func TestIdempotencyKeyOverHTTP(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker(), withWebConfig(Config{JobBurst: 100}))
		e.me(e.client) // make the guest once, so parallel requests share it
		body := map[string]any{"type": "steps", "params": map[string]any{"steps": 5}}
		const n = 12
		var wg sync.WaitGroup
		statuses := make([]int, n)
		ids := make([]string, n)
		replayed := make([]string, n)
		for i := range n {
			wg.Go(func() {
				status, job, h := e.do("POST", "/api/jobs", body, "Idempotency-Key", "same-key")
				statuses[i], replayed[i] = status, h.Get("Idempotent-Replayed")
				ids[i], _ = job["id"].(string)
			})
		}
		wg.Wait()
		made := 0
		for i := range n {
			switch {
			case ids[i] == "" || ids[i] != ids[0]:
				t.Fatalf("request %d: status %d job %q, request 0 got %q", i, statuses[i], ids[i], ids[0])
			case statuses[i] == http.StatusAccepted && replayed[i] == "":
				made++
			case statuses[i] != http.StatusOK || replayed[i] != "true":
				t.Fatalf("request %d: status %d replayed %q", i, statuses[i], replayed[i])
			}
		}
		_, list, _ := e.do("GET", "/api/jobs", nil)
		if made != 1 || len(list["jobs"].([]any)) != 1 {
			t.Fatalf("%d requests made a job, %d jobs listed; want 1 and 1", made, len(list["jobs"].([]any)))
		}
		// The same key with another body: 422, naming the key's job.
		status, res, _ := e.do("POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]any{"steps": 6}}, "Idempotency-Key", "same-key")
		if er := errorOf(res); status != http.StatusUnprocessableEntity || er["code"] != wire.CodeIdempotencyKeyReused || er["job"] != ids[0] {
			t.Fatalf("reused key: %d %v", status, res)
		}
		// Another user's same key is theirs.
		status, other, _ := e.doAs(e.newBrowser(), "POST", "/api/jobs", body, "Idempotency-Key", "same-key")
		if status != http.StatusAccepted || other["id"] == ids[0] {
			t.Fatalf("another user: %d %v", status, other)
		}
	})
}

func TestUniqueTypeOverHTTP(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker()) // the first job stays queued
		params := map[string]any{"rows": 10, "seed": 3}
		first := e.submit("report", params)
		status, body, _ := e.do("POST", "/api/jobs", map[string]any{"type": "report", "params": params})
		if er := errorOf(body); status != http.StatusConflict || er["code"] != CodeConflict || er["job"] != first || !strings.Contains(er["message"].(string), first) {
			t.Fatalf("duplicate: %d %v, want 409 naming %s", status, body, first)
		}
		e.submit("report", map[string]any{"rows": 10, "seed": 4}) // other params
		if status, _, _ := e.do("POST", "/api/jobs/"+first+"/cancel", nil); status != http.StatusAccepted {
			t.Fatalf("cancel: %d", status)
		}
		e.submit("report", params) // the canceled job no longer holds it
	})
}

func TestSchedulesRoute(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withSchedule(`{"schedules":[
			{"name":"every-second","spec":"@every 1s","type":"steps","params":{"steps":1},"queue":"bulk"},
			{"name":"nightly","spec":"0 3 * * *","type":"report","params":{"rows":100}}]}`))
		admin := []string{"Authorization", "Bearer " + testAdminToken}
		if status, body, _ := e.do("GET", "/api/schedules", nil); status != http.StatusForbidden {
			t.Fatalf("guest: %d %v", status, body)
		}
		var last map[string]any
		eventually(t, "a periodic job", func() bool {
			status, body, _ := e.doAs(&http.Client{}, "GET", "/api/schedules", nil, admin...)
			if status != http.StatusOK {
				t.Fatalf("admin: %d %v", status, body)
			}
			list := body["schedules"].([]any)
			if len(list) != 2 {
				t.Fatalf("schedules %v", list)
			}
			nightly := list[0].(map[string]any)
			if list[1].(map[string]any)["name"] != "nightly" || nightly["spec"] != "@every 1s" || nightly["type"] != "steps" {
				t.Fatalf("schedules %v", list)
			}
			next, err := time.Parse(time.RFC3339, list[1].(map[string]any)["next_run"].(string))
			if err != nil || next.Hour() != 3 || next.Minute() != 0 || !next.After(time.Now()) {
				t.Fatalf("nightly next run %v (%v)", list[1], err)
			}
			last = nightly
			return nightly["last_job"] != nil
		})
		// The periodic job is a normal job, the admin user's: watchable.
		id := last["last_job"].(string)
		status, job, _ := e.doAs(&http.Client{}, "GET", "/api/jobs/"+id, nil, admin...)
		if status != http.StatusOK || job["schedule"] != "every-second" || job["queue"] != "bulk" || job["owner"] != "admin" {
			t.Fatalf("periodic job: %d %v", status, job)
		}
		ws := dialWS(t, strings.Replace(e.http.URL, "http", "ws", 1)+"/ws", admin...)
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: wire.JobGroup(id).String()})
		frames := ws.readUntil(isTerminalEvent)
		if frames[0].Type != wire.TypeSubscribed {
			t.Fatalf("frames %+v", frames)
		}
	})
}
