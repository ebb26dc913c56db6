package web

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"taskstream/jobs"
	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/web/dashboard"
	"taskstream/wire"
)

// quickDashboard publishes often, so tests see changes at once.
var quickDashboard = dashboard.Config{Interval: 50 * time.Millisecond, LeaderTTL: time.Second, Window: time.Minute}

// startWorker runs a worker with queues on e's Redis, stopped when the
// test ends (Shutdown twice is harmless).
func (e *testEnv) startWorker(queues map[string]int) *jobs.Worker {
	e.t.Helper()
	w := jobs.NewWorker(e.jobs, e.rdb, jobs.WorkerConfig{
		Queues: queues, Concurrency: 4, PollInterval: 20 * time.Millisecond, RetryDelay: 10 * time.Millisecond,
		CancelPoll: 100 * time.Millisecond, ShutdownTimeout: 2 * time.Second, ReconcileInterval: 100 * time.Millisecond,
	})
	if err := w.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(w.Shutdown)
	return w
}

// dashboardSocket subscribes to the dashboard group with the admin token.
func (e *testEnv) dashboardSocket() *wsClient {
	e.t.Helper()
	ws := e.dial("Authorization", "Bearer "+testAdminToken)
	ws.send(map[string]any{"op": wire.OpSubscribe, "group": wire.DashboardGroup().String()})
	if f := ws.read(); f.Type != wire.TypeSubscribed {
		e.t.Fatalf("subscribe to the dashboard: %+v", f)
	}
	return ws
}

// waitSnapshot reads the socket's snapshots until one satisfies cond,
// which returns "" when it holds, or what is still missing.
func (c *wsClient) waitSnapshot(what string, cond func(*dashboard.Snapshot) string) *dashboard.Snapshot {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	missing := "no snapshot"
	for time.Now().Before(deadline) {
		f, err := c.tryRead(10 * time.Second)
		if err != nil {
			c.t.Fatalf("waiting for %s: %v (last: %s)", what, err, missing)
		}
		if f.Type != wire.TypeEvent || f.Event != wire.EventStats {
			continue
		}
		var s dashboard.Snapshot
		if err := json.Unmarshal(f.Data, &s); err != nil {
			c.t.Fatalf("snapshot: %v", err)
		}
		if missing = cond(&s); missing == "" {
			return &s
		}
	}
	c.t.Fatalf("waiting for %s: %s", what, missing)
	return nil
}

func queueOf(s *dashboard.Snapshot, name string) (dashboard.Queue, bool) {
	for _, q := range s.Queues {
		if q.Name == name {
			return q, true
		}
	}
	return dashboard.Queue{}, false
}

func sumSeries(v []*float64, stepMS int64) float64 {
	total := 0.0
	for _, x := range v {
		if x != nil {
			total += *x * float64(stepMS) / 1000
		}
	}
	return total
}

