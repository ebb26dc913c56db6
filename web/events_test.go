package web

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

// sseEvent is one parsed Server-Sent Event.
type sseEvent struct {
	ID, Event string
	Data      frame
}

// readSSE reads a whole SSE stream (until the server ends it) from path.
func (e *testEnv) readSSE(path string, header ...string) (*http.Response, []sseEvent) {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.http.URL+path, nil)
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := e.client.Do(req.WithContext(ctx))
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	var out []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.Event != "" {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.ID = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			cur.Event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &cur.Data); err != nil {
				e.t.Fatalf("data is not JSON: %q", line)
			}
		}
	}
	if err := sc.Err(); err != nil {
		e.t.Fatalf("stream did not end by itself: %v", err)
	}
	return res, out
}

// SSE: subscribed first, then every event with id = seq and the socket's
// frame as data; the stream ends after the job's final event; a
// Last-Event-ID resumes after that seq.
func TestSSEFollowsJobToItsEnd(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		id := e.submit("steps", map[string]any{"steps": 4, "interval_ms": 10})
		res, events := e.readSSE("/api/jobs/" + id + "/events")
		if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Fatalf("Content-Type %q", ct)
		}
		if res.Header.Get("X-Accel-Buffering") != "no" {
			t.Fatal("SSE must tell proxies not to buffer")
		}
		if events[0].Event != "subscribed" || events[0].Data.Type != "subscribed" {
			t.Fatalf("first SSE event %+v, want subscribed", events[0])
		}
		evs := events[1:]
		for i, ev := range evs {
			if ev.ID != fmt.Sprint(i+1) || ev.Data.Seq != int64(i+1) || ev.Event != ev.Data.Event || ev.Data.Group != "job:"+id {
				t.Fatalf("SSE event %d = %+v", i, ev)
			}
		}
		if last := evs[len(evs)-1]; last.Event != "result" {
			t.Fatalf("stream ended after %q, want result", last.Event)
		}

		_, resumed := e.readSSE("/api/jobs/"+id+"/events", "Last-Event-ID", "3")
		if resumed[0].Data.Replayed != len(evs)-3 || !resumed[0].Data.Recovered {
			t.Fatalf("resume subscribed %+v, want %d replayed, recovered", resumed[0].Data, len(evs)-3)
		}
		if resumed[1].ID != "4" {
			t.Fatalf("resumed at id %s, want 4", resumed[1].ID)
		}
	})
}

// Long-poll: history at once, then wait for what is newer than after.
func TestLongPoll(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		group := "chat:poll"
		path := "/api/groups/" + url.PathEscape(group) + "/events"
		for i := range 3 {
			if _, err := e.log.Publish(context.Background(), group, "message", i); err != nil {
				t.Fatal(err)
			}
		}
		status, body, _ := e.do("GET", path+"?after=1", nil)
		if status != 200 {
			t.Fatalf("status %d %v", status, body)
		}
		evs := body["events"].([]any)
		if len(evs) != 2 || body["last_seq"].(float64) != 3 || body["recovered"] != true || body["epoch"] == "" {
			t.Fatalf("long-poll answer %v", body)
		}
		// Nothing newer: wait=0 answers at once with no events.
		_, body, _ = e.do("GET", path+"?after=3&wait=0", nil)
		if len(body["events"].([]any)) != 0 || body["last_seq"].(float64) != 3 {
			t.Fatalf("empty poll %v", body)
		}
		// A poll that waits gets the next event when it is published.
		done := make(chan map[string]any)
		go func() {
			_, b, _ := e.do("GET", path+"?after=3&wait=30", nil)
			done <- b
		}()
		eventually(t, "the poll to subscribe", func() bool { return e.hub.Stats().Subscribers == 1 })
		if _, err := e.log.Publish(context.Background(), group, "message", "late"); err != nil {
			t.Fatal(err)
		}
		body = <-done
		evs = body["events"].([]any)
		if len(evs) != 1 || evs[0].(map[string]any)["seq"].(float64) != 4 {
			t.Fatalf("waiting poll got %v", body)
		}
	})
}

// Upgrade on the events endpoint gives a socket already subscribed.
func TestEventsEndpointUpgradesToSocket(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	id := e.submit("steps", map[string]any{"steps": 3, "interval_ms": 10})
	c := dialWSJar(t, e.client.Jar, "ws"+strings.TrimPrefix(e.http.URL, "http")+"/api/jobs/"+id+"/events?after=0")
	if f := c.read(); f.Type != "subscribed" || f.Group != "job:"+id {
		t.Fatalf("first frame %+v", f)
	}
	frames := c.readUntil(isTerminalEvent)
	if frames[0].Seq != 1 || frames[len(frames)-1].Event != "result" {
		t.Fatalf("frames %+v", frames)
	}
}

func TestEventsBadInput(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker())
	cases := []struct {
		path   string
		status int
		code   string
	}{
		{"/api/jobs/nope/events", 404, CodeNotFound},
		{"/api/groups/" + url.PathEscape("bad group") + "/events", 400, CodeBadRequest},
		{"/api/groups/user%3Asomeone/events", 403, CodeForbidden},
		{"/api/groups/chat%3Aok/events?after=-1", 400, CodeBadRequest},
		{"/api/groups/chat%3Aok/events?wait=61", 400, CodeBadRequest},
	}
	for _, tc := range cases {
		status, body, _ := e.do("GET", tc.path, nil)
		errBody, _ := body["error"].(map[string]any)
		if status != tc.status || errBody["code"] != tc.code {
			t.Errorf("%s: %d %v, want %d %s", tc.path, status, body, tc.status, tc.code)
		}
	}
}

// Shutdown ends open SSE streams so the HTTP server can stop.
func TestShutdownEndsSSE(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker())
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		e.readSSE("/api/groups/chat%3Alive/events")
	}()
	eventually(t, "the stream to subscribe", func() bool { return e.hub.Stats().Subscribers == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.web.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ended:
	case <-time.After(15 * time.Second):
		t.Fatal("SSE stream still open after shutdown")
	}
}

// An idle SSE stream gets comment heartbeats.
func TestSSEHeartbeat(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker(), withWebConfig(Config{SSEHeartbeat: 20 * time.Millisecond}))
	req, _ := http.NewRequest("GET", e.http.URL+"/api/groups/chat%3Aquiet/events", nil)
	req.Header.Set("Accept", "text/event-stream")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := e.client.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if sc.Text() == ": ping" {
			return
		}
	}
	t.Fatalf("no heartbeat before the stream ended: %v", sc.Err())
}

// A lagged stream sink reports it and queues no empty item (which the SSE
// and long-poll loops would dereference).
func TestBufferSinkLagged(t *testing.T) {
	b := newBufferSink(10)
	b.Send(&progress.Event{Seq: 1})
	b.Lagged()
	items, lagged, failed := b.take()
	if !lagged || len(items) != 1 || items[0].ev == nil || failed != nil {
		t.Fatalf("items %+v lagged %v", items, lagged)
	}
}
