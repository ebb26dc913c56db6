package progress

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"taskstream/progress/progresstest"
)

// fakeClock is a settable clock for Reporter.now. The trailing timer still
// runs on real time; the clock only decides what is due and the rate.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// publishedDones returns the Done of each of the group's "progress"
// events, in order.
func publishedDones(t testing.TB, l *Log, group string) []int64 {
	t.Helper()
	dones := []int64{}
	for _, p := range progressEvents(t, l, group) {
		dones = append(dones, p.Done)
	}
	return dones
}

// progressEvents returns the group's "progress" events decoded, in order.
func progressEvents(t testing.TB, l *Log, group string) []Progress {
	t.Helper()
	var out []Progress
	for _, ev := range mustRead(t, l, group, 0).Events {
		if ev.Name != "progress" {
			continue
		}
		var p Progress
		if err := json.Unmarshal(ev.Data, &p); err != nil {
			t.Fatalf("progress event %d: %v: %s", ev.Seq, err, ev.Data)
		}
		out = append(out, p)
	}
	return out
}

func logEvents(t testing.TB, l *Log, group string) []LogEntry {
	t.Helper()
	var out []LogEntry
	for _, ev := range mustRead(t, l, group, 0).Events {
		if ev.Name != "log" {
			continue
		}
		var e LogEntry
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			t.Fatalf("log event %d: %v: %s", ev.Seq, err, ev.Data)
		}
		out = append(out, e)
	}
	return out
}

func newTestReporter(t testing.TB, l *Log, group string, cfg ReporterConfig) *Reporter {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	r := NewReporter(context.Background(), l, group, cfg)
	t.Cleanup(r.Close)
	return r
}

// A tight loop of reports publishes a small fraction of them; the final
// one always goes out at once and stays the last progress event.
func TestReporterThrottlesTightLoop(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l := NewLog(srv.Client(t), LogConfig{MaxLen: 100000})
		const group, total = "job:tight", 10000
		r := newTestReporter(t, l, group, ReporterConfig{})
		for i := int64(1); i <= total; i++ {
			r.Progress(i, total, "work", "")
		}
		// No Close, no wait: the final report was published synchronously.
		evs := progressEvents(t, l, group)
		if len(evs) == 0 || len(evs) >= total/10 {
			t.Fatalf("%d progress events for %d reports, want a few (< %d)", len(evs), total, total/10)
		}
		t.Logf("%d reports → %d events", total, len(evs))
		checkFinalLast := func(evs []Progress) {
			t.Helper()
			lastP := evs[len(evs)-1]
			if lastP.Done != total || lastP.Total != total || lastP.Percent != 100 || lastP.ETA != 0 {
				t.Fatalf("last progress event %+v, want the final report", lastP)
			}
			for i := 1; i < len(evs); i++ {
				if evs[i].Done <= evs[i-1].Done {
					t.Fatalf("progress went from %d to %d", evs[i-1].Done, evs[i].Done)
				}
			}
		}
		checkFinalLast(evs)
		if evs[0].Done != 1 {
			t.Fatalf("the first report is published at once; first event %+v", evs[0])
		}
		// No trailing report sneaks in after the final one, neither from
		// the timer (give it several intervals) nor from Close.
		time.Sleep(300 * time.Millisecond)
		r.Close()
		after := progressEvents(t, l, group)
		if len(after) != len(evs) {
			t.Fatalf("%d progress events after the final one", len(after)-len(evs))
		}
		checkFinalLast(after)
	})
}

// A final report that comes while a coalesced one waits for its interval
// replaces it: the coalesced one is never published after the final one.
func TestReporterFinalReplacesCoalesced(t *testing.T) {
	srv := progresstest.Embedded(t)
	l := NewLog(srv.Client(t), LogConfig{})
	const group = "job:final"
	clock := newFakeClock()
	r := newTestReporter(t, l, group, ReporterConfig{MaxRate: 0.01}) // interval 100 s
	r.now = clock.Now
	r.Progress(1, 10, "a", "")
	r.Progress(5, 10, "a", "") // coalesced
	r.Progress(10, 10, "a", "done")
	r.Progress(7, 10, "a", "late") // coalesced again, after the final
	r.Close()
	evs := progressEvents(t, l, group)
	var dones []int64
	for _, p := range evs {
		dones = append(dones, p.Done)
	}
	if fmt.Sprint(dones) != "[1 10 7]" {
		t.Fatalf("published done values %v, want [1 10 7] (first, final, the report flushed by Close)", dones)
	}
}

