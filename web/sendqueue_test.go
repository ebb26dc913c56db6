package web

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"taskstream/progress"
	"taskstream/wire"
)

func TestSendQueueLimits(t *testing.T) {
	cases := []struct {
		name             string
		maxFrames, bytes int
		frames           []string
		accepted         int
	}{
		{"frame limit", 3, 1 << 20, []string{"a", "b", "c", "d"}, 3},
		{"byte limit", 100, 10, []string{"12345", "12345", "1"}, 2},
		{"one frame over the byte limit", 100, 4, []string{"12345"}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := newSendQueue(tc.maxFrames, tc.bytes)
			n := 0
			for _, f := range tc.frames {
				if q.push([]byte(f)) {
					n++
				}
			}
			if n != tc.accepted {
				t.Fatalf("accepted %d frames, want %d", n, tc.accepted)
			}
		})
	}
}

// take hands over the queue in order and frees its room.
func TestSendQueueTake(t *testing.T) {
	q := newSendQueue(2, 1<<20)
	q.push([]byte("a"))
	q.push([]byte("b"))
	if q.push([]byte("c")) {
		t.Fatal("a full queue took a frame")
	}
	// (no writer is attached: the test takes the queue itself)
	var got []string
	for _, f := range q.take() {
		got = append(got, string(f))
	}
	if strings.Join(got, "") != "ab" {
		t.Fatalf("took %v", got)
	}
	if !q.push([]byte("c")) || !q.push([]byte("d")) {
		t.Fatal("no room after take")
	}
	if got := q.take(); len(got) != 2 || string(got[0]) != "c" {
		t.Fatalf("second take %q", got)
	}
}

// A replay larger than the live limits is queued whole (up to its own
// limit), and live frames still have their whole limit after it.
func TestSendQueueReplayOutsideLimits(t *testing.T) {
	q := newSendQueue(2, 10)
	for i := range 8 {
		if !q.pushReplay([]byte("replayed!")) {
			t.Fatalf("replayed frame %d refused", i)
		}
	}
	if q.pushReplay([]byte("replayed!")) {
		t.Fatal("the replay limit does not apply")
	}
	for i := range 2 {
		if !q.push([]byte("live")) {
			t.Fatalf("live frame %d refused after a replay", i)
		}
	}
	if q.push([]byte("live")) {
		t.Fatal("the limit no longer applies to live frames")
	}
	if n := len(q.take()); n != 10 {
		t.Fatalf("took %d frames, want 10", n)
	}
}

// jobEvent is a job group's event for the queue tests, with a payload of
// size bytes.
func jobEvent(group string, seq int64, name string, size int) *progress.Event {
	return &progress.Event{Group: group, Seq: seq, Epoch: "e", Name: name,
		Data: json.RawMessage(`"` + strings.Repeat("x", size) + `"`), Time: time.Unix(0, 0)}
}

// takenFrames decodes what take hands over.
func takenFrames(t *testing.T, q *sendQueue) []wire.ServerFrame {
	t.Helper()
	var out []wire.ServerFrame
	for _, b := range q.take() {
		var f wire.ServerFrame
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("frame %q: %v", b, err)
		}
		out = append(out, f)
	}
	return out
}

// A socket behind on a job group gets the latest progress in place of the
// queued ones, every other event, increasing seqs and a skipped count
// that adds up; within the limits nothing is conflated; other groups'
// progress is never dropped for it; only other events beyond replayFactor
// times the limits refuse.
func TestSendQueueConflatesJobProgress(t *testing.T) {
	const a, b = "job:a", "job:b"
	type push struct {
		group, name string
		want        bool // pushJob's answer
	}
	p := func(group, name string) push { return push{group, name, true} }
	cases := []struct {
		name      string
		maxFrames int
		pushes    []push
		want      []string // "seq event skipped" of the frames taken
	}{
		{"within the limits nothing is dropped", 10,
			[]push{p(a, "progress"), p(a, "progress"), p(a, "log"), p(a, "progress")},
			[]string{"1 progress 0", "2 progress 0", "3 log 0", "4 progress 0"}},
		{"behind: the latest progress replaces the queued ones", 2,
			[]push{p(a, "progress"), p(a, "progress"), p(a, "progress"), p(a, "progress")},
			[]string{"4 progress 3"}},
		{"lifecycle events stay, in order", 3,
			[]push{p(a, "state"), p(a, "progress"), p(a, "log"), p(a, "progress"), p(a, "progress"), p(a, "result"), p(a, "state")},
			[]string{"1 state 0", "3 log 0", "5 progress 2", "6 result 0", "7 state 0"}},
		{"another group's progress is kept", 2,
			[]push{p(b, "progress"), p(a, "progress"), p(a, "progress"), p(b, "log")},
			[]string{"1 progress 0", "3 progress 1", "4 log 0"}},
		{"skipped counts carry over", 1,
			[]push{p(a, "progress"), p(a, "progress"), p(a, "log"), p(a, "progress"), p(a, "progress")},
			[]string{"3 log 0", "5 progress 3"}},
		{"other events beyond the hard limit refuse", 1,
			append(slices.Repeat([]push{p(a, "log")}, replayFactor), push{a, "log", false}),
			nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := newSendQueue(tc.maxFrames, 1<<20)
			for i, ps := range tc.pushes {
				if got := q.pushJob(jobEvent(ps.group, int64(i+1), ps.name, 10), false, formV1); got != ps.want {
					t.Fatalf("push %d (%s %s) = %v, want %v", i+1, ps.group, ps.name, got, ps.want)
				}
			}
			if tc.want == nil {
				return
			}
			var got []string
			for _, f := range takenFrames(t, q) {
				got = append(got, fmt.Sprintf("%d %s %d", f.Seq, f.Event, f.Skipped))
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("took %q, want %q", got, tc.want)
			}
		})
	}
}

