package jobs

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"
)

func TestPrimesDecode(t *testing.T) {
	testDecode(t, Primes(), withCommon("n", []decodeCase{
		{name: "min", in: `{"n":2}`, want: `{"n":2}`},
		{name: "max", in: `{"n":10000000000}`, want: `{"n":10000000000}`},
		{name: "zero", in: `{"n":0}`, err: "params.n: must be >= 2"},
		{name: "one", in: `{"n":1}`, err: "params.n: must be >= 2"},
		{name: "negative", in: `{"n":-5}`, err: "params.n: must be >= 2"},
		{name: "too big", in: `{"n":10000000001}`, err: "params.n: must be <= 10000000000"},
		{name: "overflow", in: `{"n":99999999999999999999}`, err: "params.n: must be <= 10000000000"},
		{name: "string", in: `{"n":"100"}`, err: "params.n: must be integer, not string"},
		{name: "fraction", in: `{"n":10.5}`, err: "params.n: must be integer, not number"},
		{name: "object", in: `{"n":{}}`, err: "params.n: must be integer, not object"},
		{name: "unknown", in: `{"n":10,"m":1}`, err: "params.m: unknown field"},
	}))
}

// naivePi returns pi[k] = the number of primes <= k for k <= limit, with a
// plain sieve that shares no code with countPrimes.
func naivePi(limit int) []int64 {
	composite := make([]bool, limit+1)
	pi := make([]int64, limit+1)
	var c int64
	for i := 2; i <= limit; i++ {
		if !composite[i] {
			c++
			for j := i * i; j <= limit; j += i {
				composite[j] = true
			}
		}
		pi[i] = c
	}
	return pi
}

func TestCountPrimesKnown(t *testing.T) {
	tests := []struct{ n, want int64 }{
		{2, 1}, {3, 2}, {4, 2}, {5, 3}, {9, 4}, {10, 4}, {11, 5},
		{100, 25}, {1000, 168}, {1_000_000, 78498}, {10_000_000, 664579},
	}
	for _, tc := range tests {
		got, err := countPrimes(t.Context(), tc.n, primesSegment, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("pi(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

// TestCountPrimesSegments forces many segment boundaries with tiny segments
// on small n, and checks n right around the real segment's boundaries,
// where an off-by-one in carrying multiples from segment to segment shows.
func TestCountPrimesSegments(t *testing.T) {
	const edge = 2*primesSegment + 1 // the last odd number of the first segment
	pi := naivePi(2*edge + 64)
	check := func(n int64, seg int) {
		t.Helper()
		got, err := countPrimes(t.Context(), n, seg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got != pi[n] {
			t.Fatalf("segment %d: pi(%d) = %d, want %d", seg, n, got, pi[n])
		}
	}
	for _, seg := range []int{1, 2, 3, 5, 8, 64, 1000, primesSegment} {
		limit := int64(5000)
		if seg < 64 {
			limit = 800 // hundreds of segments per n: keep it quick under -race
		}
		for n := int64(2); n <= limit; n++ {
			check(n, seg)
		}
	}
	for _, center := range []int64{edge, 2 * edge} {
		for n := center - 3; n <= center+3; n++ {
			check(n, primesSegment)
		}
	}
	// Squares of primes are where crossing out starts: miss one and the
	// square is counted as a prime.
	for _, p := range []int64{3, 5, 7, 11, 13, 31, 37, 1021} {
		segs := []int{1, 7, 64}
		if p*p > 10000 {
			segs = []int{64, 1000} // a segment of 1 would mean 500000 segments
		}
		for _, seg := range segs {
			check(p*p-1, seg)
			check(p*p, seg)
			check(p*p+1, seg)
		}
	}
}

func TestPrimesRun(t *testing.T) {
	tests := []struct {
		n, count int64
	}{
		{2, 1}, {3, 2}, {1000, 168}, {3_000_000, 216816},
	}
	for _, tc := range tests {
		r := &builtinTestReporter{}
		res, err := runType(t.Context(), t, Primes(), `{"n":`+strconv.FormatInt(tc.n, 10)+`}`, Env{JobID: "j", Attempt: 1}, r)
		if err != nil {
			t.Fatal(err)
		}
		if res != (primesResult{Count: tc.count, N: tc.n}) {
			t.Fatalf("n=%d: result %+v, want count %d", tc.n, res, tc.count)
		}
		calls := r.calls()
		if len(calls) == 0 {
			t.Fatalf("n=%d: no progress", tc.n)
		}
		var prev int64
		for _, c := range calls {
			if c.Total != tc.n || c.Stage != "sieve" || c.Done < prev || c.Done > tc.n {
				t.Fatalf("n=%d: bad progress %+v after done=%d", tc.n, c, prev)
			}
			prev = c.Done
		}
		if prev != tc.n {
			t.Fatalf("n=%d: last progress done=%d, want n", tc.n, prev)
		}
		if tc.n > 2*primesSegment && len(calls) < 2 {
			t.Fatalf("n=%d: %d progress calls, want one per segment", tc.n, len(calls))
		}
	}
}

func TestPrimesCancel(t *testing.T) {
	for _, before := range []bool{true, false} {
		ctx, cancel := context.WithCancel(t.Context())
		if before {
			cancel()
		}
		// The largest n would take many seconds; cancel after the first
		// segment and expect the run to stop at the next check.
		r := &builtinTestReporter{onProgress: func(int64, int64) { cancel() }}
		typ := Primes()
		norm, err := typ.Decode([]byte(`{"n":10000000000}`))
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() {
			_, err := typ.run(ctx, norm, Env{JobID: "j", Attempt: 1}, r)
			errc <- err
		}()
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("before=%v: error %v, want one wrapping context.Canceled", before, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return after cancel") // a hang guard, not a timing assertion
		}
		if n := len(r.calls()); n > 1 {
			t.Fatalf("before=%v: %d segments after cancel", before, n)
		}
		cancel()
	}
}

func BenchmarkCountPrimes1e8(b *testing.B) {
	for b.Loop() {
		if _, err := countPrimes(b.Context(), 100_000_000, primesSegment, nil); err != nil {
			b.Fatal(err)
		}
	}
}
