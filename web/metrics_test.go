package web

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"taskstream/progress/progresstest"
	"taskstream/web/metrics"
)

// scrape is one parsed GET /metrics.
type scrape map[string]*dto.MetricFamily

// scrape fetches /metrics over HTTP, as Prometheus would: no cookies.
func (e *testEnv) scrape() scrape {
	e.t.Helper()
	res, err := http.Get(e.http.URL + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		e.t.Fatalf("GET /metrics: status %d", res.StatusCode)
	}
	if c := res.Header.Get("Set-Cookie"); c != "" {
		e.t.Fatalf("GET /metrics set a cookie (a scraper must not get a session): %s", c)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		e.t.Fatalf("parse /metrics: %v", err)
	}
	return families
}

// find returns the sample of family name whose labels are exactly labels
// (name, value pairs).
func (s scrape) find(name string, labels ...string) (*dto.Metric, bool) {
	mf := s[name]
	if mf == nil {
		return nil, false
	}
	for _, m := range mf.GetMetric() {
		if len(m.GetLabel())*2 != len(labels) {
			continue
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
				return l.GetName() == labels[i] && l.GetValue() == labels[i+1]
			}) {
				match = false
			}
		}
		if match {
			return m, true
		}
	}
	return nil, false
}

// value is a counter's or gauge's value, or a histogram's sample count.
func (s scrape) value(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	m, ok := s.find(name, labels...)
	if !ok {
		t.Fatalf("no sample %s%v in /metrics", name, labels)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	t.Fatalf("%s%v has no value", name, labels)
	return 0
}

// Every family is in the first scrape, with a zero sample for each label
// value known in advance, and of the right type.
func TestMetricsEveryFamilyAtStartup(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		s := e.scrape()
		types := e.jobs.Registry().Types()
		queues := e.jobs.Registry().Queues()
		type sample struct {
			name   string
			typ    dto.MetricType
			labels []string
		}
		var want []sample
		add := func(name string, typ dto.MetricType, labels ...string) {
			want = append(want, sample{name, typ, labels})
		}
		for _, tr := range metrics.Transports {
			add("taskstream_sockets", dto.MetricType_GAUGE, "transport", tr)
		}
		for _, k := range metrics.Kinds {
			add("taskstream_subscriptions", dto.MetricType_GAUGE, "kind", k)
			add("taskstream_events_published_total", dto.MetricType_COUNTER, "kind", k)
			add("taskstream_events_delivered_total", dto.MetricType_COUNTER, "kind", k)
		}
		add("taskstream_hub_groups", dto.MetricType_GAUGE)
		for _, c := range metrics.CloseCodes {
			add("taskstream_socket_closes_total", dto.MetricType_COUNTER, "code", strconv.Itoa(c))
		}
		add("taskstream_send_queue_overflows_total", dto.MetricType_COUNTER)
		add("taskstream_replay_events_total", dto.MetricType_COUNTER)
		add("taskstream_publish_seconds", dto.MetricType_HISTOGRAM)
		for _, typ := range types {
			add("taskstream_jobs_submitted_total", dto.MetricType_COUNTER, "type", typ.Name)
			add("taskstream_job_duration_seconds", dto.MetricType_HISTOGRAM, "type", typ.Name)
			for _, o := range metrics.Outcomes {
				add("taskstream_jobs_finished_total", dto.MetricType_COUNTER, "type", typ.Name, "outcome", o)
			}
		}
		add("taskstream_job_queue_wait_seconds", dto.MetricType_HISTOGRAM)
		for _, q := range queues {
			for _, st := range metrics.QueueStates {
				add("asynq_queue_size", dto.MetricType_GAUGE, "queue", q, "state", st)
			}
			add("asynq_queue_latency_seconds", dto.MetricType_GAUGE, "queue", q)
		}
		for _, w := range want {
			t.Run(w.name+fmt.Sprint(w.labels), func(t *testing.T) {
				m, ok := s.find(w.name, w.labels...)
				if !ok {
					t.Fatalf("missing at start-up")
				}
				if got := s[w.name].GetType(); got != w.typ {
					t.Errorf("type %v, want %v", got, w.typ)
				}
				if v := s.value(t, w.name, w.labels...); v != 0 {
					t.Errorf("value %v at start-up, want 0 (%v)", v, m)
				}
			})
		}
		for _, name := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_open_fds", "process_resident_memory_bytes"} {
			if s[name] == nil {
				t.Errorf("Go/process collector family %s missing", name)
			}
		}
	})
}

