package progress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// logRecorder is a slog handler that keeps every record, so a test can
// check what the hub said (a retry loop shows up as repeated warnings).
type logRecorder struct {
	mu   sync.Mutex
	recs []string // "LEVEL msg group=..."
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	l.mu.Lock()
	l.recs = append(l.recs, b.String())
	l.mu.Unlock()
	return nil
}

// matching returns the records that contain every one of parts.
func (l *logRecorder) matching(parts ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.recs {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(r, p) }) {
			out = append(out, r)
		}
	}
	return out
}

// firstAnswer waits for a sink's first answer: its initial SyncInfo or
// its failure.
func firstAnswer(t testing.TB, s *recSink) (*SyncInfo, error) {
	t.Helper()
	waitFor(t, "the first answer", func() bool { return len(s.Syncs()) > 0 || len(s.Failures()) > 0 })
	if f := s.Failures(); len(f) > 0 {
		return nil, f[0]
	}
	info := s.Syncs()[0]
	return &info, nil
}

// Every position a subscriber can name gets an answer at once: up to
// math.MaxInt64 (which used to overflow the stream id and fail every read
// of the group, with a warning and a retry forever), beyond the log
// (recovered false, the whole history), and negative ones (the whole
// history). No read fails, so nothing is logged, and the group's other
// subscribers are not held back.
func TestHubSubscribeAnyPosition(t *testing.T) {
	const n = 10
	tests := []struct {
		name      string
		after     int64
		recovered bool
		from      int64 // first seq replayed
	}{
		{"max int64", math.MaxInt64, false, 1},
		{"max int64 - 1", math.MaxInt64 - 1, false, 1},
		{"one beyond the log", n + 1, false, 1},
		{"far beyond the log", 1 << 40, false, 1},
		{"at the end", n, true, n + 1},
		{"mid-log", 4, true, 5},
		{"zero", 0, true, 1},
		{"negative", -1, true, 1},
		{"min int64", math.MinInt64, true, 1},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rec := &logRecorder{}
		l, h := newTestHub(t, srv, LogConfig{}, HubConfig{Logger: slog.New(rec)})
		for i, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				group := fmt.Sprintf("chat:any%d", i)
				var epoch string
				for j := int64(1); j <= n; j++ {
					epoch = mustPublish(t, l, group, "message", j).Epoch
				}
				// One subscriber at the odd position, one at 0 beside it,
				// joining together, so they share the group's reads.
				odd, plain := &recSink{}, &recSink{}
				defer mustSubscribe(t, h, group, tc.after, "", odd).Close()
				defer mustSubscribe(t, h, group, 0, "", plain).Close()
				info, err := firstAnswer(t, odd)
				if err != nil {
					t.Fatalf("after %d failed: %v", tc.after, err)
				}
				want := SyncInfo{Epoch: epoch, LastSeq: n, Replayed: int(n - tc.from + 1), Recovered: tc.recovered, Initial: true}
				if !reflect.DeepEqual(*info, want) {
					t.Fatalf("after %d: SyncInfo %+v, want %+v", tc.after, *info, want)
				}
				if _, err := firstAnswer(t, plain); err != nil {
					t.Fatalf("the other subscriber failed: %v", err)
				}
				last := mustPublish(t, l, group, "message", "live")
				waitFor(t, "live delivery", func() bool { return odd.reached(last.Seq, epoch) && plain.reached(last.Seq, epoch) })
				checkContiguous(t, "odd position", odd.Events(), tc.from, last.Seq, epoch)
				checkDelivery(t, "position 0", plain, 0, last.Seq, epoch)
				if got := rec.matching("group=" + group); len(got) > 0 {
					t.Fatalf("the hub logged about %s: %q", group, got)
				}
			})
		}
	})
}

// failRange is a go-redis hook that answers the log reads of one group
// that start at one stream id with a permanent error reply, as a read at a
// position Redis cannot handle would be, and counts those reads.
type failRange struct {
	start string // XRANGE start id to fail

	mu    sync.Mutex
	fails int
}

type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

func (f *failRange) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (f *failRange) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (f *failRange) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			args := c.Args()
			if len(args) > 2 && strings.EqualFold(fmt.Sprint(args[0]), "xrange") && args[2] == f.start {
				f.mu.Lock()
				f.fails++
				f.mu.Unlock()
				err := replyError("ERR Invalid stream ID specified as stream command argument")
				c.SetErr(err)
				return err
			}
		}
		return next(ctx, cmds)
	}
}

func (f *failRange) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fails
}

