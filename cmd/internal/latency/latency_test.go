package latency

import (
	"slices"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	ms := time.Millisecond
	var twenty []time.Duration
	for i := 20; i >= 1; i-- { // unsorted on purpose
		twenty = append(twenty, time.Duration(i)*ms)
	}
	cases := []struct {
		name string
		in   []time.Duration
		want Summary
	}{
		{"empty", nil, Summary{}},
		{"one value", []time.Duration{7}, Summary{N: 1, Mean: 7, P50: 7, P95: 7, P99: 7, Max: 7}},
		{"twenty, descending", twenty,
			Summary{N: 20, Mean: 10500 * time.Microsecond, P50: 10 * ms, P95: 19 * ms, P99: 20 * ms, Max: 20 * ms}},
		{"ten with an outlier", []time.Duration{5, 1, 4, 2, 3, 100, 6, 7, 8, 9},
			Summary{N: 10, Mean: 14, P50: 5, P95: 100, P99: 100, Max: 100}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := slices.Clone(c.in)
			if got := Summarize(in); got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
			if !slices.Equal(in, c.in) {
				t.Fatalf("Summarize reordered its input: %v", in)
			}
		})
	}
}

func TestMs(t *testing.T) {
	cases := []struct {
		in   time.Duration
		want string
	}{
		{0, "0.00"},
		{1234 * time.Microsecond, "1.23"},
		{9990 * time.Microsecond, "9.99"},
		{10 * time.Millisecond, "10.0"},
		{42500 * time.Microsecond, "42.5"},
		{100 * time.Millisecond, "100"},
		{1500 * time.Millisecond, "1500"},
	}
	for _, c := range cases {
		if got := Ms(c.in); got != c.want {
			t.Errorf("Ms(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}
