package progress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// ---- helpers shared by the package's tests ----

// waitTimeout bounds every wait for an asynchronous condition. It is a
// deadline for failing a stuck test, never a performance threshold.
const waitTimeout = 10 * time.Second

// waitFor polls cond until it holds, and fails the test after waitTimeout.
// Call it from the test goroutine only.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitForDiag is waitFor with a description of the state on failure.
func waitForDiag(t testing.TB, what string, cond func() bool, diag func() string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; state: %s", waitTimeout, what, diag())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// mustPublish publishes and fails the test on error.
func mustPublish(t testing.TB, l *Log, group, name string, data any) *Event {
	t.Helper()
	ev, err := l.Publish(context.Background(), group, name, data)
	if err != nil {
		t.Fatalf("Publish(%s, %s): %v", group, name, err)
	}
	return ev
}

func mustRead(t testing.TB, l *Log, group string, after int64) Snapshot {
	t.Helper()
	snap, err := l.Read(context.Background(), group, after)
	if err != nil {
		t.Fatalf("Read(%s, %d): %v", group, after, err)
	}
	return snap
}

// checkContiguous fails unless evs are exactly seqs from..to, in order, all
// of epoch (when epoch is not empty).
func checkContiguous(t testing.TB, what string, evs []*Event, from, to int64, epoch string) {
	t.Helper()
	if want := int(to - from + 1); len(evs) != max(want, 0) {
		t.Fatalf("%s: got %d events %s, want seqs %d..%d", what, len(evs), seqList(evs), from, to)
	}
	for i, ev := range evs {
		if ev.Seq != from+int64(i) {
			t.Fatalf("%s: event %d has seq %d, want %d (seqs %s)", what, i, ev.Seq, from+int64(i), seqList(evs))
		}
		if epoch != "" && ev.Epoch != epoch {
			t.Fatalf("%s: event seq %d has epoch %q, want %q", what, ev.Seq, ev.Epoch, epoch)
		}
	}
}

func seqList(evs []*Event) string {
	if len(evs) > 40 {
		return fmt.Sprintf("[%s … %s]", seqList(evs[:20]), seqList(evs[len(evs)-20:]))
	}
	s := make([]string, len(evs))
	for i, ev := range evs {
		s[i] = fmt.Sprint(ev.Seq)
	}
	return "[" + strings.Join(s, " ") + "]"
}

// ---- Log ----

func TestLogPublishAssignsSeqAndEpochPerGroup(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l := NewLog(srv.Client(t), LogConfig{})
		epochs := map[string]string{}
		// Interleave two groups: each counts on its own.
		for i := 1; i <= 5; i++ {
			for _, g := range []string{"job:a", "job:b"} {
				if g == "job:b" && i > 3 {
					continue
				}
				ev := mustPublish(t, l, g, "progress", map[string]int{"i": i})
				if ev.Seq != int64(i) {
					t.Fatalf("%s: event %d got seq %d", g, i, ev.Seq)
				}
				if ev.Group != g || ev.Name != "progress" || string(ev.Data) != fmt.Sprintf(`{"i":%d}`, i) {
					t.Fatalf("%s: returned event %+v", g, ev)
				}
				if len(ev.Epoch) != 16 {
					t.Fatalf("%s: epoch %q is not 16 hex digits", g, ev.Epoch)
				}
				if prev, ok := epochs[g]; ok && prev != ev.Epoch {
					t.Fatalf("%s: epoch changed from %q to %q without the log being lost", g, prev, ev.Epoch)
				}
				epochs[g] = ev.Epoch
			}
		}
		if epochs["job:a"] == epochs["job:b"] {
			t.Fatalf("two groups share the epoch %q", epochs["job:a"])
		}
		for g, n := range map[string]int64{"job:a": 5, "job:b": 3} {
			snap := mustRead(t, l, g, 0)
			if snap.Epoch != epochs[g] || snap.LastSeq != n {
				t.Fatalf("%s: Read gives epoch %q last %d, want %q %d", g, snap.Epoch, snap.LastSeq, epochs[g], n)
			}
			checkContiguous(t, g, snap.Events, 1, n, epochs[g])
		}
	})
}

