package web

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

// firstSSE opens an SSE stream on path as client and returns the status,
// the headers and, for a 200, the first event (then hangs up); for an
// error, the decoded JSON body.
func (e *testEnv) firstSSE(client *http.Client, path string, header ...string) (int, http.Header, sseEvent, map[string]any) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.http.URL+path, nil)
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(res.Body)
		var body map[string]any
		_ = json.Unmarshal(raw, &body)
		return res.StatusCode, res.Header, sseEvent{}, body
	}
	var cur sseEvent
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "" && cur.Event != "":
			return res.StatusCode, res.Header, cur, nil
		case strings.HasPrefix(line, "event: "):
			cur.Event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &cur.Data); err != nil {
				e.t.Fatalf("data is not JSON: %q", line)
			}
		}
	}
	e.t.Fatalf("stream ended before its first event: %v", sc.Err())
	return 0, nil, sseEvent{}, nil
}

// Every "after" gets a typed answer at once, on the socket, SSE (after and
// Last-Event-ID) and long-poll: a position beyond the log, up to
// 9223372036854775807, is subscribed with recovered:false and the whole
// history (a position this log never had); anything that is not an
// integer from 0 to 9223372036854775807 is bad_request (with the frame's
// ref on the socket, 400 over HTTP), and the socket stays open.
func TestSubscribeAnyAfter(t *testing.T) {
	const n = 3
	positions := []struct {
		after     string
		recovered bool
		replayed  int
	}{
		{"9223372036854775807", false, n},
		{"9223372036854775806", false, n},
		{"4", false, n},
		{"3", true, 0},
		{"1", true, n - 1},
		{"0", true, n},
	}
	bad := []string{"-1", "1.5", "1e300", "1e3", `"x"`, `"5"`, "9223372036854775808", "-9223372036854775808", "true", "{}", "[1]"}
	badHTTP := []string{"-1", "1.5", "1e300", "1e3", "x", "+5", "9223372036854775808", "0x10"}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		client, group := e.privateGroup()
		var epoch string
		for i := range n {
			ev, err := e.log.Publish(context.Background(), group, "notification", map[string]any{"title": fmt.Sprint(i)})
			if err != nil {
				t.Fatal(err)
			}
			epoch = ev.Epoch
		}
		check := func(how string, f frame) {
			t.Helper()
			if f.Type != "subscribed" || f.LastSeq != n || f.Epoch != epoch {
				t.Fatalf("%s: %+v, want subscribed at last_seq %d", how, f, n)
			}
		}

		t.Run("socket", func(t *testing.T) {
			ws := e.dialAs(client)
			other := e.dialAs(client) // another subscriber of the group, waiting beside
			for i, p := range positions {
				ref := fmt.Sprint(i)
				other.send(map[string]any{"op": "subscribe", "group": group, "ref": "o" + ref})
				if err := ws.conn.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"op":"subscribe","group":%q,"after":%s,"ref":%q}`, group, p.after, ref)); err != nil {
					t.Fatal(err)
				}
				got := ws.readUntil(func(f frame) bool { return f.Type == "subscribed" || f.Type == "error" })
				f := got[len(got)-1]
				check("after "+p.after, f)
				if string(f.Ref) != `"`+ref+`"` || f.Recovered != p.recovered || f.Replayed != p.replayed {
					t.Fatalf("after %s: %+v, want ref %s, recovered %v, replayed %d", p.after, f, ref, p.recovered, p.replayed)
				}
				for range f.Replayed {
					if ev := ws.read(); ev.Type != "event" {
						t.Fatalf("after %s: %+v in the replay", p.after, ev)
					}
				}
				o := other.readUntil(func(f frame) bool { return f.Type == "subscribed" || f.Type == "error" })
				check("the other subscriber", o[len(o)-1])
				for range o[len(o)-1].Replayed {
					other.read()
				}
			}
			for i, a := range bad {
				ref := fmt.Sprintf("bad%d", i)
				if err := ws.conn.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"op":"subscribe","group":%q,"after":%s,"ref":%q}`, group, a, ref)); err != nil {
					t.Fatal(err)
				}
				f := ws.read()
				if f.Type != "error" || f.Code != CodeBadRequest || string(f.Ref) != `"`+ref+`"` || !strings.Contains(f.Message, "after") {
					t.Fatalf("after %s: %+v, want bad_request with ref %s", a, f, ref)
				}
			}
			ws.send(map[string]any{"op": "ping", "ref": "still-open"})
			if f := ws.read(); f.Type != "pong" {
				t.Fatalf("after the bad frames: %+v, want pong", f)
			}
		})

		path := "/api/groups/" + url.PathEscape(group) + "/events"
		t.Run("sse", func(t *testing.T) {
			for _, p := range positions {
				for _, how := range []string{"after", "Last-Event-ID"} {
					var status int
					var ev sseEvent
					var body map[string]any
					if how == "after" {
						status, _, ev, body = e.firstSSE(client, path+"?after="+p.after)
					} else {
						status, _, ev, body = e.firstSSE(client, path, "Last-Event-ID", p.after)
					}
					if status != http.StatusOK || ev.Event != "subscribed" {
						t.Fatalf("%s %s: status %d, first event %+v, body %v", how, p.after, status, ev, body)
					}
					check(how+" "+p.after, ev.Data)
					if ev.Data.Recovered != p.recovered || ev.Data.Replayed != p.replayed {
						t.Fatalf("%s %s: %+v", how, p.after, ev.Data)
					}
				}
			}
			for _, a := range badHTTP {
				for _, how := range []string{"after", "Last-Event-ID"} {
					var status int
					var body map[string]any
					if how == "after" {
						status, _, _, body = e.firstSSE(client, path+"?after="+url.QueryEscape(a))
					} else {
						status, _, _, body = e.firstSSE(client, path, "Last-Event-ID", a)
					}
					if status != http.StatusBadRequest || errorCode(body) != CodeBadRequest {
						t.Fatalf("%s %q: status %d body %v, want 400 bad_request", how, a, status, body)
					}
				}
			}
		})

		t.Run("long-poll", func(t *testing.T) {
			for _, p := range positions {
				status, body, _ := e.doAs(client, "GET", path+"?wait=0&after="+p.after, nil)
				if status != http.StatusOK || body["recovered"] != p.recovered || len(body["events"].([]any)) != p.replayed ||
					body["last_seq"] != float64(n) || body["epoch"] != epoch {
					t.Fatalf("after %s: status %d body %v", p.after, status, body)
				}
			}
			for _, a := range badHTTP {
				status, body, _ := e.doAs(client, "GET", path+"?wait=0&after="+url.QueryEscape(a), nil)
				if status != http.StatusBadRequest || errorCode(body) != CodeBadRequest {
					t.Fatalf("after %q: status %d body %v, want 400 bad_request", a, status, body)
				}
			}
		})
	})
}

