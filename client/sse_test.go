package client

import (
	"bytes"
	"strings"
	"testing"
)

type sseEvent struct {
	name, data string
}

func collectSSE(t *testing.T, stream string, stopAt string) []sseEvent {
	t.Helper()
	var got []sseEvent
	err := readSSE(strings.NewReader(stream), func(name string, data []byte) bool {
		got = append(got, sseEvent{name, string(data)})
		return name != stopAt
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// readSSE follows the event-stream format: the blank line dispatches,
// comments and retry lines are skipped, data lines join with newlines,
// CRLF works, an event without a name is "message", one without data is
// not dispatched, and fn can stop the reading.
func TestReadSSE(t *testing.T) {
	tests := []struct {
		stream string
		want   []sseEvent
	}{
		{"retry: 2000\n\nevent: subscribed\ndata: {\"type\":\"subscribed\"}\n\n",
			[]sseEvent{{"subscribed", `{"type":"subscribed"}`}}},
		{": ping\n\nid: 7\nevent: progress\ndata: {\"a\":\ndata: 1}\n\n", []sseEvent{{"progress", "{\"a\":\n1}"}}},
		{"id: 8\r\nevent: result\r\ndata: {}\r\n\r\n", []sseEvent{{"result", "{}"}}},
		{"data: x\n\n", []sseEvent{{"message", "x"}}},
		{"event: empty\n\n", nil},
		{"data:nospace\n\n", []sseEvent{{"message", "nospace"}}},
		{"data: cut off", nil},
		{"event: stop\ndata: 1\n\nevent: never\ndata: 2\n\n", []sseEvent{{"stop", "1"}}},
	}
	for _, tt := range tests {
		got := collectSSE(t, tt.stream, "stop")
		if len(got) != len(tt.want) {
			t.Errorf("%q: %+v, want %+v", tt.stream, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("%q: %+v, want %+v", tt.stream, got, tt.want)
			}
		}
	}
}

// readSSE never panics; what it dispatches is made of the stream's own
// lines, and stopping at the first event stops it.
func FuzzReadSSE(f *testing.F) {
	for _, seed := range []string{
		"event: subscribed\ndata: {}\n\n",
		"id: 1\nevent: progress\ndata: {\"a\":\ndata: 1}\n\n: ping\n\n",
		"data\n\n", "data:\n\n", "\r\n\r\n", ":\n", "event:\x00\ndata: \xff\n\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		n := 0
		_ = readSSE(bytes.NewReader(in), func(name string, data []byte) bool {
			n++
			if name == "" {
				t.Fatalf("an event without a name from %q", in)
			}
			for _, line := range bytes.Split(data, []byte("\n")) {
				if len(line) > 0 && !bytes.Contains(in, line) {
					t.Fatalf("data %q is not from the stream %q", data, in)
				}
			}
			return false
		})
		if n > 1 {
			t.Fatalf("%d events after fn said stop", n)
		}
	})
}