func TestLogRead(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l := NewLog(srv.Client(t), LogConfig{})
		const group, n = "chat:lobby", 12
		var published []*Event
		for i := 1; i <= n; i++ {
			name := []string{"message", "join", "leave"}[i%3]
			published = append(published, mustPublish(t, l, group, name, map[string]any{"i": i, "text": fmt.Sprintf("hi %d", i)}))
		}
		epoch := published[0].Epoch
		tests := []struct {
			after     int64
			wantFirst int64
		}{
			{-5, 1}, {0, 1}, {1, 2}, {7, 8}, {n - 1, n}, {n, n + 1}, {n + 50, n + 1},
		}
		for _, tc := range tests {
			t.Run(fmt.Sprintf("after=%d", tc.after), func(t *testing.T) {
				snap := mustRead(t, l, group, tc.after)
				if snap.Epoch != epoch || snap.LastSeq != n {
					t.Fatalf("epoch %q last %d, want %q %d", snap.Epoch, snap.LastSeq, epoch, n)
				}
				checkContiguous(t, "Read", snap.Events, tc.wantFirst, n, epoch)
				for _, ev := range snap.Events {
					want := published[ev.Seq-1]
					if ev.Group != group || ev.Name != want.Name || string(ev.Data) != string(want.Data) || !ev.Time.Equal(want.Time) {
						t.Fatalf("seq %d: read %s %s %s %v, published %s %s %s %v", ev.Seq,
							ev.Group, ev.Name, ev.Data, ev.Time, want.Group, want.Name, want.Data, want.Time)
					}
				}
			})
		}
	})
}

// Read pages through the stream (readPage entries at a time); a long
// history must come back whole and in order.
func TestLogReadPagesLongHistory(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l := NewLog(srv.Client(t), LogConfig{MaxLen: 100000})
		const group = "job:long"
		n := int64(2*readPage + 37)
		for i := int64(1); i <= n; i++ {
			mustPublish(t, l, group, "log", i)
		}
		for _, after := range []int64{0, readPage - 1, readPage, readPage + 1, n - 1} {
			snap := mustRead(t, l, group, after)
			checkContiguous(t, fmt.Sprintf("Read after %d", after), snap.Events, after+1, n, snap.Epoch)
			for _, ev := range snap.Events {
				if string(ev.Data) != fmt.Sprint(ev.Seq) {
					t.Fatalf("seq %d carries data %s", ev.Seq, ev.Data)
				}
			}
		}
		// ReadN stops after n events, across pages too; n <= 0 is all.
		for _, tc := range []struct {
			after int64
			n     int
			last  int64
		}{
			{0, 1, 1}, {0, 10, 10}, {5, readPage, 5 + readPage}, {0, readPage + 1, readPage + 1},
			{readPage - 3, 2*readPage + 5, n}, {n - 2, 10, n}, {n, 10, n}, {7, 0, n}, {7, -1, n},
		} {
			snap, err := l.ReadN(t.Context(), group, tc.after, tc.n)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("ReadN after %d n %d", tc.after, tc.n)
			if snap.LastSeq != n {
				t.Fatalf("%s: last seq %d, want %d", name, snap.LastSeq, n)
			}
			if tc.after == n {
				if len(snap.Events) != 0 {
					t.Fatalf("%s: %d events, want none", name, len(snap.Events))
				}
				continue
			}
			checkContiguous(t, name, snap.Events, tc.after+1, tc.last, snap.Epoch)
		}
	})
}

func TestLogReadUnknownGroup(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l := NewLog(srv.Client(t), LogConfig{})
		mustPublish(t, l, "job:other", "state", nil)
		for _, after := range []int64{0, 5} {
			snap := mustRead(t, l, "job:nobody", after)
			if snap.Epoch != "" || snap.LastSeq != 0 || len(snap.Events) != 0 {
				t.Fatalf("Read(unknown, %d) = %+v, want empty", after, snap)
			}
		}
		ev, epoch, err := l.Last(context.Background(), "job:nobody", 10)
		if err != nil || ev != nil || epoch != "" {
			t.Fatalf("Last(unknown) = %v %q %v", ev, epoch, err)
		}
	})
}