// After a known workload the snapshot shows it: the queues' counts and
// weights, the worker with the job it runs, the failure with its error,
// this replica's sockets and finished jobs, and the charts' totals.
func TestDashboardSnapshotAfterWorkload(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker(), withDashboard(quickDashboard))
		ws := e.dashboardSocket()
		// The charts count what finishes after the publisher's first look
		// (its first snapshot): quick jobs submitted before it would be
		// missed.
		ws.waitSnapshot("a first snapshot", func(*dashboard.Snapshot) string { return "" })
		e.startWorker(map[string]int{"default": 3, "low": 1})

		done1 := e.submit("steps", map[string]any{"steps": 2, "interval_ms": 0})
		done2 := e.submit("steps", map[string]any{"steps": 2, "interval_ms": 0})
		failed := e.submit("steps", map[string]any{"steps": 1, "interval_ms": 0, "fail_at": 1, "fail_times": 10})
		long := e.submit("steps", map[string]any{"steps": 10000, "interval_ms": 50})

		ws.waitSnapshot("the long job running on the worker", func(s *dashboard.Snapshot) string {
			if len(s.Workers) != 1 {
				return fmt.Sprintf("%d workers", len(s.Workers))
			}
			w := s.Workers[0]
			// WORKER_QUEUES default=3 is served as default:high, default and
			// default:low with weights 4×, 2× and 1× (README, Queues and
			// priorities).
			if w.Concurrency != 4 || w.Queues["default:high"] != 12 || w.Queues["default"] != 6 || w.Queues["default:low"] != 3 || w.Queues["low"] != 2 {
				return fmt.Sprintf("worker %+v", w)
			}
			for _, j := range w.Jobs {
				if j.Job == long && j.Type == "steps" && j.Queue == "default" && w.Busy >= 1 {
					return ""
				}
			}
			return fmt.Sprintf("running %+v", w.Jobs)
		})
		if status, body, _ := e.do("POST", "/api/jobs/"+long+"/cancel", nil); status != http.StatusAccepted {
			t.Fatalf("cancel: %d %v", status, body)
		}
		s := ws.waitSnapshot("every job's end counted", func(s *dashboard.Snapshot) string {
			var me *dashboard.Process
			for i, p := range s.Processes {
				if p.ID == e.dash.ID() {
					me = &s.Processes[i]
				}
			}
			if me == nil {
				return fmt.Sprintf("this replica not among %+v", s.Processes)
			}
			want := map[string]uint64{"completed": 2, "failed": 1, "canceled": 1}
			for o, n := range want {
				if me.Finished[o] != n {
					return fmt.Sprintf("finished %v", me.Finished)
				}
			}
			if me.Sockets["websocket"] != 1 || me.Role != dashboard.RoleAPI || me.Subscriptions < 1 || me.Groups < 1 || me.Delivered == 0 {
				return fmt.Sprintf("this replica's report %+v", me)
			}
			q, ok := queueOf(s, "default")
			if !ok || q.Completed != 2 || q.Archived != 2 || q.Active != 0 || q.Pending != 0 || !slices.Equal(q.Weights, []int{6}) {
				return fmt.Sprintf("default queue %+v", q)
			}
			if low, ok := queueOf(s, "low"); !ok || !slices.Equal(low.Weights, []int{2}) {
				return fmt.Sprintf("low queue %+v", low)
			}
			if len(s.Workers) != 1 || s.Workers[0].Busy != 0 {
				return fmt.Sprintf("workers %+v", s.Workers)
			}
			// The charts add up to the jobs (each point is a rate over its step).
			sr := s.Series
			if got := sumSeries(sr.Completed, sr.StepMS); got < 1.9 || got > 2.1 {
				return fmt.Sprintf("completed in the series: %v", got)
			}
			if got, got2 := sumSeries(sr.Failed, sr.StepMS), sumSeries(sr.Canceled, sr.StepMS); got < 0.9 || got > 1.1 || got2 < 0.9 || got2 > 1.1 {
				return fmt.Sprintf("failed %v, canceled %v in the series", got, got2)
			}
			if len(sr.Sockets) != 1 || sumSeries(sr.Delivered, sr.StepMS) == 0 {
				return fmt.Sprintf("sockets %v, delivered %v", sr.Sockets, sumSeries(sr.Delivered, sr.StepMS))
			}
			return ""
		})
		var gotFailed, gotCanceled bool
		for _, f := range s.Failures {
			if f.Job == failed && f.State == "archived" && strings.Contains(f.Error, "failed on purpose") && f.Retried == 3 && f.Type == "steps" {
				gotFailed = true
			}
			if f.Job == long && f.State == "archived" {
				gotCanceled = true
			}
			if f.Job == done1 || f.Job == done2 {
				t.Errorf("a completed job among the failures: %+v", f)
			}
		}
		if !gotFailed || !gotCanceled {
			t.Fatalf("failures %+v: want the failed job's error and the canceled job", s.Failures)
		}
		if len(s.Problems) != 0 {
			t.Fatalf("problems: %v", s.Problems)
		}
	})
}

