package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"taskstream/progress"
)

// eventStamp reads seq and ts from the frames the server really sends.
func TestEventStampOnRealFrames(t *testing.T) {
	ts := time.Date(2026, 3, 4, 5, 6, 7, 891234567, time.UTC)
	for _, data := range []string{`{"text":"hi"}`, `{"text":"\"ts\":\"1999\""}`, `null`} {
		ev := &progress.Event{Group: "chat:x", Seq: 42, Epoch: "e1", Name: "message", Data: json.RawMessage(data), Time: ts}
		name, seq, got, ok := eventStamp(ev.Frame())
		if !ok || name != "message" || seq != 42 || !got.Equal(ts) {
			t.Fatalf("data %s: eventStamp(%s) = %d %v %v", data, ev.Frame(), seq, got, ok)
		}
		for _, lean := range [][]byte{ev.LeanFrame(false), ev.LeanFrame(true)} { // taskstream.v2: ts in ms
			name, seq, got, ok := eventStamp(lean)
			if !ok || name != "message" || seq != 42 || !got.Equal(ts.Truncate(time.Millisecond)) {
				t.Fatalf("data %s: eventStamp(%s) = %d %v %v", data, lean, seq, got, ok)
			}
		}
	}
	for _, frame := range []string{`{"type":"subscribed","last_seq":3}`, `{"type":"event","seq":x,"ts":"2026"}`, `not json`} {
		if _, _, _, ok := eventStamp([]byte(frame)); ok {
			t.Errorf("%s taken for an event", frame)
		}
	}
}

func TestParseStatus(t *testing.T) {
	status := "Name:\tloadgen\nVmPeak:\t  999 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t5\n"
	m, err := parseStatus(strings.NewReader(status))
	if err != nil || m.RSS != 10<<20 || m.HWM != 20<<20 {
		t.Fatalf("%+v %v", m, err)
	}
	if _, err := parseStatus(strings.NewReader("Name:\tx\n")); err == nil {
		t.Fatal("no VmRSS accepted")
	}
	if m, err := readMemory(0); err != nil || m.RSS <= 0 || m.Goroutines <= 0 {
		t.Fatalf("own memory: %+v %v", m, err)
	}
}

func TestPacing(t *testing.T) {
	start := time.Unix(100, 0)
	if got := due(start, 250, 100); !got.Equal(start.Add(2500 * time.Millisecond)) {
		t.Fatalf("due = %v", got)
	}
	p := PubResult{Start: start, End: start.Add(2 * time.Second), Published: 201}
	if p.Rate() != 100 {
		t.Fatalf("rate %v", p.Rate())
	}
	var raw map[string]string
	if err := json.Unmarshal(chatPayload(10), &raw); err != nil || len(raw["text"]) != 10 {
		t.Fatalf("payload %v %v", raw, err)
	}
}

func TestConfigIsLoopbackOnlyAndBounded(t *testing.T) {
	ok := [][]string{
		{},
		{"-url", "http://127.0.0.1:8080", "-redis-url", "redis://localhost:6379"},
		{"-url", "http://[::1]:8080", "-redis-url", "unix:///tmp/redis.sock"},
		{"-url", "http://127.0.0.1:8080", "-publish-via", "api", "-token", "t"}, // no Redis needed
		{"-publish-via", "api"}, // in-process: an admin token is made up
	}
	for _, args := range ok {
		if _, err := parseFlags(args, io.Discard); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
	bad := [][]string{
		{"-url", "http://example.com:8080", "-redis-url", "redis://127.0.0.1:6379"},
		{"-url", "http://127.0.0.1:8080"}, // no Redis to publish to
		{"-redis-url", "redis://10.0.0.1:6379"},
		{"-clients", "0"},
		{"-clients", "50000"},
		{"-events", "1000", "-rate", "1", "-timeout", "1m"}, // cannot finish in time
		{"-server-pid", "1"},                                // in-process: own RSS
		{"-group", "Not A Group"},
		{"-clients", "10", "-users", "11"},
		{"-publish-via", "carrier-pigeon"},
		{"-url", "http://127.0.0.1:8080", "-publish-via", "api"}, // no token
		{"-publish-via", "api", "-token", "t"},                   // in-process makes its own
		{"-url", "http://127.0.0.1:8080", "-redis-url", "redis://localhost:6379", "-token", "t"}, // a token for Redis
	}
	for _, args := range bad {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

// The whole tool, in-process on miniredis, small, publishing into Redis
// and through POST /api/publish: every socket gets every event and the
// report says so.
func TestLoadgenEmbedded(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the service")
	}
	for _, via := range []string{viaRedis, viaAPI} {
		t.Run(via, func(t *testing.T) {
			c, err := parseFlags([]string{"-clients", "20", "-events", "30", "-rate", "300", "-drain", "10s", "-timeout", "1m", "-publish-via", via}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := run(context.Background(), c, &out, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
				t.Fatal(err)
			}
			t.Log("\n" + out.String())
			if !strings.Contains(out.String(), "| 30 |") || !strings.Contains(out.String(), "| 600 | 600 | 20 | 0 |") {
				t.Fatalf("not every event reached every socket:\n%s", out.String())
			}
			if !strings.Contains(out.String(), "RSS per socket") {
				t.Fatalf("no memory figures:\n%s", out.String())
			}
			want := map[string]string{viaRedis: "Log.Publish call", viaAPI: "POST /api/publish call"}[via]
			if !strings.Contains(out.String(), want) {
				t.Fatalf("the report does not say %q:\n%s", want, out.String())
			}
		})
	}
}