// A coalesced report goes out when its interval has passed, without any
// further call.
func TestReporterTrailingTimerFlushes(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l := NewLog(srv.Client(t), LogConfig{})
		const group = "job:trail"
		clock := newFakeClock()
		r := newTestReporter(t, l, group, ReporterConfig{MaxRate: 20}) // interval 50 ms
		r.now = clock.Now                                              // frozen: only the timer can publish
		r.Progress(1, 100, "s", "first")
		r.Progress(2, 100, "s", "coalesced away")
		r.Progress(3, 100, "s", "trailing")
		waitFor(t, "the trailing report", func() bool { return len(progressEvents(t, l, group)) >= 2 })
		evs := progressEvents(t, l, group)
		if len(evs) != 2 || evs[0].Done != 1 || evs[1].Done != 3 || evs[1].Message != "trailing" {
			t.Fatalf("events %+v, want the first report and then only the latest one", evs)
		}
		// The timer re-arms for the next coalesced report.
		r.Progress(4, 100, "s", "again")
		waitFor(t, "the next trailing report", func() bool { return len(progressEvents(t, l, group)) == 3 })
		if evs := progressEvents(t, l, group); evs[2].Done != 4 {
			t.Fatalf("second trailing event %+v", evs[2])
		}
		r.Close()
		if n := len(progressEvents(t, l, group)); n != 3 {
			t.Fatalf("Close published %d more events with nothing pending", n-3)
		}
	})
}

func TestReporterCloseFlushesAndStops(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l := NewLog(srv.Client(t), LogConfig{})
		const group = "job:close"
		r := newTestReporter(t, l, group, ReporterConfig{MaxRate: 0.01}) // interval 100 s
		r.Progress(1, 4, "s", "")
		r.Progress(2, 4, "s", "")
		r.Progress(3, 4, "s", "pending")
		r.Close()
		evs := progressEvents(t, l, group)
		if len(evs) != 2 || evs[0].Done != 1 || evs[1].Done != 3 || evs[1].Message != "pending" {
			t.Fatalf("events after Close %+v, want done 1 and the coalesced 3", evs)
		}
		r.Close() // idempotent
		r.Progress(4, 4, "s", "after close")
		r.Flush()
		if n := len(progressEvents(t, l, group)); n != 2 {
			t.Fatalf("reports after Close were published: %d events", n)
		}
		r.mu.Lock()
		timer := r.timer
		r.mu.Unlock()
		if timer != nil {
			t.Fatal("Close left the trailing timer running")
		}
	})
}

func TestReporterFlush(t *testing.T) {
	srv := progresstest.Embedded(t)
	l := NewLog(srv.Client(t), LogConfig{})
	const group = "job:flush"
	r := newTestReporter(t, l, group, ReporterConfig{MaxRate: 0.01})
	r.Progress(1, 10, "", "")
	r.Flush() // nothing pending
	r.Progress(2, 10, "", "")
	r.Flush()
	r.Flush()
	evs := progressEvents(t, l, group)
	if len(evs) != 2 || evs[1].Done != 2 {
		t.Fatalf("events %+v, want done 1 and 2", evs)
	}
}