// The page: signed-in users see it read-only, admins with the actions,
// guests a 403 page that says to sign in; it starts from the latest
// snapshot's position.
func TestDashboardPageByCaller(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e, smtp := smtpEnv(t, srv, withoutWorker(), withDashboard(quickDashboard), withWebConfig(Config{AdminEmails: []string{"Ops@Example.com"}}))
		user, admin := e.newBrowser(), e.newBrowser()
		e.signIn(user, smtp, "user@example.com")
		e.signIn(admin, smtp, "ops@example.com")
		ws := e.dashboardSocket()
		ws.waitSnapshot("a few snapshots", func(*dashboard.Snapshot) string {
			if tail, err := e.log.Tail(context.Background(), wire.DashboardGroup().String(), 1); err != nil || tail.LastSeq < 3 {
				return "fewer than 3"
			}
			return ""
		})

		page := func(c *http.Client) (int, string) {
			req, _ := http.NewRequest("GET", e.http.URL+"/dashboard", nil)
			req.Header.Set("Accept", "text/html,application/xhtml+xml,*/*;q=0.8") // as a browser asks
			res, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
				t.Fatalf("content type %q", ct)
			}
			return res.StatusCode, string(b)
		}
		cases := []struct {
			name   string
			client *http.Client
			status int
			has    []string
			hasNot []string
		}{
			{"guest", e.newBrowser(), http.StatusForbidden, []string{"Sign in to see the dashboard"}, []string{"dashboard.js", "data-admin"}},
			{"user", user, http.StatusOK, []string{`data-admin="false"`, "read-only", "/static/dashboard.js"}, []string{"Sign in to see", "admin-badge"}},
			{"admin by email", admin, http.StatusOK, []string{`data-admin="true"`, "admin-badge", `data-epoch="`}, []string{"read-only"}},
		}
		for _, c := range cases {
			status, body := page(c.client)
			if status != c.status {
				t.Fatalf("%s: status %d", c.name, status)
			}
			for _, s := range c.has {
				if !strings.Contains(body, s) {
					t.Errorf("%s: the page lacks %q", c.name, s)
				}
			}
			for _, s := range c.hasNot {
				if strings.Contains(body, s) {
					t.Errorf("%s: the page has %q", c.name, s)
				}
			}
		}
		// A program (no Accept: text/html) is refused with the protocol's
		// JSON error, not a page.
		if status, body, _ := e.doAs(e.newBrowser(), "GET", "/dashboard", nil); status != http.StatusForbidden || errCode(body) != CodeForbidden {
			t.Errorf("a guest program: %d %v, want 403 forbidden", status, body)
		}
		// The position is just before the latest snapshot: one replayed.
		tail := func() progress.Snapshot {
			tl, err := e.log.Tail(context.Background(), wire.DashboardGroup().String(), 1)
			if err != nil {
				t.Fatal(err)
			}
			return tl
		}
		before := tail()
		_, body := page(user)
		after := tail()
		pos, err := strconv.ParseInt(attr(body, "data-after"), 10, 64)
		if err != nil || pos < before.LastSeq-1 || pos > after.LastSeq-1 || attr(body, "data-epoch") != after.Epoch {
			t.Fatalf("page position after=%d (%v) epoch=%q; the log was at %d, then %d %q", pos, err, attr(body, "data-epoch"), before.LastSeq, after.LastSeq, after.Epoch)
		}
	})
}

