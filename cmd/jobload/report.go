package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"taskstream/cmd/internal/latency"
)

// report is what a run measured.
type report struct {
	cfg                   config
	Start, SubmitEnd      time.Time
	LastEnd               time.Time // when the last finished job's result was received
	Submitted, Finished   int
	Active, EndTS, EndRcv []time.Duration
	Received              []time.Time    // when each finished job's result was received
	Failures              map[string]int // by kind: a submit refused, a broken stream, …
	Examples              []string       // the events that broke a few streams
	LoadBefore, LoadAfter string         // /proc/loadavg's first three fields
	CPU                   time.Duration  // this process's CPU time (user + system) over the run
}

// add counts one submitted job once its watch is over.
func (r *report) add(j *job) {
	r.Submitted++
	if j.failure != "" {
		r.Failures[j.failure]++
		if j.detail != "" && len(r.Examples) < 5 {
			r.Examples = append(r.Examples, j.detail)
		}
		return
	}
	r.Finished++
	r.Active = append(r.Active, j.active.Sub(j.submitted))
	r.EndTS = append(r.EndTS, j.endTS.Sub(j.submitted))
	r.EndRcv = append(r.EndRcv, j.received.Sub(j.submitted))
	r.Received = append(r.Received, j.received)
	if j.received.After(r.LastEnd) {
		r.LastEnd = j.received
	}
}

// Failed is how many jobs (or due submits) failed in any way.
func (r *report) Failed() int {
	n := 0
	for _, v := range r.Failures {
		n += v
	}
	return n
}

// FinishedRate is jobs finished (and verified) per second, from the first
// submit to the last result received.
func (r *report) FinishedRate() float64 {
	if r.Finished == 0 {
		return 0
	}
	return float64(r.Finished) / r.LastEnd.Sub(r.Start).Seconds()
}

// SteadyRate is jobs finished (and verified) per second while jobs were
// still being submitted, after a warm-up: results received from a fifth of
// the submit period in until the last submit, over that window. Unlike
// FinishedRate it counts neither the start (nothing has finished yet)
// nor the drain after the last submit (the last job's own latency), so at
// an offered rate the server keeps up with it reads that rate; a server
// that falls behind reads its own throughput. 0 when the window is empty.
func (r *report) SteadyRate() float64 {
	from := r.Start.Add(r.SubmitEnd.Sub(r.Start) / 5)
	secs := r.SubmitEnd.Sub(from).Seconds()
	if secs <= 0 {
		return 0
	}
	n := 0
	for _, t := range r.Received {
		if !t.Before(from) && !t.After(r.SubmitEnd) {
			n++
		}
	}
	return float64(n) / secs
}

func (r *report) write(w io.Writer) {
	c := r.cfg
	mode := fmt.Sprintf("open loop, %g jobs/s", c.Rate)
	if c.Rate == 0 {
		mode = fmt.Sprintf("closed loop, %d in flight", c.Inflight)
	}
	watch := fmt.Sprintf("%d sockets (WatchMany), each job on one", c.Sockets)
	if c.Sockets == 0 {
		watch = "one socket per job (Watch)"
	}
	fmt.Fprintf(w, "jobload: steps jobs (steps %d, interval_ms %d), %s for %s; watched by %s\n\n",
		c.Steps, c.IntervalMS, mode, c.Duration, watch)
	submitSecs := r.SubmitEnd.Sub(r.Start).Seconds()
	fmt.Fprintln(w, "| figure | value |")
	fmt.Fprintln(w, "|---|--:|")
	fmt.Fprintf(w, "| submitted | %d (%.0f/s) |\n", r.Submitted, float64(r.Submitted)/submitSecs)
	fmt.Fprintf(w, "| finished, every event seen in order | %d |\n", r.Finished)
	fmt.Fprintf(w, "| jobs/s finished (first submit → last result received) | %.0f |\n", r.FinishedRate())
	fmt.Fprintf(w, "| jobs/s finished while submitting (results received from a fifth of the submit period in until the last submit) | %.0f |\n", r.SteadyRate())
	fmt.Fprintf(w, "| failed | %d |\n", r.Failed())
	fmt.Fprintf(w, "| load average before → after | %s → %s |\n", r.LoadBefore, r.LoadAfter)
	fmt.Fprintf(w, "| jobload's own CPU, %% of one core | %.0f |\n", 100*r.CPU.Seconds()/r.LastEnd.Sub(r.Start).Seconds())
	if r.Submitted > 0 {
		fmt.Fprintf(w, "| jobload's own CPU per submitted job, ms | %.3f |\n", 1000*r.CPU.Seconds()/float64(r.Submitted))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| latency, ms (from when the submit was due to go out) | p50 | p95 | p99 | max |")
	fmt.Fprintln(w, "|---|--:|--:|--:|--:|")
	for _, row := range []struct {
		name string
		ds   []time.Duration
	}{
		{"submit → active (the `state active` event's ts)", r.Active},
		{"submit → finished (the `result` event's ts)", r.EndTS},
		{"submit → result received by the watcher", r.EndRcv},
	} {
		s := latency.Summarize(row.ds)
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", row.name, latency.Ms(s.P50), latency.Ms(s.P95), latency.Ms(s.P99), latency.Ms(s.Max))
	}
	if len(r.Failures) > 0 {
		fmt.Fprintln(w, "\nfailures:")
		for _, k := range slices.Sorted(maps.Keys(r.Failures)) {
			fmt.Fprintf(w, "- %s: %d\n", k, r.Failures[k])
		}
		for _, e := range r.Examples {
			fmt.Fprintf(w, "- e.g. %s\n", e)
		}
	}
}
