package jobs

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestReportDecode(t *testing.T) {
	testDecode(t, Report(), withCommon("rows", []decodeCase{
		{name: "minimal", in: `{"rows":1}`, want: `{"rows":1,"seed":0}`},
		{name: "seed null is the default", in: `{"rows":1,"seed":null}`, want: `{"rows":1,"seed":0}`},
		{name: "seed", in: `{"rows":10,"seed":-42}`, want: `{"rows":10,"seed":-42}`},
		{name: "max", in: `{"rows":10000000,"seed":9007199254740991}`, want: `{"rows":10000000,"seed":9007199254740991}`},
		{name: "min seed", in: `{"rows":1,"seed":-9007199254740991}`, want: `{"rows":1,"seed":-9007199254740991}`},
		{name: "rows zero", in: `{"rows":0}`, err: "params.rows: must be >= 1"},
		{name: "rows negative", in: `{"rows":-3}`, err: "params.rows: must be >= 1"},
		{name: "rows too many", in: `{"rows":10000001}`, err: "params.rows: must be <= 10000000"},
		{name: "seed only", in: `{"seed":5}`, err: "params.rows: is required"},
		{name: "seed beyond JS", in: `{"rows":1,"seed":9007199254740992}`, err: "params.seed: must be <= 9007199254740991"},
		{name: "seed beyond JS negative", in: `{"rows":1,"seed":-9007199254740992}`, err: "params.seed: must be >= -9007199254740991"},
		{name: "seed string", in: `{"rows":1,"seed":"7"}`, err: "params.seed: must be integer, not string"},
		{name: "rows fraction", in: `{"rows":1.25}`, err: "params.rows: must be integer, not number"},
		{name: "unknown", in: `{"rows":1,"format":"csv"}`, err: "params.format: unknown field"},
	}))
}

// runReportIn runs a report job whose artifacts go to dir.
func runReportIn(ctx context.Context, t *testing.T, dir, params string) (reportResult, *builtinTestReporter, error) {
	t.Helper()
	r := &builtinTestReporter{}
	res, err := runType(ctx, t, Report(), params, Env{JobID: "job-1", Attempt: 1, ArtifactDir: dir}, r)
	if err != nil {
		return reportResult{}, r, err
	}
	return res.(reportResult), r, nil
}

// cents parses a CSV money field back into cents, failing the test on
// anything but the "123.45" form the report promises.
func cents(t *testing.T, s string) int64 {
	t.Helper()
	whole, frac, ok := strings.Cut(s, ".")
	if !ok || len(frac) != 2 {
		t.Fatalf("money %q is not d.cc", s)
	}
	w, err1 := strconv.ParseInt(whole, 10, 64)
	f, err2 := strconv.ParseInt(frac, 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("money %q: %v %v", s, err1, err2)
	}
	return w*100 + f
}

func TestReportRun(t *testing.T) {
	tests := []struct {
		rows int
		seed int64
	}{
		{1, 0}, {11, 3}, {365, -1}, {1000, 42}, {25000, 7},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("rows=%d,seed=%d", tc.rows, tc.seed), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "not", "yet", "there")
			res, rep, err := runReportIn(t.Context(), t, dir, fmt.Sprintf(`{"rows":%d,"seed":%d}`, tc.rows, tc.seed))
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "job-1.csv")
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if res.Rows != tc.rows || res.Bytes != int64(len(data)) || res.Artifact != "/api/jobs/job-1/artifact" {
				t.Fatalf("result rows=%d bytes=%d artifact=%q; file has %d bytes", res.Rows, res.Bytes, res.Artifact, len(data))
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Fatalf("artifact dir holds %d entries, want only the artifact (no temp file)", len(entries))
			}

			recs, err := csv.NewReader(bytes.NewReader(data)).ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(recs[0], []string{"date", "region", "product", "units", "unit_price", "revenue"}) {
				t.Fatalf("header %v", recs[0])
			}
			if len(recs)-1 != tc.rows {
				t.Fatalf("%d rows, want %d", len(recs)-1, tc.rows)
			}

			// Recompute the summary from the file alone.
			want := map[string]*centTotals{}
			add := func(key string, units, c int64) {
				if want[key] == nil {
					want[key] = &centTotals{}
				}
				want[key].units += units
				want[key].cents += c
			}
			prevDate := ""
			for i, rec := range recs[1:] {
				date, region := rec[0], rec[1]
				d, err := time.Parse(time.DateOnly, date)
				if err != nil || d.Year() != 2025 {
					t.Fatalf("row %d: date %q", i, date)
				}
				if date < prevDate {
					t.Fatalf("row %d: date %s before %s", i, date, prevDate)
				}
				prevDate = date
				units, err := strconv.ParseInt(rec[3], 10, 64)
				if err != nil || units < 1 {
					t.Fatalf("row %d: units %q", i, rec[3])
				}
				price, revenue := cents(t, rec[4]), cents(t, rec[5])
				if units*price != revenue {
					t.Fatalf("row %d: %d x %d != %d", i, units, price, revenue)
				}
				add("region:"+region, units, revenue)
				add("month:"+date[:7], units, revenue)
				add("total", units, revenue)
			}
			check := func(key string, got reportTotals) {
				t.Helper()
				w := want[key]
				if w == nil {
					w = &centTotals{}
				}
				if got != w.out() {
					t.Errorf("%s: summary %+v, CSV says %+v", key, got, w.out())
				}
			}
			if len(res.Summary.ByRegion) != len(reportRegions) || len(res.Summary.ByMonth) != 12 {
				t.Fatalf("summary lists %d regions and %d months", len(res.Summary.ByRegion), len(res.Summary.ByMonth))
			}
			for name, got := range res.Summary.ByRegion {
				check("region:"+name, got)
			}
			for month, got := range res.Summary.ByMonth {
				check("month:"+month, got)
			}
			check("total", res.Summary.Total)

			calls := rep.calls()
			if len(calls) == 0 || len(calls) > 102 {
				t.Fatalf("%d progress calls, want 1..102", len(calls))
			}
			last := calls[len(calls)-1]
			if last.Done != int64(tc.rows) || last.Total != int64(tc.rows) || last.Stage != "generate" {
				t.Fatalf("last progress %+v", last)
			}
		})
	}
}