// A read that fails for good is not retried in a loop: the subscribers at
// the position whose read fails get Failed (once, logged once), and those
// at other positions of the same group get their answer as usual.
func TestHubPermanentReadErrorFailsOnlyItsSubscribers(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		const group = "chat:perm"
		hook := &failRange{start: afterID(2)}
		rdb := srv.Client(t)
		rdb.AddHook(hook)
		rec := &logRecorder{}
		l := NewLog(rdb, LogConfig{})
		h := NewHub(srv.Client(t), l, HubConfig{Logger: slog.New(rec)})
		t.Cleanup(func() { shutdownHub(t, h) })
		pub := NewLog(srv.Client(t), LogConfig{})
		var epoch string
		for i := range 6 {
			epoch = mustPublish(t, pub, group, "message", i).Epoch
		}
		bad, good := &recSink{}, &recSink{}
		defer mustSubscribe(t, h, group, 2, "", bad).Close()
		defer mustSubscribe(t, h, group, 4, "", good).Close()
		if _, err := firstAnswer(t, bad); err == nil || IsUnavailable(err) {
			t.Fatalf("subscriber at the failing position: err %v, want a permanent error", err)
		}
		info, err := firstAnswer(t, good)
		if err != nil || !info.Recovered || info.Replayed != 2 {
			t.Fatalf("subscriber at another position: %+v, %v", info, err)
		}
		// A later subscriber at the failing position fails the same way;
		// a new one at 0 is served.
		bad2, fresh := &recSink{}, &recSink{}
		defer mustSubscribe(t, h, group, 2, "", bad2).Close()
		if _, err := firstAnswer(t, bad2); err == nil {
			t.Fatal("second subscriber at the failing position got an answer")
		}
		defer mustSubscribe(t, h, group, 0, "", fresh).Close()
		if _, err := firstAnswer(t, fresh); err != nil {
			t.Fatalf("subscriber at 0: %v", err)
		}
		last := mustPublish(t, pub, group, "message", "live")
		waitFor(t, "live delivery", func() bool { return good.reached(last.Seq, epoch) && fresh.reached(last.Seq, epoch) })
		checkContiguous(t, "good", good.Events(), 5, last.Seq, epoch)
		if n := bad.NumCalls() + bad2.NumCalls(); n != 0 {
			t.Fatalf("failed subscribers got %d deliveries", n)
		}
		if f := len(bad.Failures()) + len(bad2.Failures()); f != 2 {
			t.Fatalf("Failed called %d times for 2 subscribers", f)
		}
		if got := rec.matching("retrying"); len(got) > 0 {
			t.Fatalf("a permanent error was retried: %q", got)
		}
		// Each failing subscriber costs its group at most two reads: the
		// shared one and its own.
		if n := hook.count(); n > 4 {
			t.Fatalf("%d reads at the failing position for 2 subscribers", n)
		}
	})
}

// With Redis down, a new subscriber gets an answer (ErrUnavailable) at
// once, from the hub's own view of its connection, not from the answer
// timer, which is set far away here. Established subscribers stay and
// continue once Redis is back; Ready says what is wrong meanwhile.
func TestHubRedisDown(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb, err := OpenRedis(context.Background(), srv.URL(), ModeSingle)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rdb.Close() })
		l := NewLog(rdb, LogConfig{})
		h := NewHub(rdb, l, HubConfig{Logger: testLogger(t), AnswerTimeout: time.Hour})
		t.Cleanup(func() { shutdownHub(t, h) })
		const group = "chat:down"
		live := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", live).Close()
		first := mustPublish(t, l, group, "message", 1)
		waitFor(t, "the first event", func() bool { return live.reached(1, first.Epoch) })
		waitFor(t, "the hub to be ready", func() bool { return h.Ready(context.Background()) == nil })

		srv.Stop()
		start := time.Now()
		late := &recSink{}
		sub, err := h.Subscribe("chat:down2", 0, "", late)
		if err == nil {
			defer sub.Close()
			_, err = firstAnswer(t, late)
		}
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("subscribe with Redis down: %v, want ErrUnavailable", err)
		}
		t.Logf("%s: a subscriber was told Redis is unavailable after %v: %v", srv.Kind, time.Since(start), err)
		waitFor(t, "the hub to see Redis down", func() bool { return h.connState() == connDown })
		if err := h.Ready(context.Background()); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("Ready with Redis down: %v", err)
		} else {
			t.Logf("Ready: %v", err)
		}
		if _, err := h.Subscribe(group, 0, "", &recSink{}); !errors.Is(err, ErrUnavailable) {
			// The hub has seen its connection fail by now: it says so at once.
			t.Fatalf("Subscribe while down: %v", err)
		}
		if f := live.Failures(); len(f) > 0 {
			t.Fatalf("an established subscriber was failed: %v", f)
		}

		srv.Restart(t)
		waitFor(t, "Ready after the restart", func() bool { return h.Ready(context.Background()) == nil })
		var ev *Event
		waitFor(t, "a publish after the restart", func() bool {
			ev, err = l.Publish(context.Background(), group, "message", 2)
			return err == nil
		})
		waitFor(t, "the established subscriber to continue", func() bool { return live.reached(ev.Seq, ev.Epoch) })
		again := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", again).Close()
		if info, err := firstAnswer(t, again); err != nil || info.LastSeq != ev.Seq {
			t.Fatalf("subscriber after the restart: %+v %v", info, err)
		}
	})
}