// Percent, rate and ETA, with a controlled clock.
func TestReporterFields(t *testing.T) {
	srv := progresstest.Embedded(t)
	l := NewLog(srv.Client(t), LogConfig{})
	const group = "job:fields"
	clock := newFakeClock()
	r := newTestReporter(t, l, group, ReporterConfig{MaxRate: 1000})
	r.now = clock.Now
	steps := []struct {
		advance     time.Duration
		done, total int64
		stage       string
		want        Progress
		etaKey      bool // "eta_s" present in the JSON
	}{
		{0, 0, 100, "load", Progress{Done: 0, Total: 100, Percent: 0, Stage: "load", Rate: 0}, false},
		{time.Second, 50, 100, "load", Progress{Done: 50, Total: 100, Percent: 50, Stage: "load", Rate: 50, ETA: 1}, true},
		// Samples closer than 200 ms keep the rate.
		{100 * time.Millisecond, 55, 100, "load", Progress{Done: 55, Total: 100, Percent: 55, Stage: "load", Rate: 50, ETA: 0.9}, true},
		// 30 more in the 1 s since the last sample: 0.3*30 + 0.7*50 = 44.
		{900 * time.Millisecond, 80, 100, "load", Progress{Done: 80, Total: 100, Percent: 80, Stage: "load", Rate: 44, ETA: 0.5}, true},
		// The final report: 0.3*20 + 0.7*44 = 36.8, and no ETA.
		{time.Second, 100, 100, "load", Progress{Done: 100, Total: 100, Percent: 100, Stage: "load", Rate: 36.8}, false},
		// Going back (a new stage) restarts the rate.
		{time.Second, 10, 300, "save", Progress{Done: 10, Total: 300, Percent: 3.33, Stage: "save", Rate: 0}, false},
		// Unknown total: no percent, no ETA, but a rate.
		{time.Second, 20, 0, "scan", Progress{Done: 20, Total: 0, Percent: 0, Stage: "scan", Rate: 10}, false},
		// More than the total is 100 %.
		{time.Second, 150, 100, "over", Progress{Done: 150, Total: 100, Percent: 100, Stage: "over", Rate: 46}, false},
	}
	for i, st := range steps {
		clock.Advance(st.advance)
		r.Progress(st.done, st.total, st.stage, fmt.Sprintf("step %d", i))
		evs := mustRead(t, l, group, 0).Events
		if len(evs) != i+1 {
			t.Fatalf("step %d: %d events, want every report published", i, len(evs))
		}
		raw := evs[i].Data
		var got Progress
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatal(err)
		}
		st.want.Message = fmt.Sprintf("step %d", i)
		if got != st.want {
			t.Errorf("step %d: %+v, want %+v (%s)", i, got, st.want, raw)
		}
		if has := strings.Contains(string(raw), `"eta_s"`); has != st.etaKey {
			t.Errorf("step %d: eta_s present %v, want %v: %s", i, has, st.etaKey, raw)
		}
		for _, key := range []string{`"done"`, `"total"`, `"percent"`, `"rate"`} {
			if !strings.Contains(string(raw), key) {
				t.Errorf("step %d: %s missing: %s", i, key, raw)
			}
		}
	}
}

// Log events past the burst are dropped, and the next one that passes says
// how many were dropped.
func TestReporterLogRateLimit(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l := NewLog(srv.Client(t), LogConfig{})
		const group = "job:logs"
		// A token every ~11 days: after the burst, everything is dropped.
		r := newTestReporter(t, l, group, ReporterConfig{LogRate: 1e-6, LogBurst: 3})
		for i := range 10 {
			r.Log("info", fmt.Sprintf("line %d", i))
		}
		got := logEvents(t, l, group)
		if len(got) != 3 {
			t.Fatalf("%d log events published, want the burst of 3: %+v", len(got), got)
		}
		for i, e := range got {
			if e.Level != "info" || e.Message != fmt.Sprintf("line %d", i) {
				t.Fatalf("log event %d: %+v", i, e)
			}
		}
		// Let the next ones through (the limiter is the reporter's own).
		r.logs.SetLimit(rate.Inf)
		r.Log("warn", "after the storm")
		r.Log("error", "and then")
		got = logEvents(t, l, group)
		if len(got) != 5 {
			t.Fatalf("%d log events, want 5", len(got))
		}
		if want := "after the storm (7 earlier messages dropped by the rate limit)"; got[3].Message != want || got[3].Level != "warn" {
			t.Fatalf("first message after drops %+v, want %q", got[3], want)
		}
		if got[4].Message != "and then" || got[4].Level != "error" {
			t.Fatalf("the drop count was reported twice: %+v", got[4])
		}
	})
}