// errorCode is the code of an error body ("" when it is none).
func errorCode(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// Redis down: every route that needs Redis answers 503 unavailable with
// Retry-After (never 500), /healthz stays 200 (liveness), /readyz is 503
// with the reason until Redis is back, and a socket whose subscribe or
// publish needs Redis is closed with 1013 (try again later). The elapsed
// times are logged, not asserted: the answer must come, and be the right
// one, before the test's own deadline.
func TestRedisUnavailable(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker(), withProductionRedis())
		id := e.submit("steps", map[string]any{"steps": 2})
		userGroup := "user:" + e.me(e.client)
		eventually(t, "/readyz to say ready", func() bool {
			status, body, _ := e.do("GET", "/readyz", nil)
			return status == http.StatusOK && body["status"] == "ready"
		})
		// Sockets opened while Redis is up (opening one needs the session).
		wsJob, wsUser, wsChat := e.dial(), e.dial(), e.dial()

		srv.Stop()

		for _, path := range []string{"/api/jobs", "/api/jobs/" + id, "/api/jobs/" + id + "/events?wait=0"} {
			start := time.Now()
			status, body, h := e.do("GET", path, nil)
			t.Logf("%s: GET %s answered %d after %v", srv.Kind, path, status, time.Since(start))
			if status != http.StatusServiceUnavailable || errorCode(body) != CodeUnavailable || h.Get("Retry-After") == "" {
				t.Fatalf("GET %s with Redis down: %d %v Retry-After %q, want 503 unavailable with Retry-After", path, status, body, h.Get("Retry-After"))
			}
		}
		status, h, _, body := e.firstSSE(e.client, "/api/groups/"+url.PathEscape(userGroup)+"/events")
		if status != http.StatusServiceUnavailable || errorCode(body) != CodeUnavailable || h.Get("Retry-After") == "" {
			t.Fatalf("SSE with Redis down: %d %v", status, body)
		}
		if status, body, _ := e.do("GET", "/healthz", nil); status != http.StatusOK {
			t.Fatalf("/healthz with Redis down: %d %v", status, body)
		}
		status, ready, _ := e.do("GET", "/readyz", nil)
		msg, _ := ready["error"].(map[string]any)["message"].(string)
		if status != http.StatusServiceUnavailable || errorCode(ready) != CodeUnavailable || !strings.Contains(msg, "redis") {
			t.Fatalf("/readyz with Redis down: %d %v", status, ready)
		}
		t.Logf("/readyz: %s", msg)

		for _, c := range []struct {
			ws    *wsClient
			frame map[string]any
		}{
			{wsJob, map[string]any{"op": "subscribe", "group": "job:" + id, "ref": "1"}},
			{wsUser, map[string]any{"op": "subscribe", "group": userGroup, "ref": "2"}},
			{wsChat, map[string]any{"op": "publish", "group": "chat:down", "data": map[string]any{"text": "hi"}, "ref": "3"}},
		} {
			start := time.Now()
			c.ws.send(c.frame)
			code := c.ws.closeCode()
			t.Logf("%v: closed with %d after %v", c.frame, code, time.Since(start))
			if code != websocket.CloseTryAgainLater {
				t.Fatalf("%v with Redis down: close %d, want 1013", c.frame, code)
			}
		}

		srv.Restart(t)
		eventually(t, "/readyz to say ready after the restart", func() bool {
			status, body, _ := e.do("GET", "/readyz", nil)
			return status == http.StatusOK && body["status"] == "ready"
		})
		if status, body, _ := e.do("GET", "/api/job-types", nil); status != http.StatusOK {
			t.Fatalf("after the restart: %d %v", status, body)
		}
	})
}

