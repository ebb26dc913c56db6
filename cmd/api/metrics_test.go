package main

import (
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"taskstream/progress/progresstest"
)

// scrapeMetrics fetches and parses url's metrics; ok is false when nothing
// answers there (yet).
func scrapeMetrics(t *testing.T, url string) (families map[string]*dto.MetricFamily, ok bool) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		return nil, false
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d", url, res.StatusCode)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err = parser.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return families, true
}

// counterValue is the value of name's sample whose labels include want.
func counterValue(t *testing.T, families map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	for _, m := range families[name].GetMetric() {
		match := 0
		for _, l := range m.GetLabel() {
			if v, ok := want[l.GetName()]; ok && v == l.GetValue() {
				match++
			}
		}
		if match == len(want) {
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no sample %s%v", name, want)
	return 0
}

// The api serves /metrics on its own listener; a worker with METRICS_ADDR
// serves its own, counts the job it ran, and frees the port when it stops.
func TestMetricsOfAPIAndWorker(t *testing.T) {
	t.Parallel()
	redis := progresstest.Real(t)
	addr, metricsAddr := freeAddr(t), freeAddr(t)
	base := "http://" + addr
	env := []string{"ADDR=" + addr, "REDIS_URL=" + redis.URL()}
	api := start(t, "api", filepath.Join(binDir, "api"), env...)
	worker := start(t, "worker", filepath.Join(binDir, "worker"), append(env, "METRICS_ADDR="+metricsAddr, "WORKER_POLL_INTERVAL=50ms")...)
	waitHealthy(t, base, api)
	workerURL := "http://" + metricsAddr + "/metrics"
	deadline := time.Now().Add(time.Minute)
	for {
		if _, ok := scrapeMetrics(t, workerURL); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker metrics never answered at %s", workerURL)
		}
		time.Sleep(50 * time.Millisecond)
	}

	b := browser()
	id := submit(t, b, base, `{"type":"steps","params":{"steps":2,"interval_ms":0}}`)
	events := watchJob(t, b, base, id, time.Minute, nil)

	apiMetrics, ok := scrapeMetrics(t, base+"/metrics")
	if !ok {
		t.Fatal("api /metrics did not answer")
	}
	if got := counterValue(t, apiMetrics, "taskstream_jobs_submitted_total", map[string]string{"type": "steps"}); got != 1 {
		t.Errorf("api: jobs submitted %v, want 1", got)
	}
	workerMetrics, _ := scrapeMetrics(t, workerURL)
	if got := counterValue(t, workerMetrics, "taskstream_jobs_finished_total", map[string]string{"type": "steps", "outcome": "completed"}); got != 1 {
		t.Errorf("worker: jobs completed %v, want 1", got)
	}
	// The api published the first event (pending); the worker the rest.
	apiPub := counterValue(t, apiMetrics, "taskstream_events_published_total", map[string]string{"kind": "job"})
	workerPub := counterValue(t, workerMetrics, "taskstream_events_published_total", map[string]string{"kind": "job"})
	if apiPub+workerPub != float64(len(events)) {
		t.Errorf("published job events: api %v + worker %v, want %d in all", apiPub, workerPub, len(events))
	}
	if workerMetrics["go_goroutines"] == nil || workerMetrics["taskstream_sockets"] == nil {
		t.Errorf("worker metrics lack the Go collector or the stream families")
	}

	if err := worker.stopWith(syscall.SIGTERM); err != nil || !strings.Contains(worker.output(), "stopped") {
		t.Fatalf("worker did not stop cleanly (%v):\n%s", err, worker.output())
	}
	ln, err := net.Listen("tcp", metricsAddr)
	if err != nil {
		t.Fatalf("metrics port still held after the worker stopped: %v", err)
	}
	_ = ln.Close()
	api.stop()
}

// DEBUG_ADDR serves Go's profiles on a listener of its own, for the api
// and the worker alike; the public port does not, and the port is free
// again once the process stopped.
func TestDebugAddrServesProfiles(t *testing.T) {
	t.Parallel()
	redis := progresstest.Real(t)
	addr := freeAddr(t)
	env := []string{"REDIS_URL=" + redis.URL(), "WORKER_POLL_INTERVAL=50ms"}
	cases := []struct {
		name string
		bin  string
		env  []string
	}{
		{"api", "api", []string{"ADDR=" + addr}},
		{"worker", "worker", nil},
	}
	for _, c := range cases {
		debugAddr := freeAddr(t)
		p := start(t, c.name, filepath.Join(binDir, c.bin), append(append(c.env, env...), "DEBUG_ADDR="+debugAddr)...)
		url := "http://" + debugAddr + "/debug/pprof/goroutine?debug=1"
		var body string
		for deadline := time.Now().Add(time.Minute); ; {
			if res, err := http.Get(url); err == nil {
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					t.Fatalf("%s: GET %s: %d %s", c.name, url, res.StatusCode, b)
				}
				body = string(b)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: profiles never answered at %s:\n%s", c.name, url, p.output())
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !strings.Contains(body, "goroutine profile:") {
			t.Fatalf("%s: not a goroutine profile:\n%.300s", c.name, body)
		}
		if c.name == "api" {
			waitHealthy(t, "http://"+addr, p)
			res, err := http.Get("http://" + addr + "/debug/pprof/")
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusNotFound {
				t.Fatalf("the public port serves /debug/pprof/: %d", res.StatusCode)
			}
		}
		if err := p.stopWith(syscall.SIGTERM); err != nil {
			t.Fatalf("%s did not stop cleanly (%v):\n%s", c.name, err, p.output())
		}
		ln, err := net.Listen("tcp", debugAddr)
		if err != nil {
			t.Fatalf("%s: debug port still held after it stopped: %v", c.name, err)
		}
		_ = ln.Close()
	}
}
