package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"taskstream/cmd/internal/latency"
)

// Row is one transport's line in the report.
type Row struct {
	Transport string
	Traffic   Traffic
	Seen      int     // live progress updates seen (distinct snapshots for polling)
	PerSeen   float64 // bytes on the wire per update seen
	PerPub    float64 // bytes on the wire per update published
	// Delay is, per published update, how long until the client knew it:
	// for a stream, received − the event's ts; for polling, the receive
	// time of the first answer showing that update or a later one − the
	// event's ts.
	Delay   latency.Summary
	Slowest int64           // seq of the update with the longest delay (0 if none)
	Missed  int             // published updates the client never learned of
	Age     latency.Summary // polling only: receive time − ts of the update a snapshot shows
	Err     error
}

// Report is the outcome of one comparison.
type Report struct {
	Mode      string // how the server runs
	JobID     string
	Steps     int
	Interval  time.Duration
	PollEvery time.Duration
	Published int // live progress updates published (seen by any stream)
	Excluded  int // progress updates published before every watcher was attached
	Rows      []Row
}

// published is one progress event, as the streams saw it.
type published struct {
	seq  int64
	done int64
	ts   time.Time
}

// analyze turns what the watchers saw into report rows. Only updates
// published after armedAt (when every watcher was attached) count, so no
// transport is credited or blamed for replayed history.
//
// The published updates are the union of the progress events the three
// streams saw (seq, progress.done, ts; Log.Publish stamps ts just before
// the Redis append). A stream's delay is its receive time − ts.
//
// Polling sees snapshots, not events. A published update counts as
// delivered by the first poll answer whose progress.done is at least the
// update's (done only grows in a steps job) and that arrived after the
// update was published: delay = that answer's receive time − ts. The age
// of each distinct snapshot (receive time − ts of the event it shows,
// found by its done; the job's updated_at when no stream saw that event)
// is reported as well: it is bounded by the update interval, not by the
// polling interval, so it says how fresh a snapshot is, not how late an
// update arrives.
func analyze(obs []*observation, armedAt time.Time) (pub, excluded int, rows []Row) {
	bySeq := map[int64]published{}
	early := map[int64]bool{}
	for _, o := range obs {
		if o.Polling {
			continue
		}
		for _, u := range o.Updates {
			if u.TS.Before(armedAt) {
				early[u.Seq] = true
				continue
			}
			bySeq[u.Seq] = published{seq: u.Seq, done: u.Done, ts: u.TS}
		}
	}
	events := make([]published, 0, len(bySeq))
	tsByDone := map[int64]time.Time{}
	for _, p := range bySeq {
		events = append(events, p)
		if t, ok := tsByDone[p.done]; !ok || p.ts.Before(t) {
			tsByDone[p.done] = p.ts
		}
	}
	sort.Slice(events, func(i, j int) bool { return events[i].seq < events[j].seq })

	for _, o := range obs {
		r := Row{Transport: o.Transport, Traffic: o.Traffic, Err: o.Err}
		var delays []time.Duration
		var seqs []int64
		if o.Polling {
			var ages []time.Duration
			for _, u := range o.Updates {
				ref := u.TS
				if t, ok := tsByDone[u.Done]; ok {
					ref = t
				}
				if !ref.Before(armedAt) {
					ages = append(ages, u.Received.Sub(ref))
				}
			}
			r.Seen, r.Age = len(ages), latency.Summarize(ages)
			for _, p := range events {
				if d, ok := coveredAt(o.Updates, p); ok {
					delays, seqs = append(delays, d), append(seqs, p.seq)
				}
			}
		} else {
			got := map[int64]bool{}
			for _, u := range o.Updates {
				if u.TS.Before(armedAt) || got[u.Seq] {
					continue
				}
				got[u.Seq] = true
				delays, seqs = append(delays, u.Received.Sub(u.TS)), append(seqs, u.Seq)
			}
			r.Seen = len(delays)
		}
		r.Delay, r.Missed = latency.Summarize(delays), len(events)-len(delays)
		for i, d := range delays {
			if d == r.Delay.Max {
				r.Slowest = seqs[i]
			}
		}
		if r.Seen > 0 {
			r.PerSeen = float64(r.Traffic.Total()) / float64(r.Seen)
		}
		if len(events) > 0 {
			r.PerPub = float64(r.Traffic.Total()) / float64(len(events))
		}
		rows = append(rows, r)
	}
	return len(events), len(early), rows
}

// coveredAt is how long after p was published the first snapshot showing
// p or a later update arrived.
func coveredAt(snaps []update, p published) (time.Duration, bool) {
	for _, s := range snaps {
		if s.Done >= p.done && s.Received.After(p.ts) {
			return s.Received.Sub(p.ts), true
		}
	}
	return 0, false
}

// WriteMarkdown prints the report as a Markdown table with a short header.
func (r *Report) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "Job `%s`: steps job, %d steps every %s; server: %s.\n", r.JobID, r.Steps, r.Interval, r.Mode)
	fmt.Fprintf(w, "Progress updates published while every transport watched: %d", r.Published)
	if r.Excluded > 0 {
		fmt.Fprintf(w, " (%d earlier ones left out)", r.Excluded)
	}
	fmt.Fprintf(w, ". Polling interval: %s.\n\n", r.PollEvery)
	fmt.Fprintln(w, "| transport | TCP conns | HTTP requests | bytes in | bytes out | updates seen | bytes / update seen | bytes / published update | delay mean ms | p50 ms | p95 ms | max ms |")
	fmt.Fprintln(w, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, row := range r.Rows {
		t := row.Traffic
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %d | %.0f | %.0f | %s | %s | %s | %s |\n",
			row.Transport, t.Conns, t.Requests, t.Read, t.Written, row.Seen, row.PerSeen, row.PerPub,
			latency.Ms(row.Delay.Mean), latency.Ms(row.Delay.P50), latency.Ms(row.Delay.P95), latency.Ms(row.Delay.Max))
	}
	fmt.Fprintln(w, "\nDelay: per published update, until the client knew it (polling: until the first answer showing it or a later update).")
	var notes []string
	for _, row := range r.Rows {
		if row.Slowest != 0 {
			notes = append(notes, fmt.Sprintf("%s seq %d", row.Transport, row.Slowest))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "Slowest update: %s.\n", strings.Join(notes, ", "))
	}
	for _, row := range r.Rows {
		if row.Missed > 0 {
			fmt.Fprintf(w, "%s never learned of %d published update(s).\n", row.Transport, row.Missed)
		}
		if row.Age.N > 0 {
			fmt.Fprintf(w, "%s snapshot age (receive − ts of the update it shows): mean %s ms, p50 %s, p95 %s, max %s.\n",
				row.Transport, latency.Ms(row.Age.Mean), latency.Ms(row.Age.P50), latency.Ms(row.Age.P95), latency.Ms(row.Age.Max))
		}
	}
	var errs []string
	for _, row := range r.Rows {
		if row.Err != nil {
			errs = append(errs, fmt.Sprintf("- %s: %v", row.Transport, row.Err))
		}
	}
	if len(errs) > 0 {
		fmt.Fprintf(w, "\nErrors:\n%s\n", strings.Join(errs, "\n"))
	}
}
