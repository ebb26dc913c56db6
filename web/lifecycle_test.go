package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"taskstream/progress/progresstest"
)

// stateData is the payload of a "state" event.
type stateData struct {
	State   string `json:"state"`
	Attempt int    `json:"attempt"`
	Error   string `json:"error"`
	Message string `json:"message"`
}

// watchToEnd subscribes a new socket to job id and returns its event
// frames up to and including the job's last event, checking that seqs
// run from 1 with no gap.
func (e *testEnv) watchToEnd(id string) []frame {
	e.t.Helper()
	c := e.dial()
	c.send(map[string]any{"op": "subscribe", "group": "job:" + id, "ref": "w"})
	if f := c.read(); f.Type != "subscribed" {
		e.t.Fatalf("got %+v, want subscribed", f)
	}
	frames := c.readUntil(isTerminalEvent)
	checkSeqs(e.t, frames)
	return frames
}

func checkSeqs(t testing.TB, frames []frame) {
	t.Helper()
	for i, f := range frames {
		if f.Type != "event" || f.Seq != int64(i+1) {
			t.Fatalf("frame %d = %+v, want event seq %d", i, f, i+1)
		}
	}
}

// states returns the "state" events among frames, decoded.
func states(t testing.TB, frames []frame) []stateData {
	t.Helper()
	var out []stateData
	for _, f := range frames {
		if f.Event != "state" {
			continue
		}
		var s stateData
		if err := json.Unmarshal(f.Data, &s); err != nil {
			t.Fatalf("state event %s: %v", f.Data, err)
		}
		out = append(out, s)
	}
	return out
}

func stateNames(ss []stateData) string {
	var names []string
	for _, s := range ss {
		names = append(names, fmt.Sprintf("%s/%d", s.State, s.Attempt))
	}
	return strings.Join(names, " ")
}

// quiet fails if c receives any frame within d: the job is over, so
// nothing more may arrive (in particular no "active" of a retry).
func quiet(t *testing.T, c *wsClient, d time.Duration) {
	t.Helper()
	f, err := c.tryRead(d)
	if err == nil {
		t.Fatalf("frame after the job ended: %+v", f)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("socket ended while waiting: %v", err)
	}
}

// A run that fails once is retried and then completes: pending, active 1,
// retry 1 (with the error), active 2, completed, result.
func TestRetryThenComplete(t *testing.T) {
	t.Parallel()
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		id := e.submit("steps", map[string]any{"steps": 3, "interval_ms": 10, "fail_at": 2, "fail_times": 1})
		frames := e.watchToEnd(id)
		if last := frames[len(frames)-1]; last.Event != "result" || string(last.Data) != `{"result":{"steps":3}}` {
			t.Fatalf("last event %s %s, want the result", last.Event, last.Data)
		}
		ss := states(t, frames)
		if got := stateNames(ss); got != "pending/0 active/1 retry/1 active/2 completed/0" {
			t.Fatalf("states %q, want pending, active 1, retry 1, active 2, completed", got)
		}
		if !strings.Contains(ss[2].Error, "step 2 failed") {
			t.Errorf("retry event error %q, want the run's error", ss[2].Error)
		}
		// Progress of the second attempt starts over from 0 and reaches 3.
		var lastProgress struct{ Done, Total int64 }
		_ = json.Unmarshal(frames[len(frames)-3].Data, &lastProgress)
		if frames[len(frames)-3].Event != "progress" || lastProgress.Done != 3 || lastProgress.Total != 3 {
			t.Errorf("before completed: %s %s, want progress 3 of 3", frames[len(frames)-3].Event, frames[len(frames)-3].Data)
		}

		job := e.getJob(id)
		checkJobObject(t, job, id, "steps")
		if job["state"] != "completed" || job["attempt"] != 2.0 {
			t.Errorf("job state %v attempt %v, want completed 2", job["state"], job["attempt"])
		}
	})
}

// A run that always fails is retried MaxRetry times (3 for steps, the
// default) and then fails: the last event is "failed", and the job says
// failed with the error. Retry delays are 1 s, 2 s and 4 s.
func TestAlwaysFailingJobFails(t *testing.T) {
	t.Parallel()
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		typ, ok := e.jobs.Registry().Lookup("steps")
		if !ok {
			t.Fatal("no steps type")
		}
		attempts := typ.MaxRetry + 1
		if attempts > 4 {
			t.Fatalf("steps has MaxRetry %d: the retry delays (2^n s) make this test too slow; use a type with fewer retries", typ.MaxRetry)
		}
		id := e.submit("steps", map[string]any{"steps": 1, "interval_ms": 0, "fail_at": 1})
		frames := e.watchToEnd(id)

		last := frames[len(frames)-1]
		var failed struct{ Error string }
		_ = json.Unmarshal(last.Data, &failed)
		if last.Event != "failed" || !strings.Contains(failed.Error, "step 1 failed") {
			t.Fatalf("last event %s %s, want failed with the run's error", last.Event, last.Data)
		}
		want := []string{"pending/0"}
		for a := 1; a < attempts; a++ {
			want = append(want, fmt.Sprintf("active/%d", a), fmt.Sprintf("retry/%d", a))
		}
		want = append(want, fmt.Sprintf("active/%d", attempts), "failed/0")
		ss := states(t, frames)
		if got := stateNames(ss); got != strings.Join(want, " ") {
			t.Fatalf("states %q, want %q", got, strings.Join(want, " "))
		}
		for _, s := range ss {
			if (s.State == "retry" || s.State == "failed") && !strings.Contains(s.Error, "step 1 failed") {
				t.Errorf("%s event error %q, want the run's error", s.State, s.Error)
			}
		}

		job := e.getJob(id)
		checkJobObject(t, job, id, "steps")
		if job["state"] != "failed" || job["attempt"] != float64(attempts) {
			t.Errorf("job state %v attempt %v, want failed %d", job["state"], job["attempt"], attempts)
		}
		if msg, _ := job["error"].(string); !strings.Contains(msg, "step 1 failed") {
			t.Errorf("job error %v, want the run's error", job["error"])
		}
		if job["result"] != nil {
			t.Errorf("failed job has result %v", job["result"])
		}
		status, body, _ := e.do("POST", "/api/jobs/"+id+"/cancel", nil)
		if status != http.StatusConflict {
			t.Errorf("cancel of a failed job: %d %v, want 409", status, body)
		}
	})
}