func attr(html, name string) string {
	_, rest, ok := strings.Cut(html, name+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// Operator actions: only admins (by email or token), with the origin rules
// of every write; each keeps the job's record and events consistent.
func TestDashboardAdminActions(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e, smtp := smtpEnv(t, srv, withoutWorker(), withWebConfig(Config{AdminEmails: []string{"ops@example.com"}}))
		user, admin := e.newBrowser(), e.newBrowser()
		e.signIn(user, smtp, "user@example.com")
		e.signIn(admin, smtp, "ops@example.com")
		bearer := []string{"Authorization", "Bearer " + testAdminToken}
		insp := e.jobs.Inspector()

		// Jobs submitted by the user, pending (no worker yet).
		submit := func() string {
			status, body, _ := e.doAs(user, "POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]any{"steps": 1, "interval_ms": 0}})
			if status != http.StatusAccepted {
				t.Fatalf("submit: %d %v", status, body)
			}
			return body["id"].(string)
		}
		toDelete, toArchive := submit(), submit()
		taskPath := func(id string) string { return "/api/admin/queues/default/tasks/" + id }

		// Who may act.
		forbidden := []struct{ method, path string }{
			{"POST", "/api/admin/queues/default/pause"},
			{"POST", "/api/admin/queues/default/unpause"},
			{"POST", taskPath(toDelete) + "/retry"},
			{"POST", taskPath(toDelete) + "/archive"},
			{"DELETE", taskPath(toDelete)},
		}
		for _, f := range forbidden {
			for name, c := range map[string]*http.Client{"guest": e.newBrowser(), "user": user} {
				status, body, _ := e.doAs(c, f.method, f.path, nil)
				if status != http.StatusForbidden || errCode(body) != CodeForbidden {
					t.Fatalf("%s %s as %s: %d %v", f.method, f.path, name, status, body)
				}
			}
			// A cross-site write is refused before anything else, admin or not.
			status, body, _ := e.doAs(admin, f.method, f.path, nil, "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site")
			if status != http.StatusForbidden {
				t.Fatalf("%s %s cross-site: %d %v", f.method, f.path, status, body)
			}
		}

		cases := []struct {
			name   string
			client *http.Client
			header []string
			method string
			path   string
			status int
			code   string
		}{
			{"pause", admin, nil, "POST", "/api/admin/queues/default/pause", 200, ""},
			{"pause again is no error", nil, bearer, "POST", "/api/admin/queues/default/pause", 200, ""},
			{"pause an unknown queue", admin, nil, "POST", "/api/admin/queues/nope/pause", 404, CodeNotFound},
			{"delete", admin, nil, "DELETE", taskPath(toDelete), 200, ""},
			{"delete again", admin, nil, "DELETE", taskPath(toDelete), 404, CodeNotFound},
			{"archive", nil, bearer, "POST", taskPath(toArchive) + "/archive", 200, ""},
			{"archive again", admin, nil, "POST", taskPath(toArchive) + "/archive", 409, CodeConflict},
			{"retry from the archive", admin, nil, "POST", taskPath(toArchive) + "/retry", 200, ""},
			{"retry a pending task", admin, nil, "POST", taskPath(toArchive) + "/retry", 409, CodeConflict},
			{"unpause", admin, nil, "POST", "/api/admin/queues/default/unpause", 200, ""},
		}
		for _, c := range cases {
			client := c.client
			if client == nil {
				client = e.newBrowser()
			}
			status, body, _ := e.doAs(client, c.method, c.path, nil, c.header...)
			if status != c.status || (c.code != "" && errCode(body) != c.code) {
				t.Fatalf("%s: %d %v", c.name, status, body)
			}
			switch c.name {
			case "pause":
				if info, err := insp.GetQueueInfo("default"); err != nil || !info.Paused {
					t.Fatalf("after pause: %+v %v", info, err)
				}
			case "delete":
				if body["job"] != toDelete || body["action"] != "delete" {
					t.Fatalf("delete answered %v", body)
				}
				checkJobEnd(t, e, toDelete, jobs.StateCanceled, "deleted from the queue by an operator")
			case "archive":
				checkJobEnd(t, e, toArchive, jobs.StateFailed, "archived by an operator")
			case "retry from the archive":
				if info, err := insp.GetTaskInfo("default", toArchive); err != nil || info.State != asynq.TaskStatePending {
					t.Fatalf("after retry: %+v %v", info, err)
				}
			case "unpause":
				if info, err := insp.GetQueueInfo("default"); err != nil || info.Paused {
					t.Fatalf("after unpause: %+v %v", info, err)
				}
			}
		}
		// The job run again from the archive completes on a worker; the
		// deleted one stays canceled.
		e.startWorker(nil)
		eventually(t, "the job run again completes", func() bool {
			j, err := e.jobs.Get(context.Background(), toArchive)
			return err == nil && j.State == jobs.StateCompleted
		})
		if j, err := e.jobs.Get(context.Background(), toDelete); err != nil || j.State != jobs.StateCanceled {
			t.Fatalf("deleted job: %+v %v", j, err)
		}
		// A job canceled while it ran leaves an archived task; running it
		// again is refused (its job stays canceled), not silently dropped.
		status, body, _ := e.doAs(user, "POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]any{"steps": 100000, "interval_ms": 20}})
		if status != http.StatusAccepted {
			t.Fatalf("submit: %d %v", status, body)
		}
		running := body["id"].(string)
		eventually(t, "the job runs", func() bool {
			j, err := e.jobs.Get(context.Background(), running)
			return err == nil && j.State == jobs.StateActive
		})
		if status, body, _ := e.doAs(user, "POST", "/api/jobs/"+running+"/cancel", nil); status != http.StatusAccepted {
			t.Fatalf("cancel: %d %v", status, body)
		}
		eventually(t, "the canceled job's task archived", func() bool {
			info, err := insp.GetTaskInfo("default", running)
			return err == nil && info.State == asynq.TaskStateArchived
		})
		if status, body, _ := e.doAs(admin, "POST", taskPath(running)+"/retry", nil); status != http.StatusConflict || !strings.Contains(body["error"].(map[string]any)["message"].(string), "canceled") {
			t.Fatalf("retry a canceled job's task: %d %v", status, body)
		}
		checkJobEnd(t, e, running, jobs.StateCanceled, "")
	})
}

// checkJobEnd checks that job id's record and its events agree on its end:
// state with reason, announced once, as its last event.
func checkJobEnd(t *testing.T, e *testEnv, id, state, reason string) {
	t.Helper()
	j, err := e.jobs.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	got := ""
	if j.Error != nil {
		got = *j.Error
	}
	if j.State != state || got != reason {
		t.Fatalf("job %s: state %s error %q, want %s %q", id, j.State, got, state, reason)
	}
	snap, err := e.log.Read(context.Background(), jobs.Group(id), 0)
	if err != nil {
		t.Fatal(err)
	}
	ends := 0
	for _, ev := range snap.Events {
		var d struct {
			State string `json:"state"`
			Error string `json:"error"`
		}
		if ev.Name == wire.EventState && json.Unmarshal(ev.Data, &d) == nil && wire.Terminal(d.State) {
			ends++
			if d.State != state || d.Error != reason {
				t.Fatalf("job %s end event %s", id, ev.Data)
			}
		}
	}
	last := snap.Events[len(snap.Events)-1]
	if ends != 1 || !jobs.FinalEvent(last.Name, last.Data) || j.LastSeq != last.Seq {
		t.Fatalf("job %s: %d end events, last %s %s (seq %d, job says %d)", id, ends, last.Name, last.Data, last.Seq, j.LastSeq)
	}
}