// A known workload, then the counts: a job watched live over a socket and
// replayed over SSE, a socket closed normally (1000) and one closed for a
// too-large frame (1009), the open-connection gauges while they are open.
func TestMetricsCountAWorkload(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withWebConfig(Config{MaxFrameBytes: 1024}))

		// A socket follows a job live to its end.
		id := e.submit("steps", map[string]any{"steps": 3, "interval_ms": 0})
		ws := e.dial() // after the submit, which made the guest session
		ws.send(map[string]any{"op": "subscribe", "group": "job:" + id, "ref": "1"})
		var events int
		for _, f := range ws.readUntil(isTerminalEvent) {
			if f.Type == "event" {
				events++
			}
		}
		s := e.scrape()
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			{"taskstream_sockets", []string{"transport", "websocket"}, 1},
			{"taskstream_subscriptions", []string{"kind", "job"}, 1},
			{"taskstream_hub_groups", nil, 1},
		} {
			if got := s.value(t, c.name, c.labels...); got != c.want {
				t.Errorf("with one socket subscribed: %s%v = %v, want %v", c.name, c.labels, got, c.want)
			}
		}

		// The same job over SSE: its whole history, replayed.
		_, sse := e.readSSE("/api/jobs/" + id + "/events")
		replayed := 0
		for _, ev := range sse {
			if ev.Event != "subscribed" {
				replayed++
			}
		}
		if replayed != events {
			t.Fatalf("SSE replayed %d events, the socket saw %d", replayed, events)
		}

		// A second job, canceled while it runs, watched on the same socket.
		long := e.submit("steps", map[string]any{"steps": 100000, "interval_ms": 20})
		ws.send(map[string]any{"op": "subscribe", "group": "job:" + long, "ref": "2"})
		var longEvents int
		for _, f := range ws.readUntil(func(f frame) bool { return f.Event == "progress" }) {
			if f.Type == "event" {
				longEvents++
			}
		}
		if status, body, _ := e.do("POST", "/api/jobs/"+long+"/cancel", nil); status != http.StatusAccepted {
			t.Fatalf("cancel: %d %v", status, body)
		}
		for _, f := range ws.readUntil(func(f frame) bool { return f.Group == "job:"+long && isTerminalEvent(f) }) {
			if f.Type == "event" {
				longEvents++
			}
		}

		// A stream that stays open (the user's notifications) counts as sse.
		me := e.me(e.client)
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", e.http.URL+"/api/groups/user:"+me+"/events", nil)
		req.Header.Set("Accept", "text/event-stream")
		res, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "taskstream_sockets{transport=sse} = 1", func() bool {
			s := e.scrape()
			return s.value(t, "taskstream_sockets", "transport", "sse") == 1 &&
				s.value(t, "taskstream_subscriptions", "kind", "user") == 1
		})
		cancel()
		_ = res.Body.Close()

		// Close the first socket normally; a second one sends a frame over
		// the limit and is closed with 1009.
		_ = ws.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		if code := ws.closeCode(); code != websocket.CloseNormalClosure {
			t.Fatalf("first socket closed with %d", code)
		}
		big := e.dial()
		big.send(map[string]any{"op": "ping", "ref": strings.Repeat("x", 2048)})
		if code := big.closeCode(); code != websocket.CloseMessageTooBig {
			t.Fatalf("oversized frame: close %d, want 1009", code)
		}
		steps, _ := e.jobs.Registry().Lookup("steps")
		eventually(t, "both closes counted, every connection gone, asynq done with both tasks", func() bool {
			s := e.scrape()
			return s.value(t, "taskstream_socket_closes_total", "code", "1009") == 1 &&
				s.value(t, "taskstream_socket_closes_total", "code", "1000") == 1 &&
				s.value(t, "taskstream_sockets", "transport", "websocket") == 0 &&
				s.value(t, "taskstream_sockets", "transport", "sse") == 0 &&
				s.value(t, "taskstream_hub_groups") == 0 &&
				s.value(t, "asynq_queue_size", "queue", steps.Queue, "state", "active") == 0 &&
				s.value(t, "asynq_queue_size", "queue", steps.Queue, "state", "archived") == 1
		})

		s = e.scrape()
		jobLog, err := e.log.Read(context.Background(), "job:"+id, 0)
		if err != nil {
			t.Fatal(err)
		}
		if int(jobLog.LastSeq) != events {
			t.Fatalf("the job's log has %d events, the socket saw %d", jobLog.LastSeq, events)
		}
		longLog, err := e.log.Read(context.Background(), "job:"+long, 0)
		if err != nil {
			t.Fatal(err)
		}
		if int(longLog.LastSeq) != longEvents {
			t.Fatalf("the canceled job's log has %d events, the socket saw %d", longLog.LastSeq, longEvents)
		}
		n, n2 := float64(events), float64(longEvents)
		published := 0.0
		for _, k := range metrics.Kinds {
			published += s.value(t, "taskstream_events_published_total", "kind", k)
		}
		for _, c := range []struct {
			name   string
			labels []string
			want   float64
		}{
			// Every job event was published once by this process's log.
			{"taskstream_events_published_total", []string{"kind", "job"}, n + n2},
			{"taskstream_events_published_total", []string{"kind", "chat"}, 0},
			// Each event of the first job reached the socket once and the
			// SSE stream once; the canceled job's, the socket only.
			{"taskstream_events_delivered_total", []string{"kind", "job"}, 2*n + n2},
			{"taskstream_events_delivered_total", []string{"kind", "chat"}, 0},
			{"taskstream_socket_closes_total", []string{"code", "1001"}, 0},
			{"taskstream_socket_closes_total", []string{"code", "1013"}, 0},
			{"taskstream_send_queue_overflows_total", nil, 0},
			{"taskstream_subscriptions", []string{"kind", "job"}, 0},
			{"taskstream_subscriptions", []string{"kind", "user"}, 0},
			// The jobs: two submitted, one completed, one canceled while it
			// ran; both waited in the queue once and ran once.
			{"taskstream_jobs_submitted_total", []string{"type", "steps"}, 2},
			{"taskstream_jobs_submitted_total", []string{"type", "report"}, 0},
			{"taskstream_jobs_finished_total", []string{"type", "steps", "outcome", "completed"}, 1},
			{"taskstream_jobs_finished_total", []string{"type", "steps", "outcome", "canceled"}, 1},
			{"taskstream_jobs_finished_total", []string{"type", "steps", "outcome", "failed"}, 0},
			{"taskstream_job_duration_seconds", []string{"type", "steps"}, 2},
			{"taskstream_job_queue_wait_seconds", nil, 2},
			// Asynq keeps the completed task; the canceled one is archived
			// (the worker ends it with SkipRetry).
			{"asynq_queue_size", []string{"queue", steps.Queue, "state", "completed"}, 1},
			{"asynq_queue_size", []string{"queue", steps.Queue, "state", "archived"}, 1},
			{"asynq_queue_size", []string{"queue", steps.Queue, "state", "pending"}, 0},
			{"asynq_queue_size", []string{"queue", steps.Queue, "state", "active"}, 0},
		} {
			if got := s.value(t, c.name, c.labels...); got != c.want {
				t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
			}
		}
		// Every publish step is timed: one per event, or one per batch (a
		// job's end is one batch), none failed.
		if got := s.value(t, "taskstream_publish_seconds"); got < 1 || got > published {
			t.Errorf("taskstream_publish_seconds count %v, want 1 to %v (the events published)", got, published)
		}
		// SSE replayed the whole history; the socket some part of it
		// (whatever was published before it subscribed).
		if got := s.value(t, "taskstream_replay_events_total"); got < n || got > 2*n+n2 {
			t.Errorf("taskstream_replay_events_total = %v, want between %v and %v", got, n, 2*n+n2)
		}
	})
}

// A long-poll waiting for events counts as a longpoll connection until it
// is answered.
func TestMetricsLongPollGauge(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		me := e.me(e.client)
		answered := make(chan int, 1)
		go func() {
			res, err := e.client.Get(e.http.URL + "/api/groups/user:" + me + "/events?after=0&wait=60")
			if err != nil {
				answered <- -1
				return
			}
			_ = res.Body.Close()
			answered <- res.StatusCode
		}()
		eventually(t, "taskstream_sockets{transport=longpoll} = 1", func() bool {
			return e.scrape().value(t, "taskstream_sockets", "transport", "longpoll") == 1
		})
		if _, err := e.log.Publish(context.Background(), "user:"+me, "notification", map[string]string{"title": "hi"}); err != nil {
			t.Fatal(err)
		}
		if status := <-answered; status != http.StatusOK {
			t.Fatalf("long-poll answered %d", status)
		}
		eventually(t, "taskstream_sockets{transport=longpoll} = 0", func() bool {
			return e.scrape().value(t, "taskstream_sockets", "transport", "longpoll") == 0
		})
		if got := e.scrape().value(t, "taskstream_events_delivered_total", "kind", "user"); got != 1 {
			t.Errorf("delivered user events %v, want 1", got)
		}
	})
}