func TestLogLast(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l := NewLog(srv.Client(t), LogConfig{})
		const group = "job:last"
		mustPublish(t, l, group, "state", map[string]string{"state": "active"})
		p := mustPublish(t, l, group, "progress", Progress{Done: 1, Total: 2})
		last := mustPublish(t, l, group, "log", LogEntry{Level: "info", Message: "x"})
		ev, epoch, err := l.Last(context.Background(), group, 10, "progress")
		if err != nil || ev == nil || ev.Seq != p.Seq || string(ev.Data) != string(p.Data) || epoch != p.Epoch {
			t.Fatalf("Last(progress) = %+v %q %v, want seq %d", ev, epoch, err, p.Seq)
		}
		ev, _, err = l.Last(context.Background(), group, 10)
		if err != nil || ev == nil || ev.Seq != last.Seq {
			t.Fatalf("Last() = %+v %v, want seq %d", ev, err, last.Seq)
		}
		ev, _, err = l.Last(context.Background(), group, 10, "result")
		if err != nil || ev != nil {
			t.Fatalf("Last(result) = %+v %v, want nil", ev, err)
		}
	})
}

func TestLogMaxLenTrimsHistory(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		const maxLen, n = 10, 1000
		l := NewLog(srv.Client(t), LogConfig{MaxLen: maxLen})
		const group = "job:trim"
		for i := 1; i <= n; i++ {
			mustPublish(t, l, group, "progress", i)
		}
		snap := mustRead(t, l, group, 0)
		if snap.LastSeq != n {
			t.Fatalf("LastSeq %d, want %d", snap.LastSeq, n)
		}
		if len(snap.Events) == 0 {
			t.Fatal("trimming removed every event")
		}
		first := snap.Events[0].Seq
		if first <= 1 {
			t.Fatalf("oldest retained seq is %d: nothing was trimmed after %d events with MaxLen %d", first, n, maxLen)
		}
		// XADD MAXLEN ~ trims whole stream nodes on a real server, so the
		// exact length is only known on miniredis.
		checkContiguous(t, "retained", snap.Events, first, n, snap.Epoch)
		if srv.Miniredis() != nil && len(snap.Events) != maxLen {
			t.Fatalf("miniredis trims exactly: retained %d, want %d", len(snap.Events), maxLen)
		}
		// Reading from before the retained window gives the retained tail.
		snap = mustRead(t, l, group, 3)
		checkContiguous(t, "after 3", snap.Events, first, n, snap.Epoch)
	})
}

func TestLogTTL(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		ttl := time.Hour
		if srv.Miniredis() == nil {
			ttl = time.Second // a real server expires on the wall clock
		}
		rdb := srv.Client(t)
		l := NewLog(rdb, LogConfig{TTL: ttl})
		const group = "job:ttl"
		first := mustPublish(t, l, group, "state", "a")
		mustPublish(t, l, group, "state", "b")
		// Both keys carry the TTL (refreshed by every publish).
		for _, key := range []string{l.metaKey(group), l.streamKey(group)} {
			pttl, err := rdb.PTTL(context.Background(), key).Result()
			if err != nil {
				t.Fatal(err)
			}
			if pttl <= 0 || pttl > ttl {
				t.Fatalf("PTTL %s = %v, want in (0, %v]", key, pttl, ttl)
			}
		}
		if m := srv.Miniredis(); m != nil {
			m.FastForward(ttl + time.Second)
		}
		waitFor(t, "the log to expire", func() bool {
			return mustRead(t, l, group, 0).LastSeq == 0
		})
		snap := mustRead(t, l, group, 0)
		if snap.Epoch != "" || len(snap.Events) != 0 {
			t.Fatalf("expired log still reads as %+v", snap)
		}
		n, err := rdb.Exists(context.Background(), l.metaKey(group), l.streamKey(group)).Result()
		if err != nil || n != 0 {
			t.Fatalf("EXISTS after expiry = %d, %v", n, err)
		}
		again := mustPublish(t, l, group, "state", "c")
		if again.Seq != 1 || again.Epoch == first.Epoch || again.Epoch == "" {
			t.Fatalf("after expiry: seq %d epoch %q (old epoch %q), want seq 1 and a new epoch", again.Seq, again.Epoch, first.Epoch)
		}
	})
}