// Job events have limits of their own: a full job queue does not close a
// socket's chat, and a full chat queue does not refuse job events.
func TestSendQueueJobLimitsApart(t *testing.T) {
	q := newSendQueue(2, 1<<20)
	for i := range 2 {
		if !q.push([]byte(`{"type":"pong"}`)) {
			t.Fatalf("frame %d refused", i)
		}
	}
	if q.push([]byte(`{"type":"pong"}`)) {
		t.Fatal("the live limit does not apply")
	}
	for i := range 5 {
		if !q.pushJob(jobEvent("job:a", int64(i+1), "log", 10), false, formV1) {
			t.Fatalf("job event %d refused by a full chat queue", i+1)
		}
	}
	if n := len(q.take()); n != 7 {
		t.Fatalf("took %d frames, want 7", n)
	}
	if !q.push([]byte(`{"type":"pong"}`)) {
		t.Fatal("no room after take")
	}
}

// A replay beyond its limit conflates a job's progress too.
func TestSendQueueConflatesJobReplay(t *testing.T) {
	ev := jobEvent("job:a", 1, "progress", 100)
	q := newSendQueue(1024, len(ev.Frame()))
	const n = 3 * replayFactor
	for i := range n {
		if !q.pushJob(jobEvent("job:a", int64(i+1), "progress", 100), true, formV1) {
			t.Fatalf("replayed progress %d refused", i+1)
		}
	}
	frames := takenFrames(t, q)
	total, last := 0, int64(0)
	for _, f := range frames {
		if f.Seq <= last {
			t.Fatalf("seq %d after %d", f.Seq, last)
		}
		last = f.Seq
		total += 1 + f.Skipped
	}
	if last != n || total != n || len(frames) > replayFactor+1 {
		t.Fatalf("%d frames up to seq %d standing for %d events; want at most %d frames up to %d standing for %d", len(frames), last, total, replayFactor+1, n, n)
	}
}

// In taskstream.v2 a conflated progress frame is lean and carries
// "skipped"; the frame that brings a group's new epoch is never dropped
// (the lean frames after it rely on it), while the others around it are.
func TestSendQueueConflatesLeanFrames(t *testing.T) {
	q := newSendQueue(1, 1<<20)
	forms := []frameForm{formLean, formLeanEpoch, formLean, formLean, formLean}
	for i, form := range forms {
		if !q.pushJob(jobEvent("job:a", int64(i+1), "progress", 10), false, form) {
			t.Fatalf("push %d refused", i+1)
		}
	}
	var dec wire.Decoder
	var got []string
	for _, b := range q.take() {
		if bytes.Contains(b, []byte(`"type"`)) {
			t.Fatalf("a lean queue holds a v1 frame: %s", b)
		}
		raw, err := wire.DecodeFrame(b)
		if err != nil {
			t.Fatal(err)
		}
		f, _ := dec.Decode(b)
		got = append(got, fmt.Sprintf("%d %s skipped %d epoch %q", f.Seq, f.Event, f.Skipped, raw.Epoch))
	}
	// The queue is full from the first push on: 2 replaces 1 and brings
	// the epoch, so it stays; 3 and 4 are dropped for 5.
	want := []string{`2 progress skipped 1 epoch "e"`, `5 progress skipped 2 epoch ""`}
	if !slices.Equal(got, want) {
		t.Fatalf("took %q, want %q", got, want)
	}
}

// A subscribed frame and the replay behind it are queued into a list
// reserved for them at once (sendQueue.reserve), not one grown by
// doubling as each frame is appended: a join storm queued ~250 replayed
// frames for every new socket. The frames keep their order either way.
func TestSendQueueReserveForReplay(t *testing.T) {
	const replay = 250
	frame := []byte(`{"seq":1}`)
	cases := []struct {
		name      string
		reserve   int
		maxAllocs float64
	}{
		{"reserved", 1 + replay, 2}, // the queue, and its list (unless the pool had one big enough)
		{"beyond the pooled lists' bound: not reserved", maxPooledFrames + 1, 8},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			allocs := testing.AllocsPerRun(20, func() {
				q := newSendQueue(1024, 1<<20)
				q.reserve(tc.reserve)
				q.push(frame)
				for range replay {
					q.pushReplay(frame)
				}
				if len(q.frames) != 1+replay {
					t.Fatalf("%d frames queued, want %d", len(q.frames), 1+replay)
				}
			})
			if allocs > tc.maxAllocs {
				t.Fatalf("%.0f allocations to queue a subscribed frame and a replay of %d, want at most %.0f", allocs, replay, tc.maxAllocs)
			}
		})
	}
}