// Progress, Log, Flush and Close from many goroutines: no race, and once
// everyone is done and Close has returned, the final report is the last
// progress event.
func TestReporterConcurrentUse(t *testing.T) {
	srv := progresstest.Embedded(t)
	l := NewLog(srv.Client(t), LogConfig{MaxLen: 100000})
	const group, workers, per = "job:conc", 8, 500
	r := newTestReporter(t, l, group, ReporterConfig{MaxRate: 200, LogRate: 100, LogBurst: 5})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				r.Progress(int64(i), workers*per, fmt.Sprint("w", w), "")
				if i%50 == 0 {
					r.Log("debug", "tick")
					r.Flush()
				}
			}
		})
	}
	wg.Wait()
	r.Progress(workers*per, workers*per, "done", "")
	r.Close()
	var wg2 sync.WaitGroup
	for range 4 {
		wg2.Go(func() { r.Close(); r.Progress(1, 2, "late", "") })
	}
	wg2.Wait()
	evs := progressEvents(t, l, group)
	if len(evs) == 0 || evs[len(evs)-1].Done != workers*per || evs[len(evs)-1].Stage != "done" {
		t.Fatalf("last progress event %+v, want the final report", evs[len(evs)-1])
	}
}

// Publishing failures do not fail the caller: the report is logged as lost.
func TestReporterSurvivesRedisDown(t *testing.T) {
	srv := progresstest.Embedded(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	l := NewLog(rdb, LogConfig{})
	counter := countHandler{quietLogger().Handler(), new(sync.Mutex), map[string]int{}}
	r := newTestReporter(t, l, "job:down", ReporterConfig{MaxRate: 0.01, Logger: slog.New(counter)})
	srv.Stop()
	r.Progress(1, 3, "", "")
	r.Progress(2, 3, "", "") // coalesced, lost at Close
	r.Log("info", "x")
	r.Close()
	if got := counter.count("progress report lost"); got != 2 {
		t.Fatalf("%d progress reports logged as lost, want 2", got)
	}
	if got := counter.count("log event lost"); got != 1 {
		t.Fatalf("%d log events logged as lost, want 1", got)
	}
}

// Every report accepted before Close returns is published: Close must not
// leave a window in which a report is coalesced and then dropped.
func TestReporterCloseRacesProgress(t *testing.T) {
	srv := progresstest.Embedded(t)
	l := NewLog(srv.Client(t), LogConfig{})
	for it := range 100 {
		group := fmt.Sprintf("job:cr%d", it)
		r := newTestReporter(t, l, group, ReporterConfig{MaxRate: 0.01}) // all but the first coalesce
		var lastAccepted int64
		stop := make(chan struct{})
		go func() {
			defer close(stop)
			for i := int64(1); ; i++ {
				r.Progress(i, 1<<40, "", "")
				r.mu.Lock()
				closed := r.closed // still open after the call: it was accepted
				r.mu.Unlock()
				if closed {
					return
				}
				lastAccepted = i
			}
		}()
		time.Sleep(time.Duration(it%10) * 100 * time.Microsecond)
		r.Close()
		<-stop
		evs := progressEvents(t, l, group)
		if lastAccepted > 0 && (len(evs) == 0 || evs[len(evs)-1].Done < lastAccepted) {
			t.Fatalf("iteration %d: report %d was accepted before Close but the last published is %+v", it, lastAccepted, evs)
		}
	}
}

// HoldFinal: a final report within the interval waits like a coalesced
// one, and Take hands it over instead of publishing it; Flush, Close and
// the trailing timer still publish it, so it is never dropped; a final
// report after the interval goes at once.
func TestReporterHoldFinal(t *testing.T) {
	cases := []struct {
		name      string
		rate      float64       // MaxRate
		advance   time.Duration // between the first and the final report
		end       string        // take, close, flush or timer
		wantDones string        // the done values published, in order
		wantTaken int64         // Done of the report Take returned (0: nil)
	}{
		{name: "take hands it over", rate: 0.01, end: "take", wantDones: "[0]", wantTaken: 3},
		{name: "close publishes it", rate: 0.01, end: "close", wantDones: "[0 3]"},
		{name: "flush publishes it", rate: 0.01, end: "flush", wantDones: "[0 3]"},
		{name: "the timer publishes it", rate: 20, end: "timer", wantDones: "[0 3]"},
		{name: "after the interval it goes at once", rate: 0.01, advance: 200 * time.Second, end: "take", wantDones: "[0 3]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
				l := NewLog(srv.Client(t), LogConfig{})
				const group = "job:hold"
				clock := newFakeClock()
				r := newTestReporter(t, l, group, ReporterConfig{MaxRate: tc.rate, HoldFinal: true})
				r.now = clock.Now
				r.Progress(0, 3, "s", "first")
				r.Progress(1, 3, "s", "coalesced away")
				clock.Advance(tc.advance)
				r.Progress(3, 3, "s", "final")
				var taken *Progress
				switch tc.end {
				case "take":
					taken = r.Take()
				case "close":
					r.Close()
				case "flush":
					r.Flush()
				case "timer":
					waitFor(t, "the held final report", func() bool { return len(progressEvents(t, l, group)) == 2 })
				}
				dones := publishedDones(t, l, group)
				if fmt.Sprint(dones) != tc.wantDones {
					t.Fatalf("published done values %v, want %s", dones, tc.wantDones)
				}
				switch {
				case tc.wantTaken == 0 && taken != nil:
					t.Fatalf("Take returned %+v, want nil", taken)
				case tc.wantTaken != 0 && (taken == nil || taken.Done != tc.wantTaken || taken.Message != "final" || taken.Percent != 100):
					t.Fatalf("Take returned %+v, want the final report", taken)
				}
				// Take stops the reporter like Close: nothing more goes out,
				// and a second Take has nothing.
				if p := r.Take(); p != nil {
					t.Fatalf("a second Take returned %+v", p)
				}
				r.Progress(3, 3, "s", "after take")
				r.Flush()
				if n := len(progressEvents(t, l, group)); n != len(dones) {
					t.Fatalf("reports after Take were published: %d events, want %d", n, len(dones))
				}
			})
		})
	}
}

