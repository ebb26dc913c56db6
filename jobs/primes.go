package jobs

import (
	"context"
	"fmt"
	"math"
)

// primesSegment is how many odd numbers one sieve segment covers. 1<<18
// bytes fits in a typical L2 cache, which is what makes a segmented sieve
// fast, and gives a progress report and a cancellation check every ~half
// million numbers.
const primesSegment = 1 << 18

// primesParams are the params of a primes job; the bounds of n are in
// primesSchema.
type primesParams struct {
	N int64 `json:"n"`
}

const primesSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "Primes",
  "description": "Counts the prime numbers up to n.",
  "type": "object",
  "properties": {
    "n": {
      "type": "integer",
      "title": "Up to n",
      "description": "Count the primes less than or equal to this number (2 to 10,000,000,000).",
      "minimum": 2,
      "maximum": 10000000000
    }
  },
  "required": ["n"],
  "additionalProperties": false
}`

// Primes returns the "primes" job type: CPU-bound work with steady,
// predictable progress, for trying out rate and ETA reporting.
func Primes() Type {
	return Define(Spec[primesParams]{
		Name:        "primes",
		Description: "Counts the prime numbers up to n with a segmented sieve of Eratosthenes.",
		Schema:      primesSchema,
		Run:         runPrimes,
	})
}

type primesResult struct {
	Count int64 `json:"count"`
	N     int64 `json:"n"`
}

func runPrimes(ctx context.Context, p primesParams, _ Env, r Reporter) (any, error) {
	count, err := countPrimes(ctx, p.N, primesSegment, func(done, found int64) {
		r.Progress(done, p.N, "sieve", fmt.Sprintf("%d primes so far", found))
	})
	if err != nil {
		return nil, fmt.Errorf("primes: %w", err)
	}
	return primesResult{Count: count, N: p.N}, nil
}

// countPrimes returns the number of primes <= n. It sieves odd numbers only
// (2 is counted apart), segOdds of them per segment, and calls progress after
// each segment with how many numbers are settled and the primes found so far.
// segOdds is a parameter so tests can force many segment boundaries on
// small n.
func countPrimes(ctx context.Context, n int64, segOdds int, progress func(done, found int64)) (int64, error) {
	if n < 2 {
		return 0, nil
	}
	if segOdds < 1 {
		segOdds = 1
	}
	base := smallOddPrimes(isqrt(n))
	count := int64(1) // the prime 2

	// next[k] is the index, relative to the current segment, of the next odd
	// multiple of base[k] still to be crossed out. Carrying it from segment
	// to segment saves a division per prime per segment, which matters at
	// n = 1e10 (~20000 segments × ~10000 primes).
	next := make([]int64, len(base))
	for k, q := range base {
		// Start at q*q: smaller multiples have a smaller prime factor and
		// were crossed out by it. Index i stands for 2i+3.
		next[k] = (q*q - 3) / 2
	}

	var oddsTotal int64 // odd numbers in [3, n]
	if n >= 3 {
		oddsTotal = (n-3)/2 + 1
	}
	seg := make([]byte, min(int64(segOdds), max(oddsTotal, 1)))
	for lo := int64(0); lo < oddsTotal; lo += int64(len(seg)) {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		size := min(int64(len(seg)), oddsTotal-lo)
		s := seg[:size]
		clear(s)
		for k, q := range base {
			j := next[k] - lo
			if j >= size {
				// Primes are ascending, so q*q of every later one lies
				// beyond this segment too; their next[] only grows.
				if next[k] == (q*q-3)/2 {
					break
				}
				continue
			}
			for ; j < size; j += q {
				s[j] = 1
			}
			next[k] = lo + j
		}
		for _, c := range s {
			if c == 0 {
				count++
			}
		}
		if progress != nil {
			// Everything up to the segment's last odd number, 2(lo+size)+1,
			// is settled; after the final segment that is all of n even
			// when n is even.
			settled := 2*(lo+size) + 1
			if lo+size == oddsTotal {
				settled = n
			}
			progress(settled, count)
		}
	}
	if oddsTotal == 0 && progress != nil {
		progress(n, count)
	}
	return count, nil
}

// smallOddPrimes returns the odd primes <= limit with a plain sieve. limit
// is at most 1e5 here, so this is instant.
func smallOddPrimes(limit int64) []int64 {
	if limit < 3 {
		return nil
	}
	composite := make([]bool, limit+1)
	var ps []int64
	for i := int64(3); i <= limit; i += 2 {
		if composite[i] {
			continue
		}
		ps = append(ps, i)
		for j := i * i; j <= limit; j += 2 * i {
			composite[j] = true
		}
	}
	return ps
}

// isqrt returns floor(sqrt(n)) exactly; math.Sqrt alone can be off by one
// for large n because of float64 rounding.
func isqrt(n int64) int64 {
	r := int64(math.Sqrt(float64(n)))
	for r*r > n {
		r--
	}
	for (r+1)*(r+1) <= n {
		r++
	}
	return r
}