func TestLogLostLogStartsNewEpoch(t *testing.T) {
	type loseFunc func(ctx context.Context, rdb *redis.Client, l *Log, group string) error
	tests := []struct {
		name string
		lose loseFunc
	}{
		{"DEL both keys", func(ctx context.Context, rdb *redis.Client, l *Log, group string) error {
			return rdb.Del(ctx, l.metaKey(group), l.streamKey(group)).Err()
		}},
		{"DEL meta only", func(ctx context.Context, rdb *redis.Client, l *Log, group string) error {
			return rdb.Del(ctx, l.metaKey(group)).Err()
		}},
		{"FLUSHALL", func(ctx context.Context, rdb *redis.Client, l *Log, group string) error {
			return rdb.FlushAll(ctx).Err()
		}},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		l := NewLog(rdb, LogConfig{})
		for i, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				group := fmt.Sprintf("job:lost%d", i)
				var old *Event
				for range 3 {
					old = mustPublish(t, l, group, "state", "old")
				}
				if err := tc.lose(context.Background(), rdb, l, group); err != nil {
					t.Fatal(err)
				}
				ev := mustPublish(t, l, group, "state", "new")
				if ev.Seq != 1 || ev.Epoch == old.Epoch || ev.Epoch == "" {
					t.Fatalf("after losing the log: seq %d epoch %q (old %q), want seq 1 and a new epoch", ev.Seq, ev.Epoch, old.Epoch)
				}
				snap := mustRead(t, l, group, 0)
				if snap.Epoch != ev.Epoch || snap.LastSeq != 1 {
					t.Fatalf("Read: epoch %q last %d", snap.Epoch, snap.LastSeq)
				}
				checkContiguous(t, "new log", snap.Events, 1, 1, ev.Epoch)
				if string(snap.Events[0].Data) != `"new"` {
					t.Fatalf("the old log's entries survived: %s", snap.Events[0].Data)
				}
			})
		}
	})
}

func TestLogPublishRejectsInvalidInput(t *testing.T) {
	srv := progresstest.Embedded(t)
	l := NewLog(srv.Client(t), LogConfig{})
	tests := []struct {
		name        string
		group, enam string
		data        any
	}{
		{"empty group", "", "state", nil},
		{"upper-case kind", "Job:1", "state", nil},
		{"empty id", "job:", "state", nil},
		{"space in id", "job:a b", "state", nil},
		{"newline in id", "job:a\n", "state", nil},
		{"newline after group", "dashboard\n", "state", nil},
		{"id too long", "job:" + strings.Repeat("x", 129), "state", nil},
		{"kind too long", strings.Repeat("a", 33), "state", nil},
		{"two colons", "job:a:b", "state", nil},
		{"empty name", "job:1", "", nil},
		{"upper-case name", "job:1", "State", nil},
		{"newline in name", "job:1", "state\nx", nil},
		{"space in name", "job:1", "a b", nil},
		{"name too long", "job:1", strings.Repeat("a", 65), nil},
		{"truncated raw JSON", "job:1", "state", json.RawMessage(`{"a":`)},
		{"empty raw JSON", "job:1", "state", json.RawMessage(``)},
		{"two raw JSON values", "job:1", "state", json.RawMessage(`1 2`)},
		{"raw text", "job:1", "state", json.RawMessage("hello\nworld")},
		{"unencodable channel", "job:1", "state", make(chan int)},
		{"unencodable NaN", "job:1", "state", math.NaN()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := l.Publish(context.Background(), tc.group, tc.enam, tc.data)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Publish = %v, %v; want an error wrapping ErrInvalid", ev, err)
			}
		})
	}
	// Nothing reached Redis.
	keys, err := srv.Client(t).Keys(context.Background(), "*").Result()
	if err != nil || len(keys) != 0 {
		t.Fatalf("invalid publishes left keys %v (%v)", keys, err)
	}
	// Valid edge cases are accepted.
	for _, g := range []string{"dashboard", "job:" + strings.Repeat("x", 128), "user:a.b@c-d_e", "chat:A-z_0"} {
		if _, err := l.Publish(context.Background(), g, "x.y-z_1", json.RawMessage(` [1, 2] `)); err != nil {
			t.Fatalf("Publish(%q): %v", g, err)
		}
	}
}