// Cancelling a running job stops it: the socket sees state canceled as
// the last event, and the job is not retried.
func TestCancelActiveJob(t *testing.T) {
	t.Parallel()
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		id := e.submit("steps", map[string]any{"steps": 1000, "interval_ms": 50})
		c := e.dial()
		c.send(map[string]any{"op": "subscribe", "group": "job:" + id})
		frames := c.readUntil(func(f frame) bool { return f.Event == "progress" })

		status, job, _ := e.do("POST", "/api/jobs/"+id+"/cancel", nil)
		if status != http.StatusAccepted {
			t.Fatalf("cancel: status %d body %v", status, job)
		}
		checkJobObject(t, job, id, "steps")

		frames = append(frames, c.readUntil(isTerminalEvent)...)
		checkSeqs(t, frames[1:]) // frames[0] is the subscribed frame
		ss := states(t, frames)
		if got := stateNames(ss); got != "pending/0 active/1 canceled/0" {
			t.Fatalf("states %q, want pending, active 1, canceled", got)
		}
		if frames[len(frames)-1].Event != "state" {
			t.Fatalf("last event %s, want state canceled", frames[len(frames)-1].Event)
		}
		var lastProgress struct{ Done int64 }
		for _, f := range frames {
			if f.Event == "progress" {
				_ = json.Unmarshal(f.Data, &lastProgress)
			}
		}
		if lastProgress.Done >= 1000 {
			t.Errorf("the job ran to the end (progress %d) despite the cancel", lastProgress.Done)
		}

		// Not retried: nothing more on the socket, and the task is out of
		// Asynq's queues for good.
		quiet(t, c, time.Second)
		job = e.getJob(id)
		if job["state"] != "canceled" || job["attempt"] != 1.0 {
			t.Errorf("job state %v attempt %v, want canceled 1", job["state"], job["attempt"])
		}
		info, err := e.jobs.Inspector().GetTaskInfo("default", id)
		if err == nil && info.State != asynq.TaskStateArchived {
			t.Errorf("asynq task state %v, want archived (not to be retried)", info.State)
		} else if err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
			t.Errorf("inspect task: %v", err)
		}
		status, body, _ := e.do("POST", "/api/jobs/"+id+"/cancel", nil)
		if status != http.StatusConflict {
			t.Errorf("second cancel: %d %v, want 409", status, body)
		}
	})
}

// Cancelling a queued job ends it at once; a second cancel conflicts.
func TestCancelPendingJob(t *testing.T) {
	t.Parallel()
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		id := e.submit("steps", map[string]any{"steps": 5})
		other := e.submit("steps", map[string]any{"steps": 5})
		c := e.dial()
		c.send(map[string]any{"op": "subscribe", "group": "job:" + id})
		frames := c.readUntil(func(f frame) bool { return f.Event == "state" })

		status, job, _ := e.do("POST", "/api/jobs/"+id+"/cancel", nil)
		if status != http.StatusAccepted {
			t.Fatalf("cancel: status %d body %v", status, job)
		}
		checkJobObject(t, job, id, "steps")
		if job["state"] != "canceled" {
			t.Errorf("cancel answered state %v, want canceled", job["state"])
		}

		frames = append(frames, c.readUntil(isTerminalEvent)...)
		checkSeqs(t, frames[1:])
		if got := stateNames(states(t, frames)); got != "pending/0 canceled/0" {
			t.Fatalf("states %q, want pending, canceled", got)
		}
		quiet(t, c, 200*time.Millisecond)

		if job := e.getJob(id); job["state"] != "canceled" {
			t.Errorf("GET state %v, want canceled", job["state"])
		}
		res := e.doRaw("POST", "/api/jobs/"+id+"/cancel", nil)
		wantAPIError(t, res, http.StatusConflict, CodeConflict)

		// The other queued job is untouched.
		if job := e.getJob(other); job["state"] != "pending" {
			t.Errorf("other job is %v, want pending", job["state"])
		}
	})
}