func TestReportDeterministic(t *testing.T) {
	read := func(params string) []byte {
		dir := t.TempDir()
		if _, _, err := runReportIn(t.Context(), t, dir, params); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, "job-1.csv"))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	a := read(`{"rows":2000,"seed":99}`)
	if b := read(`{"rows":2000,"seed":99}`); !bytes.Equal(a, b) {
		t.Fatal("same seed, different bytes")
	}
	if c := read(`{"rows":2000,"seed":100}`); bytes.Equal(a, c) {
		t.Fatal("different seeds, same bytes")
	}
	// The default seed is 0, so leaving it out is the same report.
	if !bytes.Equal(read(`{"rows":50}`), read(`{"rows":50,"seed":0}`)) {
		t.Fatal("omitted seed differs from seed 0")
	}
}

func TestReportRerunReplaces(t *testing.T) {
	// A retry writes over the artifact of an earlier attempt.
	dir := t.TempDir()
	if _, _, err := runReportIn(t.Context(), t, dir, `{"rows":500}`); err != nil {
		t.Fatal(err)
	}
	res, _, err := runReportIn(t.Context(), t, dir, `{"rows":5}`)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "job-1.csv"))
	if err != nil || fi.Size() != res.Bytes {
		t.Fatalf("artifact %v %v, want %d bytes", fi, err, res.Bytes)
	}
}

func TestReportCancel(t *testing.T) {
	for _, before := range []bool{true, false} {
		t.Run(fmt.Sprintf("before=%v", before), func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if before {
				cancel()
			}
			typ := Report()
			norm, err := typ.Decode([]byte(`{"rows":10000000}`))
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			r := &builtinTestReporter{onProgress: func(done, _ int64) {
				if done > 0 {
					cancel()
				}
			}}
			errc := make(chan error, 1)
			go func() {
				_, err := typ.run(ctx, norm, Env{JobID: "job-1", Attempt: 1, ArtifactDir: dir}, r)
				errc <- err
			}()
			select {
			case err := <-errc:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("error %v, want one wrapping context.Canceled", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return after cancel") // a hang guard, not a timing assertion
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 0 {
				t.Fatalf("canceled run left %v behind", entries[0].Name())
			}
		})
	}
}

func TestReportBadJobID(t *testing.T) {
	dir := t.TempDir()
	for _, id := range []string{"", ".", "..", "../x", "a/b", `a\b`} {
		_, err := runType(t.Context(), t, Report(), `{"rows":1}`, Env{JobID: id, Attempt: 1, ArtifactDir: dir}, &builtinTestReporter{})
		if err == nil {
			t.Errorf("job id %q accepted", id)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("files written: %v", entries)
	}
}

func TestReportUnwritableDir(t *testing.T) {
	// ArtifactDir is a file, so neither MkdirAll nor CreateTemp can work.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := runReportIn(t.Context(), t, file, `{"rows":1}`)
	if err == nil {
		t.Fatal("want an error")
	}
}

func TestAppendCents(t *testing.T) {
	for c, want := range map[int64]string{0: "0.00", 5: "0.05", 10: "0.10", 99: "0.99", 100: "1.00", 123456: "1234.56"} {
		if got := string(appendCents(nil, c)); got != want {
			t.Errorf("appendCents(%d) = %q, want %q", c, got, want)
		}
	}
}
