package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// The whole tool, in-process on miniredis, with a short job: every
// transport sees updates and the table has its four rows.
func TestCompareEmbedded(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole service")
	}
	c := config{Embedded: true, Steps: 6, Interval: 30 * time.Millisecond, PollEvery: 100 * time.Millisecond,
		ProgressRate: 50, Timeout: time.Minute}
	var out bytes.Buffer
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := run(context.Background(), c, &out, logger); err != nil {
		t.Fatal(err)
	}
	report := out.String()
	t.Log("\n" + report)
	if strings.Contains(report, "Errors:") {
		t.Fatalf("a watcher failed:\n%s", report)
	}
	for _, name := range []string{tWS, tSSE, tLongPoll, tPoll} {
		var line string
		for _, l := range strings.Split(report, "\n") {
			if strings.HasPrefix(l, "| "+name+" |") {
				line = l
			}
		}
		cells := strings.Split(line, "|")
		if len(cells) < 8 {
			t.Fatalf("no row for %s:\n%s", name, report)
		}
		if seen := strings.TrimSpace(cells[6]); seen == "0" {
			t.Errorf("%s saw no update:\n%s", name, report)
		}
	}
}
