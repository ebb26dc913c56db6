// Package latency owns the summaries of delivery delays that the measuring
// tools (cmd/compare, cmd/loadgen) compute and print: the mean, the
// nearest-rank percentiles and the maximum of a set of durations, and the
// way those durations are written in milliseconds.
package latency

import (
	"fmt"
	"slices"
	"time"
)

// Summary describes a set of delays.
type Summary struct {
	N                        int
	Mean, P50, P95, P99, Max time.Duration
}

// Summarize returns the mean, the nearest-rank 50th, 95th and 99th
// percentiles and the maximum of ds. It does not modify ds.
func Summarize(ds []time.Duration) Summary {
	if len(ds) == 0 {
		return Summary{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return Summary{
		N:    len(s),
		Mean: sum / time.Duration(len(s)),
		P50:  percentile(s, 50),
		P95:  percentile(s, 95),
		P99:  percentile(s, 99),
		Max:  s[len(s)-1],
	}
}

// percentile is the nearest-rank percentile of sorted (non-empty).
func percentile(sorted []time.Duration, p int) time.Duration {
	rank := (p*len(sorted) + 99) / 100 // ceil(p/100 * n)
	return sorted[max(rank, 1)-1]
}

// Ms formats d in milliseconds with a precision that suits its size.
func Ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	case v < 100:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}