// /readyz is 503 while the server shuts down, so load balancers stop
// sending it traffic.
func TestReadyzWhileShuttingDown(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker())
	eventually(t, "/readyz to say ready", func() bool {
		status, _, _ := e.do("GET", "/readyz", nil)
		return status == http.StatusOK
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.web.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if status, body, _ := e.do("GET", "/readyz", nil); status != http.StatusServiceUnavailable || errorCode(body) != CodeUnavailable {
		t.Fatalf("/readyz while shutting down: %d %v", status, body)
	}
}

// toAPIError is the one mapping from errors to codes.
func TestToAPIError(t *testing.T) {
	s := newEnv(t, progresstest.Embedded(t), withoutWorker()).web
	tests := []struct {
		name  string
		err   error
		code  string
		retry bool
	}{
		{"api error", apiErr(CodeNotFound, "x"), CodeNotFound, false},
		{"unavailable api error gets Retry-After", apiErr(CodeUnavailable, "shutting down"), CodeUnavailable, true},
		{"redis unavailable", fmt.Errorf("read: %w", progress.ErrUnavailable), CodeUnavailable, true},
		{"wrapped deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), CodeUnavailable, true},
		{"anything else", fmt.Errorf("boom"), CodeInternal, false},
	}
	for _, tc := range tests {
		ae := s.toAPIError(tc.err)
		if ae.Code != tc.code || (ae.RetryAfter > 0) != tc.retry {
			t.Errorf("%s: %+v, want code %s, Retry-After %v", tc.name, ae, tc.code, tc.retry)
		}
	}
}

// A frozen Redis (SIGSTOP: connections accepted, nothing answered) is
// told like a stopped one: 503 unavailable with Retry-After once the
// client's read timeout runs out, and /readyz 503 until it runs again.
func TestRedisFrozen(t *testing.T) {
	srv := progresstest.Real(t)
	e := newEnv(t, srv, withoutWorker(), withProductionRedis())
	e.submit("steps", map[string]any{"steps": 2})
	eventually(t, "/readyz to say ready", func() bool {
		status, _, _ := e.do("GET", "/readyz", nil)
		return status == http.StatusOK
	})
	srv.Pause(t)
	start := time.Now()
	status, body, h := e.do("GET", "/api/jobs", nil)
	t.Logf("GET /api/jobs on a frozen Redis answered %d after %v", status, time.Since(start))
	if status != http.StatusServiceUnavailable || errorCode(body) != CodeUnavailable || h.Get("Retry-After") == "" {
		t.Fatalf("GET /api/jobs on a frozen Redis: %d %v Retry-After %q", status, body, h.Get("Retry-After"))
	}
	start = time.Now()
	status, body, _ = e.do("GET", "/readyz", nil)
	t.Logf("/readyz on a frozen Redis answered %d after %v: %v", status, time.Since(start), body)
	if status != http.StatusServiceUnavailable || errorCode(body) != CodeUnavailable {
		t.Fatalf("/readyz on a frozen Redis: %d %v", status, body)
	}
	srv.Resume()
	eventually(t, "/readyz after the resume", func() bool {
		status, _, _ := e.do("GET", "/readyz", nil)
		return status == http.StatusOK
	})
	if status, body, _ := e.do("GET", "/api/jobs", nil); status != http.StatusOK {
		t.Fatalf("after the resume: %d %v", status, body)
	}
}
