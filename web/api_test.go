package web

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"taskstream/progress/progresstest"
)

// rawResponse is an HTTP answer kept undecoded, for endpoints whose body is
// not a JSON object (arrays, CSV) and for checking headers.
type rawResponse struct {
	status int
	header http.Header
	body   []byte
}

// doRaw sends body as is (nil for none) with the given header pairs; unlike
// do it sets no Content-Type of its own.
func (e *testEnv) doRaw(method, path string, body []byte, header ...string) rawResponse {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.http.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return rawResponse{status: res.StatusCode, header: res.Header, body: raw}
}

// jobFields are the keys of the protocol's job object.
var jobFields = []string{"id", "type", "state", "params", "progress", "result", "error", "attempt", "created_at", "updated_at", "last_seq", "epoch"}

// checkJobObject fails unless job has every protocol field with a
// well-formed value, and the given id (when not empty) and type.
func checkJobObject(t *testing.T, job map[string]any, id, typ string) {
	t.Helper()
	for _, k := range jobFields {
		if _, ok := job[k]; !ok {
			t.Errorf("job object has no %q: %v", k, job)
		}
	}
	if got, _ := job["id"].(string); got == "" || (id != "" && got != id) {
		t.Errorf("id = %v, want %q", job["id"], id)
	}
	if job["type"] != typ {
		t.Errorf("type = %v, want %q", job["type"], typ)
	}
	switch job["state"] {
	case "pending", "active", "retry", "completed", "failed", "canceled":
	default:
		t.Errorf("state = %v, not a protocol state", job["state"])
	}
	if _, ok := job["params"].(map[string]any); !ok {
		t.Errorf("params = %v, want an object", job["params"])
	}
	if p := job["progress"]; p != nil {
		if _, ok := p.(map[string]any); !ok {
			t.Errorf("progress = %v, want an object or null", p)
		}
	}
	if e := job["error"]; e != nil {
		if _, ok := e.(string); !ok {
			t.Errorf("error = %v, want a string or null", e)
		}
	}
	// attempt is 1 or more for a job that is queued or has run; a job
	// canceled before it ever ran reports 0 (see TestCancelPendingJob).
	if a, ok := job["attempt"].(float64); !ok || a < 0 || a != float64(int(a)) {
		t.Errorf("attempt = %v, want a whole number", job["attempt"])
	}
	for _, k := range []string{"created_at", "updated_at"} {
		s, _ := job[k].(string)
		if _, err := time.Parse(time.RFC3339, s); err != nil {
			t.Errorf("%s = %v, want an RFC 3339 time: %v", k, job[k], err)
		}
	}
	if n, ok := job["last_seq"].(float64); !ok || n < 1 {
		t.Errorf("last_seq = %v, want >= 1 (the pending event is published on submit)", job["last_seq"])
	}
	if s, _ := job["epoch"].(string); s == "" {
		t.Errorf("epoch = %v, want a non-empty string", job["epoch"])
	}
}

// getJob fetches a job and fails unless the answer is 200.
func (e *testEnv) getJob(id string) map[string]any {
	e.t.Helper()
	status, body, _ := e.do("GET", "/api/jobs/"+id, nil)
	if status != http.StatusOK {
		e.t.Fatalf("GET job %s: status %d body %v", id, status, body)
	}
	return body
}

// waitState polls the job until its state is want.
func (e *testEnv) waitState(id, want string) map[string]any {
	e.t.Helper()
	var job map[string]any
	eventually(e.t, "job "+id+" to be "+want, func() bool {
		job = e.getJob(id)
		return job["state"] == want
	})
	return job
}