// A Redis that accepts connections but answers nothing (here frozen with
// SIGSTOP) cannot be told from a slow one, so the answer timer bounds the
// wait: the subscriber is failed with ErrUnavailable, and Ready fails.
func TestHubAnswerTimeoutOnFrozenRedis(t *testing.T) {
	srv := progresstest.Real(t)
	rdb, err := OpenRedis(context.Background(), srv.URL(), ModeSingle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	l := NewLog(rdb, LogConfig{})
	h := NewHub(rdb, l, HubConfig{Logger: testLogger(t), AnswerTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { shutdownHub(t, h) })
	waitFor(t, "the hub to be ready", func() bool { return h.Ready(context.Background()) == nil })
	srv.Pause(t)
	sink := &recSink{}
	defer mustSubscribe(t, h, "chat:frozen", 0, "", sink).Close()
	if _, err := firstAnswer(t, sink); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("subscriber on a frozen Redis: %v, want ErrUnavailable", err)
	}
	if err := h.Ready(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ready on a frozen Redis: %v", err)
	}
	srv.Resume()
	waitFor(t, "Ready after the resume", func() bool { return h.Ready(context.Background()) == nil })
	again := &recSink{}
	defer mustSubscribe(t, h, "chat:frozen", 0, "", again).Close()
	if _, err := firstAnswer(t, again); err != nil {
		t.Fatalf("subscriber after the resume: %v", err)
	}
}

// IsUnavailable tells "Redis cannot serve now" from everything else.
func TestIsUnavailable(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"wrapped sentinel", fmt.Errorf("x: %w", ErrUnavailable), true},
		{"client closed", redis.ErrClosed, true},
		{"pool timeout", fmt.Errorf("read: %w", redis.ErrPoolTimeout), true},
		{"deadline", context.DeadlineExceeded, true},
		{"LOADING", replyError("LOADING Redis is loading the dataset in memory"), true},
		{"MASTERDOWN", replyError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."), true},
		{"READONLY", replyError("READONLY You can't write against a read only replica."), true},
		{"BUSY", replyError("BUSY Redis is busy running a script."), true},
		{"WRONGTYPE", replyError("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
		{"bad stream id", replyError("ERR Invalid stream ID specified as stream command argument"), false},
		{"nil reply", redis.Nil, false},
		{"canceled", context.Canceled, false},
		{"other", errors.New("boom"), false},
	}
	for _, tc := range tests {
		if got := IsUnavailable(tc.err); got != tc.want {
			t.Errorf("%s: IsUnavailable(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
	// And the real thing: a refused connection, through the client. The
	// pool's health check looks at the connection the PING takes (as it
	// does once that has been idle a moment), so the PING dials again
	// and is refused.
	setHealthCheckIdle(t, 0)
	srv := progresstest.Embedded(t)
	rdb, err := OpenRedis(context.Background(), srv.URL(), ModeSingle)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	srv.Stop()
	start := time.Now()
	err = rdb.Ping(context.Background()).Err()
	if !IsUnavailable(err) || Cause(err) != "connection refused" {
		t.Fatalf("PING to a stopped Redis: %v (cause %q)", err, Cause(err))
	}
	t.Logf("PING to a stopped Redis failed after %v: %v", time.Since(start), err)
}

// OpenRedis sets short timeouts unless the URL sets its own.
func TestOpenRedisTimeouts(t *testing.T) {
	srv := progresstest.Embedded(t)
	tests := []struct {
		query       string
		dial, read  time.Duration
		retries     int
		poolTimeout time.Duration
	}{
		{"", DefaultDialTimeout, DefaultReadTimeout, 0, DefaultPoolTimeout}, // go-redis stores "none" (-1) as 0
		{"?dial_timeout=3s&read_timeout=2s&max_retries=4&pool_timeout=5s", 3 * time.Second, 2 * time.Second, 4, 5 * time.Second},
		{"?read_timeout=250ms", DefaultDialTimeout, 250 * time.Millisecond, 0, DefaultPoolTimeout},
	}
	for _, tc := range tests {
		rdb, err := OpenRedis(context.Background(), srv.URL()+tc.query, ModeSingle)
		if err != nil {
			t.Fatalf("%q: %v", tc.query, err)
		}
		o := rdb.(*redis.Client).Options()
		_ = rdb.Close()
		if o.DialTimeout != tc.dial || o.ReadTimeout != tc.read || o.WriteTimeout != tc.read || o.MaxRetries != tc.retries || o.PoolTimeout != tc.poolTimeout {
			t.Errorf("%q: dial %v read %v write %v retries %d pool %v", tc.query, o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.MaxRetries, o.PoolTimeout)
		}
	}
}
