package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"taskstream/cmd/internal/latency"
)

// Report is the outcome of one run.
type Report struct {
	Mode     string // where the server ran
	MemOf    string // whose memory Mem describes ("" when not measured)
	Group    string
	Users    int
	Clients  int
	Events   int
	Payload  int
	Rate     float64
	DialTime time.Duration
	Pub      PubResult
	Out      Outcome
	Mem      [3]Memory // before the sockets, with the sockets idle, after publishing
	MemOK    bool
}

// DeliveredPerSec is delivered messages over the time from the first
// publish to the last delivery.
func (r *Report) DeliveredPerSec() float64 {
	d := r.Out.LastRecv.Sub(r.Pub.Start).Seconds()
	if d <= 0 {
		return 0
	}
	return float64(r.Out.Delivered) / d
}

func mib(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }

// WriteMarkdown prints the report as Markdown.
func (r *Report) WriteMarkdown(w io.Writer) {
	fmt.Fprintf(w, "%d sockets of %d user(s) on `%s` (opened in %s); %d events of %d text bytes at %g/s; server: %s.\n\n",
		r.Clients, r.Users, r.Group, r.DialTime.Round(time.Millisecond), r.Events, r.Payload, r.Rate, r.Mode)
	o := r.Out
	fmt.Fprintln(w, "| published | publish rate /s | delivered | expected | sockets complete | sockets dropped | delivered msg/s | latency mean ms | p50 ms | p95 ms | p99 ms | max ms |")
	fmt.Fprintln(w, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	dropped := 0
	for _, n := range o.Dropped {
		dropped += n
	}
	fmt.Fprintf(w, "| %d | %.0f | %d | %d | %d | %d | %.0f | %s | %s | %s | %s | %s |\n",
		r.Pub.Published, r.Pub.Rate(), o.Delivered, o.Expected, o.Complete, dropped, r.DeliveredPerSec(),
		latency.Ms(o.Latency.Mean), latency.Ms(o.Latency.P50), latency.Ms(o.Latency.P95), latency.Ms(o.Latency.P99), latency.Ms(o.Latency.Max))
	fmt.Fprintf(w, "\n%s call: mean %s ms, p50 %s ms, p99 %s ms, max %s ms.\n", r.Pub.Via,
		latency.Ms(r.Pub.Calls.Mean), latency.Ms(r.Pub.Calls.P50), latency.Ms(r.Pub.Calls.P99), latency.Ms(r.Pub.Calls.Max))
	if len(o.Dropped) > 0 {
		var parts []string
		for k, n := range o.Dropped {
			parts = append(parts, fmt.Sprintf("%d by %s", n, k))
		}
		sort.Strings(parts)
		fmt.Fprintf(w, "Sockets that ended early: %s.\n", strings.Join(parts, ", "))
	}
	if o.Other > 0 {
		fmt.Fprintf(w, "Other live events received (presence: join, leave, presence), over all sockets: %d.\n", o.Other)
	}
	if o.Gaps > 0 {
		fmt.Fprintf(w, "Out-of-order or missing seqs seen: %d.\n", o.Gaps)
	}
	if r.Pub.Err != nil {
		fmt.Fprintf(w, "Publisher stopped early: %v.\n", r.Pub.Err)
	}
	if !r.MemOK {
		return
	}
	fmt.Fprintf(w, "\nMemory of %s:\n\n", r.MemOf)
	fmt.Fprintln(w, "| moment | RSS MiB | peak RSS (VmHWM) MiB | Go heap in use MiB | goroutines |")
	fmt.Fprintln(w, "|---|--:|--:|--:|--:|")
	for i, name := range []string{"before the sockets", fmt.Sprintf("%d sockets subscribed, idle", r.Clients), "after publishing"} {
		m := r.Mem[i]
		heap, gor := "-", "-"
		if m.Goroutines > 0 {
			heap, gor = mib(m.HeapInuse), fmt.Sprint(m.Goroutines)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", name, mib(m.RSS), mib(m.HWM), heap, gor)
	}
	perIdle := float64(r.Mem[1].RSS-r.Mem[0].RSS) / float64(r.Clients) / 1024
	perPeak := float64(r.Mem[2].HWM-r.Mem[0].RSS) / float64(r.Clients) / 1024
	fmt.Fprintf(w, "\nRSS per socket: %.1f KiB idle, %.1f KiB at peak (VmHWM after publishing − RSS before the sockets).\n", perIdle, perPeak)
	if r.Mem[0].Goroutines > 0 {
		fmt.Fprintf(w, "Goroutines per socket: %.2f (client and server side).\n",
			float64(r.Mem[1].Goroutines-r.Mem[0].Goroutines)/float64(r.Clients))
	}
}
