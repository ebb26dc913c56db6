package jobs

import (
	"bufio"
	"context"
	"encoding/csv"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// reportStream is the second PCG seed word. It is fixed so that the seed
// param alone determines the data; changing it changes every report.
const reportStream = 0x7265706f7274 // "report"

// reportParams are the params of a report job; their bounds and the seed's
// default are in reportSchema.
type reportParams struct {
	Rows int   `json:"rows"`
	Seed int64 `json:"seed"`
}

// reportSchema bounds seed to the integers a browser's JSON.parse represents
// exactly (±(2^53-1)), so a seed shown on the page and submitted again
// reproduces the same report.
const reportSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "Report",
  "description": "Generates a CSV of synthetic 2025 sales and summarizes it.",
  "type": "object",
  "properties": {
    "rows": {
      "type": "integer",
      "title": "Rows",
      "description": "How many sales rows the CSV file has.",
      "examples": [1000],
      "minimum": 1,
      "maximum": 10000000
    },
    "seed": {
      "type": "integer",
      "title": "Seed",
      "description": "Random seed: the same seed and rows give the same file.",
      "minimum": -9007199254740991,
      "maximum": 9007199254740991,
      "default": 0
    }
  },
  "required": ["rows"],
  "additionalProperties": false
}`

// Report returns the "report" job type: I/O-heavy work that leaves a
// downloadable artifact, for trying out the artifact endpoint.
func Report() Type {
	return Define(Spec[reportParams]{
		Name:        "report",
		Description: "Generates a downloadable CSV of synthetic 2025 sales rows from a seed and summarizes revenue by region and month.",
		Schema:      reportSchema,
		Run:         runReport,
		HasArtifact: true,
		Queues:      []string{"bulk"},
		// The same rows and seed make the same file: a second request for
		// it while the first is still being made is refused (naming it).
		Unique: 10 * time.Minute,
	})
}

var (
	reportRegions  = []string{"North", "South", "East", "West", "Central"}
	reportProducts = []struct {
		name  string
		cents int64 // list price; each sale varies it by ±10%
	}{
		{"Widget", 1250},
		{"Gadget", 2499},
		{"Gizmo", 899},
		{"Sprocket", 350},
		{"Doohickey", 4999},
		{"Thingamajig", 12900},
	}
	reportHeader = []string{"date", "region", "product", "units", "unit_price", "revenue"}
)

const reportMaxUnits = 20

// reportTotals is one line of the summary. Revenue is in currency units,
// rounded to cents (it is summed in integer cents, so it is exact).
type reportTotals struct {
	Units   int64   `json:"units"`
	Revenue float64 `json:"revenue"`
}

type reportSummary struct {
	ByRegion map[string]reportTotals `json:"by_region"`
	ByMonth  map[string]reportTotals `json:"by_month"`
	Total    reportTotals            `json:"total"`
}

type reportResult struct {
	Rows     int           `json:"rows"`
	Bytes    int64         `json:"bytes"`
	Summary  reportSummary `json:"summary"`
	Artifact string        `json:"artifact"`
}

// centTotals accumulates in integer cents so that the summary equals the
// sum of the CSV's revenue column exactly, whatever the row count.
type centTotals struct{ units, cents int64 }

func (c centTotals) out() reportTotals {
	return reportTotals{Units: c.units, Revenue: float64(c.cents) / 100}
}

func runReport(ctx context.Context, p reportParams, env Env, r Reporter) (any, error) {
	if env.JobID == "" || strings.ContainsAny(env.JobID, `/\`) || env.JobID == "." || env.JobID == ".." {
		// The id becomes a file name; refuse anything that could escape
		// ArtifactDir rather than trust every caller.
		return nil, fmt.Errorf("report: unusable job id %q for an artifact file", env.JobID)
	}
	path := env.ArtifactPath()
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	// Write beside the final name and rename at the end: the artifact
	// endpoint never serves a half-written file, and a rename within one
	// directory is atomic.
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	done := false
	defer func() {
		if !done {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	// CreateTemp makes the file private; the artifact is meant to be read
	// like any other file the service writes.
	if err := f.Chmod(0o644); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}

	bw := bufio.NewWriterSize(f, 1<<16)
	// csv.NewWriter reuses bw rather than wrapping it again because bw is
	// already a large enough bufio.Writer.
	w := csv.NewWriter(bw)
	sum, err := writeReport(ctx, w, p, r)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	// A cancel that arrived after the last check should still not leave an
	// artifact behind for a job that will be recorded as canceled.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	done = true
	return reportResult{
		Rows:     p.Rows,
		Bytes:    fi.Size(),
		Summary:  sum,
		Artifact: "/api/jobs/" + url.PathEscape(env.JobID) + "/artifact",
	}, nil
}

// writeReport writes the CSV rows and returns their summary. Dates advance
// evenly through 2025 so the file reads chronologically; everything else is
// drawn from a PCG seeded by p.Seed, so the bytes depend on p alone.
func writeReport(ctx context.Context, w *csv.Writer, p reportParams, r Reporter) (reportSummary, error) {
	type day struct {
		date  string
		month int // 0-based
	}
	start := time.Date(2025, time.January, 1, 0, 0, 0, 0, time.UTC)
	var days []day
	for d := start; d.Year() == 2025; d = d.AddDate(0, 0, 1) {
		days = append(days, day{d.Format(time.DateOnly), int(d.Month()) - 1})
	}
	unitStrs := make([]string, reportMaxUnits+1)
	for i := range unitStrs {
		unitStrs[i] = strconv.Itoa(i)
	}

	var (
		byRegion = make([]centTotals, len(reportRegions))
		byMonth  [12]centTotals
		total    centTotals
	)
	rng := rand.New(rand.NewPCG(uint64(p.Seed), reportStream))
	rows := int64(p.Rows)
	// Every 1% or 10000 rows, whichever is fewer: a report per row would
	// cost more than the row itself at 10M rows, even throttled.
	every := max(1, min((rows+99)/100, 10000))
	rec := make([]string, len(reportHeader))
	var buf []byte

	if err := w.Write(reportHeader); err != nil {
		return reportSummary{}, err
	}
	for i := int64(0); i < rows; i++ {
		if i%every == 0 {
			if err := ctx.Err(); err != nil {
				return reportSummary{}, err
			}
			r.Progress(i, rows, "generate", "")
		}
		d := days[i*int64(len(days))/rows]
		region := rng.IntN(len(reportRegions))
		prod := reportProducts[rng.IntN(len(reportProducts))]
		units := 1 + rng.IntN(reportMaxUnits)
		price := (prod.cents*int64(90+rng.IntN(21)) + 50) / 100
		revenue := int64(units) * price

		rec[0] = d.date
		rec[1] = reportRegions[region]
		rec[2] = prod.name
		rec[3] = unitStrs[units]
		buf = appendCents(buf[:0], price)
		rec[4] = string(buf)
		buf = appendCents(buf[:0], revenue)
		rec[5] = string(buf)
		if err := w.Write(rec); err != nil {
			return reportSummary{}, err
		}

		c := centTotals{int64(units), revenue}
		byRegion[region] = byRegion[region].add(c)
		byMonth[d.month] = byMonth[d.month].add(c)
		total = total.add(c)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return reportSummary{}, err
	}
	r.Progress(rows, rows, "generate", fmt.Sprintf("wrote %d rows", rows))

	// Every region and month is listed, zeros included, so the summary has
	// the same shape for any row count.
	sum := reportSummary{
		ByRegion: make(map[string]reportTotals, len(reportRegions)),
		ByMonth:  make(map[string]reportTotals, 12),
		Total:    total.out(),
	}
	for i, name := range reportRegions {
		sum.ByRegion[name] = byRegion[i].out()
	}
	for m, t := range byMonth {
		sum.ByMonth[fmt.Sprintf("2025-%02d", m+1)] = t.out()
	}
	return sum, nil
}

func (c centTotals) add(o centTotals) centTotals {
	return centTotals{c.units + o.units, c.cents + o.cents}
}

// appendCents formats a non-negative amount of cents as "123.45".
func appendCents(b []byte, cents int64) []byte {
	b = strconv.AppendInt(b, cents/100, 10)
	c := cents % 100
	return append(b, '.', byte('0'+c/10), byte('0'+c%10))
}