func TestJobTypes(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		res := e.doRaw("GET", "/api/job-types", nil)
		if res.status != http.StatusOK {
			t.Fatalf("status %d body %s", res.status, res.body)
		}
		if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("Content-Type %q", ct)
		}
		var types []struct {
			Type        string
			Description string
			Params      json.RawMessage
		}
		if err := json.Unmarshal(res.body, &types); err != nil {
			t.Fatalf("body %s: %v", res.body, err)
		}
		byName := map[string]int{}
		for i, ty := range types {
			byName[ty.Type] = i
		}
		for _, tc := range []struct {
			typ      string
			required string // a param the schema must require
		}{
			{"steps", "steps"},
			{"primes", "n"},
			{"report", "rows"},
		} {
			t.Run(tc.typ, func(t *testing.T) {
				i, ok := byName[tc.typ]
				if !ok {
					t.Fatalf("type %q not listed in %s", tc.typ, res.body)
				}
				ty := types[i]
				if strings.TrimSpace(ty.Description) == "" {
					t.Errorf("no description")
				}
				var schema struct {
					Type       string
					Properties map[string]json.RawMessage
					Required   []string
				}
				if err := json.Unmarshal(ty.Params, &schema); err != nil {
					t.Fatalf("params %s is not a JSON object: %v", ty.Params, err)
				}
				if schema.Type != "object" {
					t.Errorf("schema type %q, want object", schema.Type)
				}
				if _, ok := schema.Properties[tc.required]; !ok {
					t.Errorf("schema has no property %q: %s", tc.required, ty.Params)
				}
				found := false
				for _, r := range schema.Required {
					found = found || r == tc.required
				}
				if !found {
					t.Errorf("schema does not require %q: %v", tc.required, schema.Required)
				}
			})
		}
	})
}

func TestSubmitReturnsJob(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		// No worker: the job stays pending, so every field has a known value.
		e := newEnv(t, srv, withoutWorker())
		for _, tc := range []struct {
			typ        string
			params     map[string]any
			wantParams map[string]any // normalized, defaults filled
		}{
			{"steps", map[string]any{"steps": 3}, map[string]any{"steps": 3.0, "interval_ms": 100.0}},
			{"primes", map[string]any{"n": 100}, map[string]any{"n": 100.0}},
			{"report", map[string]any{"rows": 10}, map[string]any{"rows": 10.0, "seed": 0.0}},
		} {
			t.Run(tc.typ, func(t *testing.T) {
				status, job, hdr := e.do("POST", "/api/jobs", map[string]any{"type": tc.typ, "params": tc.params})
				if status != http.StatusAccepted {
					t.Fatalf("status %d body %v", status, job)
				}
				checkJobObject(t, job, "", tc.typ)
				id, _ := job["id"].(string)
				if loc := hdr.Get("Location"); loc != "/api/jobs/"+id {
					t.Errorf("Location %q, want /api/jobs/%s", loc, id)
				}
				if job["state"] != "pending" || job["attempt"] != 1.0 {
					t.Errorf("state %v attempt %v, want pending 1", job["state"], job["attempt"])
				}
				if job["result"] != nil || job["error"] != nil || job["progress"] != nil {
					t.Errorf("result %v error %v progress %v, want all null", job["result"], job["error"], job["progress"])
				}
				params := job["params"].(map[string]any)
				for k, v := range tc.wantParams {
					if params[k] != v {
						t.Errorf("params.%s = %v, want %v (params %v)", k, params[k], v, params)
					}
				}
				if len(params) != len(tc.wantParams) {
					t.Errorf("params %v, want %v", params, tc.wantParams)
				}
				if _, ok := job["artifact"]; ok {
					t.Errorf("a pending job has an artifact link: %v", job["artifact"])
				}

				// GET returns the same job.
				got := e.getJob(id)
				checkJobObject(t, got, id, tc.typ)
				for _, k := range []string{"state", "created_at", "epoch", "last_seq"} {
					if got[k] != job[k] {
						t.Errorf("GET %s = %v, submit said %v", k, got[k], job[k])
					}
				}
			})
		}
	})
}

func TestListJobsNewestFirst(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		status, body, _ := e.do("GET", "/api/jobs", nil)
		if status != http.StatusOK {
			t.Fatalf("status %d body %v", status, body)
		}
		if list, ok := body["jobs"].([]any); !ok || len(list) != 0 {
			t.Fatalf("empty store lists %v, want jobs: []", body)
		}

		var ids []string
		for i := range 4 {
			ids = append(ids, e.submit("steps", map[string]any{"steps": i + 1}))
			// Creation times have millisecond resolution: make each job
			// strictly newer than the one before.
			created := e.getJob(ids[i])["created_at"].(string)
			ct, _ := time.Parse(time.RFC3339, created)
			eventually(t, "the clock to pass "+created, func() bool { return time.Since(ct) > 2*time.Millisecond })
		}

		for _, tc := range []struct {
			query string
			want  []string
		}{
			{"", []string{ids[3], ids[2], ids[1], ids[0]}},
			{"?limit=2", []string{ids[3], ids[2]}},
			{"?limit=500", []string{ids[3], ids[2], ids[1], ids[0]}},
		} {
			t.Run("query="+tc.query, func(t *testing.T) {
				status, body, _ := e.do("GET", "/api/jobs"+tc.query, nil)
				if status != http.StatusOK {
					t.Fatalf("status %d body %v", status, body)
				}
				list, _ := body["jobs"].([]any)
				var got []string
				for _, j := range list {
					job := j.(map[string]any)
					checkJobObject(t, job, "", "steps")
					got = append(got, job["id"].(string))
				}
				if strings.Join(got, ",") != strings.Join(tc.want, ",") {
					t.Fatalf("ids %v, want %v", got, tc.want)
				}
			})
		}
	})
}

