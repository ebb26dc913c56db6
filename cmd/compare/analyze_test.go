package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestAnalyze(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	armed := at(100)
	ws := &observation{Transport: tWS, Traffic: Traffic{Read: 900, Written: 100}, Updates: []update{
		{Seq: 2, Done: 1, TS: at(50), Received: at(51)},   // before armed: left out
		{Seq: 3, Done: 2, TS: at(200), Received: at(202)}, // 2 ms
		{Seq: 4, Done: 3, TS: at(300), Received: at(304)}, // 4 ms
	}}
	sse := &observation{Transport: tSSE, Traffic: Traffic{Read: 300}, Updates: []update{
		{Seq: 3, Done: 2, TS: at(200), Received: at(210)},
		{Seq: 3, Done: 2, TS: at(200), Received: at(220)}, // duplicate seq: counted once
	}}
	poll := &observation{Transport: tPoll, Polling: true, Traffic: Traffic{Read: 1000, Written: 500}, Updates: []update{
		{Done: 3, TS: at(999), Received: at(1300)}, // shows the event of done 3 (ts 300): age 1000 ms
		{Done: 9, TS: at(400), Received: at(1400)}, // seen by no stream: its updated_at, age 1000 ms
	}}
	pub, excl, rows := analyze([]*observation{ws, sse, poll}, armed)
	if pub != 2 || excl != 1 {
		t.Fatalf("published %d excluded %d, want 2 and 1", pub, excl)
	}
	if r := rows[0]; r.Seen != 2 || r.PerSeen != 500 || r.PerPub != 500 || r.Delay.Mean != 3*time.Millisecond ||
		r.Delay.Max != 4*time.Millisecond || r.Slowest != 4 || r.Missed != 0 {
		t.Fatalf("ws row %+v", r)
	}
	if r := rows[1]; r.Seen != 1 || r.Delay.Max != 10*time.Millisecond || r.Missed != 1 {
		t.Fatalf("sse row %+v", r)
	}
	// Polling: seq 3 (done 2, ts 200) and seq 4 (done 3, ts 300) are both
	// first covered by the answer at 1300.
	if r := rows[2]; r.Seen != 2 || r.PerSeen != 750 || r.PerPub != 750 || r.Missed != 0 ||
		r.Delay.Max != 1100*time.Millisecond || r.Delay.Mean != 1050*time.Millisecond || r.Slowest != 3 ||
		r.Age.N != 2 || r.Age.Max != time.Second || r.Age.P50 != time.Second {
		t.Fatalf("poll row %+v", r)
	}

	rep := &Report{JobID: "j1", Steps: 3, Interval: time.Millisecond, PollEvery: time.Second, Published: pub, Excluded: excl, Rows: rows}
	rows[1].Err = errors.New("boom")
	var out bytes.Buffer
	rep.WriteMarkdown(&out)
	for _, want := range []string{"| WebSocket | 0 | 0 | 900 | 100 | 2 | 500 | 500 | 3.00 |", "| polling |", "(1 earlier ones left out)", "- SSE: boom",
		"SSE never learned of 1", "polling snapshot age (receive − ts of the update it shows): mean 1000 ms", "Slowest update: WebSocket seq 4, SSE seq 3, polling seq 3."} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestParseFlags(t *testing.T) {
	var errOut bytes.Buffer
	c, err := parseFlags([]string{"-url", "", "-steps", "5", "-interval", "20ms"}, &errOut)
	if err != nil || !c.Embedded || c.Steps != 5 {
		t.Fatalf("%+v %v", c, err)
	}
	for _, args := range [][]string{
		{"-steps", "0"},
		{"-interval", "1500us"},
		{"-url", "ftp://x"},
		{"-poll", "0s"},
	} {
		if _, err := parseFlags(args, &errOut); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}