// Data with insignificant white space, newlines included, is compacted:
// it must not break the pub/sub framing, and must come back the same from
// the log and from the channel.
func TestLogDataSurvivesPubSubAndLog(t *testing.T) {
	tests := []struct {
		name string
		data any
		want string
	}{
		{"raw with newlines", json.RawMessage("{\n  \"a\": 1,\n  \"b\": [1,\n 2]\n}\n"), `{"a":1,"b":[1,2]}`},
		{"raw with CRLF and tabs", json.RawMessage("\r\n\t[ \"x\" ,\t{ } ]\r\n"), `["x",{}]`},
		{"escaped newline in a string", json.RawMessage(`{"text": "line1\nline2"}`), `{"text":"line1\nline2"}`},
		{"go string with newlines", "a\nb\n\n", `"a\nb\n\n"`},
		{"struct", LogEntry{Level: "info", Message: "x\ny"}, `{"level":"info","message":"x\ny"}`},
		{"nil", nil, `null`},
		{"raw null", json.RawMessage(`null`), `null`},
		{"unicode", map[string]string{"t": "héllo ☃ \u2028"}, `{"t":"héllo ☃ \u2028"}`},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		l := NewLog(rdb, LogConfig{})
		const group = "chat:ws"
		ctx := testCtx(t)
		ps := rdb.Subscribe(ctx, l.Channel(group))
		defer ps.Close()
		if _, err := ps.Receive(ctx); err != nil { // the subscription confirmation
			t.Fatal(err)
		}
		for i, tc := range tests {
			ev := mustPublish(t, l, group, "message", tc.data)
			if string(ev.Data) != tc.want {
				t.Errorf("%s: Publish returned data %s, want %s", tc.name, ev.Data, tc.want)
			}
			msg, err := ps.ReceiveMessage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(msg.Payload, "\n"); got != 4 {
				t.Errorf("%s: payload has %d newlines, want exactly the 4 separators: %q", tc.name, got, msg.Payload)
			}
			live, err := decodeMessage(group, msg.Payload)
			if err != nil {
				t.Fatalf("%s: decodeMessage: %v", tc.name, err)
			}
			if live.Seq != int64(i+1) || live.Epoch != ev.Epoch || live.Name != "message" || string(live.Data) != tc.want || !live.Time.Equal(ev.Time) {
				t.Errorf("%s: live event %d %s %s %s %v, want %d %s message %s %v", tc.name,
					live.Seq, live.Epoch, live.Name, live.Data, live.Time, i+1, ev.Epoch, tc.want, ev.Time)
			}
			if !json.Valid(live.Frame()) {
				t.Errorf("%s: frame is not JSON: %s", tc.name, live.Frame())
			}
		}
		snap := mustRead(t, l, group, 0)
		checkContiguous(t, "log", snap.Events, 1, int64(len(tests)), "")
		for i, tc := range tests {
			if got := string(snap.Events[i].Data); got != tc.want {
				t.Errorf("%s: log data %s, want %s", tc.name, got, tc.want)
			}
		}
	})
}

func TestLogConfigDefaultsAndKeys(t *testing.T) {
	l := NewLog(nil, LogConfig{})
	cfg := l.Config()
	if cfg.Prefix != "ts" || cfg.MaxLen != 1000 || cfg.TTL != 24*time.Hour {
		t.Fatalf("defaults %+v", cfg)
	}
	// Both keys of a group share one Cluster hash slot.
	if got := l.metaKey("job:1"); got != "ts:{job:1}:meta" {
		t.Fatalf("metaKey %q", got)
	}
	if got := l.streamKey("job:1"); got != "ts:{job:1}:log" {
		t.Fatalf("streamKey %q", got)
	}
	if got := l.Channel("job:1"); got != "ts:ch:job:1" {
		t.Fatalf("Channel %q", got)
	}
	if g, ok := l.groupOf(l.Channel("chat:x")); !ok || g != "chat:x" {
		t.Fatalf("groupOf = %q %v", g, ok)
	}
	if _, ok := l.groupOf("other:ch:job:1"); ok {
		t.Fatal("groupOf accepted a foreign channel")
	}
	// Two prefixes on one Redis do not see each other.
	srv := progresstest.Embedded(t)
	a := NewLog(srv.Client(t), LogConfig{Prefix: "a"})
	b := NewLog(srv.Client(t), LogConfig{Prefix: "b"})
	mustPublish(t, a, "job:1", "state", 1)
	if snap := mustRead(t, b, "job:1", 0); snap.LastSeq != 0 {
		t.Fatalf("prefix b sees prefix a's log: %+v", snap)
	}
	if ev := mustPublish(t, b, "job:1", "state", 1); ev.Seq != 1 {
		t.Fatalf("prefix b continues prefix a's seq: %d", ev.Seq)
	}
}

