package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"taskstream/client"
	"taskstream/cmd/internal/inproc"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// A tiny load against an api and a worker in this process, on each Redis:
// every job is submitted, watched over a socket (one per job, or a few
// shared ones) and seen to the end with every event in order, in an open
// and a closed loop.
func TestTinyLoadEndToEnd(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		const token = "jobload-test-admin-token"
		s, err := inproc.Start(context.Background(), inproc.Options{RedisURL: srv.URL(), AdminToken: token, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.StartWorker()
		// The per-user submit limit is 20 at once (JOB_BURST): the five
		// runs submit 15 jobs in all.
		cases := []struct {
			name string
			cfg  config
		}{
			{"open loop, a socket per job", config{Rate: 50, Sockets: 0}},
			{"open loop, two sockets", config{Rate: 50, Sockets: 2}},
			{"closed loop, a socket per job", config{Inflight: 2, Sockets: 0}},
			{"closed loop, one socket", config{Inflight: 2, Sockets: 1}},
			{"open loop, profiled", config{Rate: 50, Sockets: 1, CPUProfile: "cpu.pprof"}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				cfg := tc.cfg
				cfg.URL, cfg.Token, cfg.Jobs, cfg.Steps, cfg.MaxPending = s.URL, token, 3, 3, 100
				// Bounds only: the run stops after its 3 jobs.
				cfg.Duration, cfg.Drain = time.Minute, time.Minute
				if cfg.CPUProfile != "" {
					cfg.CPUProfile = filepath.Join(t.TempDir(), cfg.CPUProfile)
				}
				if err := cfg.check(); err != nil {
					t.Fatal(err)
				}
				rep, err := runProfiled(context.Background(), cfg, quiet)
				if err != nil {
					t.Fatal(err)
				}
				if cfg.CPUProfile != "" {
					if fi, err := os.Stat(cfg.CPUProfile); err != nil || fi.Size() == 0 {
						t.Fatalf("-cpuprofile %s: %v, %v", cfg.CPUProfile, fi, err)
					}
				}
				var out bytes.Buffer
				rep.write(&out)
				if rep.Submitted != 3 || rep.Finished != 3 || rep.Failed() != 0 {
					t.Fatalf("submitted %d, finished %d, failures %v\n%s", rep.Submitted, rep.Finished, rep.Failures, out.String())
				}
				if len(rep.Active) != 3 || len(rep.EndRcv) != 3 || !strings.Contains(out.String(), "| finished, every event seen in order | 3 |") {
					t.Fatalf("report:\n%s", out.String())
				}
				for i := range rep.Active {
					if rep.Active[i] > rep.EndTS[i] {
						t.Fatalf("job %d active after its end: %v > %v", i, rep.Active[i], rep.EndTS[i])
					}
				}
			})
		}
	})
}