// FirstDelay: the first report waits, coalescing those that follow, so
// work that ends within the delay publishes only its final report (or
// hands it to Take), and longer work gets its latest report when the
// delay is over; after that MaxRate holds as before.
func TestReporterFirstDelay(t *testing.T) {
	cases := []struct {
		name      string
		holdFinal bool
		advance   time.Duration // between the first and the last report
		end       string        // take, close or timer
		final     bool          // the last report is the final one
		wantDones string        // the done values published, in order
		wantTaken int64         // Done of the report Take returned (0: nil)
	}{
		{name: "quick work hands only its final report over", holdFinal: true, final: true, end: "take", wantDones: "[]", wantTaken: 3},
		{name: "quick work publishes only its final report", final: true, end: "close", wantDones: "[3]"},
		{name: "a report after the delay goes at once", advance: time.Hour, end: "close", wantDones: "[2]"},
		{name: "longer work gets its latest report when the delay is over", end: "timer", wantDones: "[2]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
				l := NewLog(srv.Client(t), LogConfig{})
				const group = "job:first-delay"
				clock := newFakeClock()
				// MaxRate 0.01: after a report nothing else is due for 100 s
				// of the frozen clock, so only the delay can let one out.
				r := newTestReporter(t, l, group, ReporterConfig{MaxRate: 0.01, HoldFinal: tc.holdFinal, FirstDelay: 20 * time.Millisecond})
				r.now = clock.Now
				r.Progress(0, 3, "s", "first")
				r.Progress(1, 3, "s", "coalesced away")
				clock.Advance(tc.advance)
				if tc.final {
					r.Progress(3, 3, "s", "final")
				} else {
					r.Progress(2, 3, "s", "latest")
				}
				if got := progressEvents(t, l, group); len(got) != 0 && tc.end != "close" && tc.advance == 0 {
					t.Fatalf("published within the delay: %+v", got)
				}
				var taken *Progress
				switch tc.end {
				case "take":
					taken = r.Take()
				case "close":
					r.Close()
				case "timer":
					waitFor(t, "the first report after the delay", func() bool { return len(progressEvents(t, l, group)) == 1 })
					r.Progress(2, 3, "s", "within the interval") // coalesced: MaxRate holds after the first
					if n := len(progressEvents(t, l, group)); n != 1 {
						t.Fatalf("%d events after a report within the interval, want 1", n)
					}
				}
				dones := publishedDones(t, l, group)
				if fmt.Sprint(dones) != tc.wantDones {
					t.Fatalf("published done values %v, want %s", dones, tc.wantDones)
				}
				if (taken == nil) != (tc.wantTaken == 0) || taken != nil && taken.Done != tc.wantTaken {
					t.Fatalf("Take returned %+v, want done %d", taken, tc.wantTaken)
				}
			})
		})
	}
}
