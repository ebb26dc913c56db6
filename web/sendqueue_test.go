package web

import (
	"strings"
	"testing"
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
	<-q.ready
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