func TestGetJob(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		id := e.submit("steps", map[string]any{"steps": 2, "interval_ms": 0})
		job := e.waitState(id, "completed")
		checkJobObject(t, job, id, "steps")
		if string(mustJSON(job["result"])) != `{"steps":2}` {
			t.Errorf("result %v", job["result"])
		}
		if job["error"] != nil || job["attempt"] != 1.0 {
			t.Errorf("error %v attempt %v, want null and 1", job["error"], job["attempt"])
		}
		p, _ := job["progress"].(map[string]any)
		if p["done"] != 2.0 || p["total"] != 2.0 || p["percent"] != 100.0 {
			t.Errorf("progress %v, want 2 of 2, 100%%", p)
		}
		if _, ok := job["artifact"]; ok {
			t.Errorf("a steps job has an artifact link")
		}
		// created <= started <= finished, all RFC 3339.
		var times []time.Time
		for _, k := range []string{"created_at", "started_at", "finished_at"} {
			v, _ := job[k].(string)
			at, err := time.Parse(time.RFC3339, v)
			if err != nil {
				t.Fatalf("%s = %v: %v", k, job[k], err)
			}
			times = append(times, at)
		}
		if times[1].Before(times[0]) || times[2].Before(times[1]) {
			t.Errorf("created %v, started %v, finished %v: out of order", times[0], times[1], times[2])
		}
	})
}

func TestReportJobEndToEnd(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		id := e.submit("report", map[string]any{"rows": 1000, "seed": 7})

		// The artifact is not there before the job completes (or is at
		// once, if the job was quicker than this request).
		if res := e.doRaw("GET", "/api/jobs/"+id+"/artifact", nil); res.status != http.StatusOK {
			wantAPIError(t, res, http.StatusNotFound, CodeNotFound)
		}

		c := e.dial()
		c.send(map[string]any{"op": "subscribe", "group": "job:" + id})
		frames := c.readUntil(isTerminalEvent)
		last := frames[len(frames)-1]
		if last.Event != "result" {
			t.Fatalf("last event %s %s, want result", last.Event, last.Data)
		}
		var ev struct {
			Result struct {
				Summary  json.RawMessage
				Artifact string
			}
		}
		if err := json.Unmarshal(last.Data, &ev); err != nil {
			t.Fatal(err)
		}
		link := "/api/jobs/" + id + "/artifact"
		if ev.Result.Artifact != link {
			t.Errorf("result artifact %q, want %q", ev.Result.Artifact, link)
		}
		var summary map[string]any
		if err := json.Unmarshal(ev.Result.Summary, &summary); err != nil || len(summary) == 0 {
			t.Errorf("result summary %s: want a non-empty object (%v)", ev.Result.Summary, err)
		}

		job := e.getJob(id)
		checkJobObject(t, job, id, "report")
		if job["state"] != "completed" || job["artifact"] != link {
			t.Fatalf("job state %v artifact %v, want completed and %s", job["state"], job["artifact"], link)
		}

		res := e.doRaw("GET", link, nil)
		if res.status != http.StatusOK {
			t.Fatalf("artifact: status %d body %s", res.status, res.body)
		}
		if size, _ := job["artifact_size"].(float64); int(size) != len(res.body) {
			t.Errorf("artifact_size %v, the file has %d bytes", job["artifact_size"], len(res.body))
		}
		if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/csv") {
			t.Errorf("artifact Content-Type %q, want text/csv", ct)
		}
		lines := strings.Split(strings.TrimRight(string(res.body), "\r\n"), "\n")
		if len(lines) != 1001 {
			t.Fatalf("artifact has %d lines, want 1001 (header and 1000 rows)", len(lines))
		}
		cols := strings.Count(lines[0], ",")
		for i, l := range lines {
			if strings.Count(l, ",") != cols {
				t.Fatalf("line %d %q has a different column count than the header %q", i+1, l, lines[0])
			}
		}
	})
}