// PublishMany: each post gets its own seq (in order within its group) or
// its own error, in one round trip; it still works after Redis forgot the
// script (SCRIPT FLUSH), and what it appends reads back as published.
func TestLogPublishMany(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		var observed []int
		l := NewLog(rdb, LogConfig{OnPublish: func(_ string, appended int, _ time.Duration, _ error) { observed = append(observed, appended) }})
		posts := []Post{
			{"job:a", "note", map[string]int{"i": 1}},
			{"chat:b", "message", json.RawMessage(` {"text": "x"} `)},
			{"no group", "note", 1},
			{"job:a", "Bad Name", 1},
			{"job:a", "note", json.RawMessage(`{`)},
			{"job:a", "note", map[string]int{"i": 2}},
			{"chat:b", "message", nil},
			{"job:a", "note", map[string]int{"i": 3}},
		}
		evs, errs := l.PublishMany(t.Context(), posts)
		want := []int64{1, 1, 0, 0, 0, 2, 2, 3}
		for i, w := range want {
			switch {
			case w == 0 && (!errors.Is(errs[i], ErrInvalid) || evs[i] != nil):
				t.Errorf("post %d: %v %v, want ErrInvalid", i, evs[i], errs[i])
			case w != 0 && (errs[i] != nil || evs[i].Seq != w || evs[i].Group != posts[i].Group || evs[i].Epoch == ""):
				t.Errorf("post %d: %+v %v, want seq %d of %s", i, evs[i], errs[i], w, posts[i].Group)
			}
		}
		if fmt.Sprint(observed) != "[1 1 1 1 1]" {
			t.Errorf("OnPublish saw %v, want five appends", observed)
		}
		snap := mustRead(t, l, "job:a", 0)
		checkContiguous(t, "job:a", snap.Events, 1, 3, evs[0].Epoch)
		for i, ev := range snap.Events {
			if string(ev.Data) != fmt.Sprintf(`{"i":%d}`, i+1) {
				t.Errorf("job:a seq %d holds %s", ev.Seq, ev.Data)
			}
		}
		if snap := mustRead(t, l, "chat:b", 0); len(snap.Events) != 2 || string(snap.Events[0].Data) != `{"text":"x"}` || string(snap.Events[1].Data) != "null" {
			t.Errorf("chat:b holds %v", snap.Events)
		}
		if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		evs, errs = l.PublishMany(t.Context(), []Post{{"job:a", "note", 4}, {"chat:b", "message", 5}})
		if errs[0] != nil || errs[1] != nil || evs[0].Seq != 4 || evs[1].Seq != 3 {
			t.Fatalf("after SCRIPT FLUSH: %v %v", evs, errs)
		}
		// Now cached: EVALSHA alone.
		evs, errs = l.PublishMany(t.Context(), []Post{{"job:a", "note", 6}})
		if errs[0] != nil || evs[0].Seq != 5 {
			t.Fatalf("with the script cached: %v %v", evs, errs)
		}
	})
}