// The checker fails a stream that is not the whole job in order.
func TestFeedChecksEveryEvent(t *testing.T) {
	ts := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	ev := func(seq int64, name, data string) client.Event {
		return client.Event{EventFrame: wire.EventFrame{Group: "job:1", Seq: seq, Event: name, Data: json.RawMessage(data),
			TS: ts.Add(time.Duration(seq) * time.Millisecond).Format(time.RFC3339Nano)}}
	}
	pending, active := ev(1, wire.EventState, `{"state":"pending"}`), ev(2, wire.EventState, `{"state":"active","attempt":1}`)
	progress := ev(3, wire.EventProgress, `{"done":3,"total":3}`)
	completed, result := ev(4, wire.EventState, `{"state":"completed"}`), ev(5, wire.EventResult, `{"result":{"steps":3}}`)
	skipped := progress
	skipped.Skipped = 1
	cases := []struct {
		name    string
		events  []client.Event
		failure string // "" : finished
	}{
		{"the whole job", []client.Event{pending, active, progress, completed, result}, ""},
		{"a gap", []client.Event{pending, active, completed, result}, "events out of order or missing"},
		{"a repeat", []client.Event{pending, active, active}, "events out of order or missing"},
		{"skipped progress", []client.Event{pending, active, skipped}, "events skipped"},
		{"not from the start", []client.Event{ev(1, wire.EventState, `{"state":"active"}`)}, "first event not state pending"},
		{"result without active", []client.Event{pending, ev(2, wire.EventResult, `{"result":null}`)}, "result without state active"},
		{"failed", []client.Event{pending, active, ev(3, wire.EventState, `{"state":"failed"}`), ev(4, wire.EventFailed, `{"error":"boom"}`)}, `job ended failed {"error":"boom"}`},
		{"canceled", []client.Event{pending, ev(2, wire.EventState, `{"state":"canceled"}`)}, `job ended state {"state":"canceled"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j := &job{group: "job:1", submitted: ts, done: make(chan struct{})}
			over := false
			for _, e := range tc.events {
				if over = j.feed(e, ts.Add(time.Second)); over {
					break
				}
			}
			if !over {
				t.Fatalf("not over after %d events", len(tc.events))
			}
			if j.failure != tc.failure {
				t.Fatalf("failure %q, want %q (detail %s)", j.failure, tc.failure, j.detail)
			}
			if tc.failure == "" && (j.active.Sub(ts) != 2*time.Millisecond || j.endTS.Sub(ts) != 5*time.Millisecond) {
				t.Fatalf("active %v, end %v", j.active, j.endTS)
			}
		})
	}
}

func TestConfigIsLoopbackOnlyAndBounded(t *testing.T) {
	ok := [][]string{
		{"-url", "http://127.0.0.1:8080"},
		{"-url", "http://localhost:8080", "-rate", "0", "-inflight", "10", "-sockets", "0"},
		{"-url", "http://[::1]:8080", "-jobs", "5"},
	}
	for _, args := range ok {
		if _, err := parseFlags(args, io.Discard); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
	bad := [][]string{
		{},
		{"-url", "http://example.com:8080"},
		{"-url", "http://127.0.0.1:8080", "-rate", "0"},
		{"-url", "http://127.0.0.1:8080", "-inflight", "5"},
		{"-url", "http://127.0.0.1:8080", "-steps", "0"},
		{"-url", "http://127.0.0.1:8080", "-sockets", "-1"},
		{"-url", "http://127.0.0.1:8080", "-jobs", "-1"},
		{"-url", "http://127.0.0.1:8080", "extra"},
	}
	for _, args := range bad {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

// SteadyRate counts the results received between a fifth of the submit
// period and its end, over that window: neither the warm-up nor the
// drain after the last submit.
func TestSteadyRate(t *testing.T) {
	start := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return start.Add(time.Duration(ms) * time.Millisecond) }
	every := func(from, to, step int) []time.Time {
		var ts []time.Time
		for ms := from; ms < to; ms += step {
			ts = append(ts, at(ms))
		}
		return ts
	}
	tests := []struct {
		name     string
		received []time.Time
		want     float64
	}{
		{"kept up: one result per ms throughout", every(0, 10_000, 1), 1000},
		{"late start and long drain count for nothing", append(every(2_000, 10_000, 1), every(10_000, 15_000, 1)...), 1000},
		{"fell behind: one result per 2 ms", every(0, 20_000, 2), 500},
		{"nothing finished while submitting", every(10_001, 12_000, 1), 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &report{Start: start, SubmitEnd: at(10_000), Received: tc.received}
			if got := r.SteadyRate(); got < tc.want-1 || got > tc.want+1 {
				t.Errorf("SteadyRate = %.1f, want %.0f", got, tc.want)
			}
		})
	}
	if got := (&report{Start: start, SubmitEnd: start}).SteadyRate(); got != 0 {
		t.Errorf("an empty submit period: SteadyRate = %v, want 0", got)
	}
}