// A batch of posts that finds the append script missing from Redis's
// cache (a new Redis, a restart, SCRIPT FLUSH) loads it once and goes
// again by digest, in one pipeline: a fixed number of round trips and no
// EVAL, however many posts. Only a load that fails, or a cache lost again
// after the load, sends the source with each post. Either way every post
// is appended once, in order, and the caller's commands run once.
func TestLogPublishManyLoadsMissingScriptOnce(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		const groups, perGroup = 30, 2
		const n = groups * perGroup
		for i, tc := range []struct {
			name  string
			flush bool // SCRIPT FLUSH before the batch
			fault loadFault
			want  scriptCounts
		}{
			{name: "script cached", want: scriptCounts{Trips: 1, EvalShas: n}},
			// The batch, missing; SCRIPT LOAD; the batch again.
			{name: "script flushed", flush: true, want: scriptCounts{Trips: 3, EvalShas: 2 * n, Loads: 1}},
			{name: "load refused", flush: true, fault: loadRefused, want: scriptCounts{Trips: 3, Evals: n, EvalShas: n, Loads: 1}},
			{name: "script lost again after the load", flush: true, fault: loadForgotten, want: scriptCounts{Trips: 4, Evals: n, EvalShas: 2 * n, Loads: 1}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := t.Context()
				rdb := srv.Client(t)
				l := NewLog(rdb, LogConfig{})
				if tc.flush {
					if err := rdb.ScriptFlush(ctx).Err(); err != nil {
						t.Fatal(err)
					}
				} else if err := loadScripts(ctx, rdb, []*redis.Script{appendScript}); err != nil {
					t.Fatal(err)
				}
				traffic := &scriptTraffic{fault: tc.fault, flusher: srv.Client(t)}
				rdb.AddHook(traffic)
				group := func(j int) string { return fmt.Sprintf("job:noscript%d-%d", i, j) }
				var posts []Post
				for k := range perGroup {
					for j := range groups {
						posts = append(posts, Post{group(j), "note", k + 1})
					}
				}
				var incr *redis.IntCmd
				evs, errs := l.PublishWith(ctx, func(p redis.Pipeliner) { incr = p.Incr(ctx, group(0)+":calls") }, posts...)
				if got := traffic.counts(); got != tc.want {
					t.Errorf("the batch made %+v, want %+v", got, tc.want)
				}
				if incr.Val() != 1 {
					t.Errorf("the caller's INCR: %d, %v; want it run once", incr.Val(), incr.Err())
				}
				for k, p := range posts {
					if want := int64(k/groups + 1); errs[k] != nil || evs[k].Seq != want {
						t.Fatalf("post %d to %s: %+v %v, want seq %d", k, p.Group, evs[k], errs[k], want)
					}
				}
				for j := range groups {
					snap := mustRead(t, l, group(j), 0)
					checkContiguous(t, group(j), snap.Events, 1, perGroup, snap.Epoch)
					for k, ev := range snap.Events {
						if string(ev.Data) != fmt.Sprint(k+1) {
							t.Fatalf("%s seq %d holds %s", group(j), ev.Seq, ev.Data)
						}
					}
				}
			})
		}
	})
}

// PublishWith sends the caller's commands ahead of the appends in the
// same round trip: they run once and before the events (also when Redis
// forgot the append script and the appends go again once it is loaded),
// and the caller reads their results; with no valid post the commands
// still run.
func TestLogPublishWith(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		ctx := t.Context()
		rdb := srv.Client(t)
		l := NewLog(rdb, LogConfig{})
		for _, tc := range []struct {
			name  string
			flush bool // SCRIPT FLUSH first
			posts []Post
			seqs  []int64 // 0: an error
			// seqBefore is job:w's seq as the caller's commands read it:
			// they run before the appends.
			seqBefore string
		}{
			{name: "cached script", posts: []Post{{"job:w", "note", 1}, {"job:w", "note", 2}}, seqs: []int64{1, 2}, seqBefore: ""},
			{name: "script flushed", flush: true, posts: []Post{{"job:w", "note", 3}}, seqs: []int64{3}, seqBefore: "2"},
			{name: "no valid post", posts: []Post{{"no group", "note", 1}}, seqs: []int64{0}, seqBefore: "3"},
			{name: "no post", seqBefore: "3"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if tc.flush {
					if err := rdb.ScriptFlush(ctx).Err(); err != nil {
						t.Fatal(err)
					}
				}
				var incr *redis.IntCmd
				var seqAtIncr *redis.StringCmd
				before, err := rdb.Get(ctx, "with:count").Int64()
				if err != nil && !errors.Is(err, redis.Nil) {
					t.Fatal(err)
				}
				evs, errs := l.PublishWith(ctx, func(p redis.Pipeliner) {
					incr = p.Incr(ctx, "with:count")
					seqAtIncr = p.HGet(ctx, l.metaKey("job:w"), "seq")
				}, tc.posts...)
				if incr.Err() != nil || incr.Val() != before+1 {
					t.Fatalf("the caller's INCR: %d, %v; want %d (run once)", incr.Val(), incr.Err(), before+1)
				}
				if seqAtIncr.Val() != tc.seqBefore {
					t.Fatalf("seq when the caller's commands ran: %q, want %q", seqAtIncr.Val(), tc.seqBefore)
				}
				for i, w := range tc.seqs {
					switch {
					case w == 0 && (!errors.Is(errs[i], ErrInvalid) || evs[i] != nil):
						t.Fatalf("post %d: %v %v, want ErrInvalid", i, evs[i], errs[i])
					case w != 0 && (errs[i] != nil || evs[i].Seq != w):
						t.Fatalf("post %d: %+v %v, want seq %d", i, evs[i], errs[i], w)
					}
				}
			})
		}
		snap := mustRead(t, l, "job:w", 0)
		checkContiguous(t, "job:w", snap.Events, 1, 3, snap.Epoch)
	})
}
