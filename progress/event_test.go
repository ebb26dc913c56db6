package progress

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"taskstream/wire"
)

// encodeMessage builds a pub/sub payload exactly as appendScript does:
// seq .. '\n' .. epoch .. '\n' .. name .. '\n' .. ts .. '\n' .. data.
func encodeMessage(seq int64, epoch, name, ts, data string) string {
	return strconv.FormatInt(seq, 10) + "\n" + epoch + "\n" + name + "\n" + ts + "\n" + data
}

func TestEventFrame(t *testing.T) {
	ts := time.Date(2025, 3, 4, 5, 6, 7, 890123000, time.FixedZone("CET", 3600))
	tests := []struct {
		name     string
		ev       *Event
		wantData string
	}{
		{"object", &Event{Group: "job:42", Seq: 13, Epoch: "00ff00ff00ff00ff", Name: "progress",
			Data: json.RawMessage(`{"done":1,"total":2}`), Time: ts}, `{"done":1,"total":2}`},
		{"nil data", &Event{Group: "dashboard", Seq: 1, Epoch: "e", Name: "stats", Time: ts}, `null`},
		{"string data", &Event{Group: "chat:lobby", Seq: 7, Epoch: "e", Name: "message",
			Data: json.RawMessage(`"<b>&\"quoted\"</b>"`), Time: ts}, `"\u003cb\u003e\u0026\"quoted\"\u003c/b\u003e"`},
	}
	wantKeys := []string{"data", "epoch", "event", "group", "seq", "ts", "type"}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			frame := tc.ev.Frame()
			var m map[string]json.RawMessage
			if err := json.Unmarshal(frame, &m); err != nil {
				t.Fatalf("frame is not a JSON object: %v: %s", err, frame)
			}
			var keys []string
			for k := range m {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			if !slices.Equal(keys, wantKeys) {
				t.Fatalf("frame fields %v, want exactly %v: %s", keys, wantKeys, frame)
			}
			var f struct {
				Type, Group, Epoch, Event, TS string
				Seq                           int64
			}
			if err := json.Unmarshal(frame, &f); err != nil {
				t.Fatal(err)
			}
			if f.Type != "event" || f.Group != tc.ev.Group || f.Seq != tc.ev.Seq || f.Epoch != tc.ev.Epoch || f.Event != tc.ev.Name {
				t.Fatalf("frame %s does not match %+v", frame, tc.ev)
			}
			if got := string(m["data"]); got != tc.wantData {
				// Compare as JSON values: escaping of the payload may differ.
				var a, b any
				_ = json.Unmarshal(m["data"], &a)
				_ = json.Unmarshal([]byte(tc.wantData), &b)
				if ab, _ := json.Marshal(a); string(ab) != mustMarshal(t, b) {
					t.Fatalf("data %s, want %s", got, tc.wantData)
				}
			}
			pt, err := time.Parse(time.RFC3339Nano, f.TS)
			if err != nil || !pt.Equal(tc.ev.Time) || !strings.HasSuffix(f.TS, "Z") {
				t.Fatalf("ts %q (%v): want the event time %v in UTC RFC 3339", f.TS, err, tc.ev.Time)
			}
			// MarshalJSON is the frame, also inside other values.
			if b, err := json.Marshal(tc.ev); err != nil || !bytes.Equal(b, frame) {
				t.Fatalf("json.Marshal(event) = %s, %v; want the frame", b, err)
			}
			if b, err := json.Marshal(map[string]any{"events": []*Event{tc.ev}}); err != nil || !bytes.Contains(b, frame) {
				t.Fatalf("json.Marshal(list) = %s, %v", b, err)
			}
		})
	}
}

func mustMarshal(t testing.TB, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// An event that carries invalid data (never produced by Publish, Read or
// decodeMessage, but constructible) still gets a well-formed frame.
func TestEventFrameInvalidDataStaysJSON(t *testing.T) {
	ev := &Event{Group: "job:1", Seq: 3, Epoch: "\x00\"ep", Name: "bad\x04name", Data: json.RawMessage("{oops"), Time: time.Unix(0, 0)}
	var f wire.EventFrame
	if err := json.Unmarshal(ev.Frame(), &f); err != nil {
		t.Fatalf("frame is not JSON: %v: %s", err, ev.Frame())
	}
	if f.Type != "event" || f.Seq != 3 || f.Epoch != ev.Epoch || f.Event != ev.Name || string(f.Data) != "null" || f.TS == "" {
		t.Fatalf("frame %s", ev.Frame())
	}
}

// Frame is encoded once and shared by concurrent callers (the hub hands one
// *Event to many sockets).
func TestEventFrameConcurrent(t *testing.T) {
	ev := &Event{Group: "job:1", Seq: 1, Epoch: "e", Name: "state", Data: json.RawMessage(`{"state":"active"}`), Time: time.Now()}
	var wg sync.WaitGroup
	frames := make([][]byte, 16)
	for i := range frames {
		wg.Go(func() { frames[i] = ev.Frame() })
	}
	wg.Wait()
	for _, f := range frames {
		if &f[0] != &frames[0][0] {
			t.Fatal("Frame encoded more than once")
		}
	}
}

func TestDecodeMessageRoundTrip(t *testing.T) {
	ts := time.Date(2025, 1, 2, 3, 4, 5, 600, time.UTC)
	tests := []struct{ name, data string }{
		{"object", `{"a":1,"b":[true,null]}`},
		{"null", `null`},
		{"string with escaped newline", `"a\nb"`},
		{"number", `-1.5e3`},
		{"empty array", `[]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			payload := encodeMessage(99, "0123456789abcdef", "progress", ts.Format(time.RFC3339Nano), tc.data)
			ev, err := decodeMessage("job:7", payload)
			if err != nil {
				t.Fatalf("decodeMessage(%q): %v", payload, err)
			}
			if ev.Group != "job:7" || ev.Seq != 99 || ev.Epoch != "0123456789abcdef" || ev.Name != "progress" ||
				string(ev.Data) != tc.data || !ev.Time.Equal(ts) {
				t.Fatalf("decoded %+v", ev)
			}
			var f wire.EventFrame
			if err := json.Unmarshal(ev.Frame(), &f); err != nil {
				t.Fatalf("frame %s: %v", ev.Frame(), err)
			}
			if f.Seq != 99 || string(f.Data) != tc.data {
				t.Fatalf("frame %s", ev.Frame())
			}
		})
	}
}

func TestDecodeMessageRejectsMalformed(t *testing.T) {
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	tests := []struct{ name, payload string }{
		{"empty", ""},
		{"one field", "1"},
		{"three fields", "1\ne\nname\n"},
		{"no data separator", "1\ne\nname\n" + ts},
		{"seq not a number", encodeMessage(0, "e", "x", ts, "1")[1:] /* "\ne\n…" */},
		{"seq with letters", "12a\ne\nstate\n" + ts + "\nnull"},
		{"seq overflows", "99999999999999999999\ne\nstate\n" + ts + "\nnull"},
		{"seq zero", "0\ne\nstate\n" + ts + "\nnull"},
		{"seq negative", "-3\ne\nstate\n" + ts + "\nnull"},
		{"bad time", "1\ne\nstate\nyesterday\nnull"},
		{"empty time", "1\ne\nstate\n\nnull"},
		{"empty epoch", "1\n\nstate\n" + ts + "\nnull"},
		{"bad name", "1\ne\nNot A Name\n" + ts + "\nnull"},
		{"empty name", "1\ne\n\n" + ts + "\nnull"},
		{"data not JSON", "1\ne\nstate\n" + ts + "\n{oops"},
		{"empty data", "1\ne\nstate\n" + ts + "\n"},
		{"data with trailing garbage", "1\ne\nstate\n" + ts + "\n{} x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if ev, err := decodeMessage("job:1", tc.payload); err == nil {
				t.Fatalf("decodeMessage(%q) = %+v, want an error", tc.payload, ev)
			}
		})
	}
}

func FuzzDecodeMessage(f *testing.F) {
	ts := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC).Format(time.RFC3339Nano)
	f.Add(encodeMessage(1, "0123456789abcdef", "progress", ts, `{"done":1}`), int64(1), "abcd", "state", `{"a":[1,2]}`)
	f.Add("1\ne\nstate\n"+ts+"\n\"x\ny\"", int64(42), "e", "log", `"multi\nline"`)
	f.Add("", int64(0), "", "", "")
	f.Add("1\n2\n3\n4\n5", int64(-1), "\x00", "a\nb", "{")
	f.Add("7\n\x00\"\\\nstate\n"+ts+"\nnull", int64(7), "\x00\"\\", "state", "null")
	f.Add("1\ne\nstate\n"+ts+"\n\xff", int64(1), "e", "state", "\"\xff\"")
	// Found by fuzzing: an invalid name and data used to yield a frame that
	// was not JSON (Go %q escapes in the fallback encoding).
	f.Add("0\n\n\x04\n0000-01-01T0:00:00Z\nA", int64(0), "", "\x04", "A")
	f.Fuzz(func(t *testing.T, payload string, seq int64, epoch, name, data string) {
		// Any payload: no panic, and whatever decodes yields a valid frame.
		if ev, err := decodeMessage("job:fuzz", payload); err == nil {
			frame := ev.Frame()
			var fr wire.EventFrame
			if err := json.Unmarshal(frame, &fr); err != nil {
				t.Fatalf("decodeMessage(%q) accepted an event whose frame is not JSON: %v: %s", payload, err, frame)
			}
			if fr.Type != "event" || fr.Group != "job:fuzz" || fr.Seq != ev.Seq || fr.Event != ev.Name {
				t.Fatalf("frame %s does not match the event %+v", frame, ev)
			}
		}

		// A valid event, framed as appendScript does, survives the trip.
		if seq < 1 || epoch == "" || strings.ContainsAny(epoch, "\n") || !ValidEventName(name) || !json.Valid([]byte(data)) {
			return
		}
		raw, err := encodeData(json.RawMessage(data)) // what Publish stores: compacted
		if err != nil {
			t.Fatalf("encodeData(%q): %v", data, err)
		}
		when := time.Unix(0, seq%(1<<50)).UTC()
		ev, err := decodeMessage("job:fuzz", encodeMessage(seq, epoch, name, when.Format(time.RFC3339Nano), string(raw)))
		if err != nil {
			t.Fatalf("valid message (seq %d epoch %q name %q data %q) rejected: %v", seq, epoch, name, raw, err)
		}
		if ev.Seq != seq || ev.Epoch != epoch || ev.Name != name || !bytes.Equal(ev.Data, raw) || !ev.Time.Equal(when) {
			t.Fatalf("round trip changed the event: got %+v", ev)
		}
		var fr wire.EventFrame
		if err := json.Unmarshal(ev.Frame(), &fr); err != nil {
			t.Fatalf("frame of a valid event is not JSON: %v: %s", err, ev.Frame())
		}
		if fr.Seq != seq || fr.Event != name {
			t.Fatalf("frame %s", ev.Frame())
		}
	})
}

func TestValidNames(t *testing.T) {
	groups := map[string]bool{
		"job:42": true, "chat:lobby": true, "user:u-1": true, "dashboard": true, "user:a@b.c": true,
		"job:" + strings.Repeat("9", 128): true, strings.Repeat("k", 32): true,
		"": false, "job:": false, ":x": false, "1job:x": false, "Job:x": false, "job:x y": false,
		"job:x\n": false, "job:x/y": false, "job:x:y": false, "job:" + strings.Repeat("9", 129): false,
		strings.Repeat("k", 33): false, "job:é": false,
	}
	for g, want := range groups {
		if got := ValidGroup(g); got != want {
			t.Errorf("ValidGroup(%q) = %v, want %v", g, got, want)
		}
	}
	names := map[string]bool{
		"state": true, "progress": true, "a.b-c_d": true, "x1": true, strings.Repeat("a", 64): true,
		"": false, "1x": false, "State": false, "a b": false, "a\n": false, strings.Repeat("a", 65): false, "a:b": false,
	}
	for n, want := range names {
		if got := ValidEventName(n); got != want {
			t.Errorf("ValidEventName(%q) = %v, want %v", n, got, want)
		}
	}
}

// FrameSkipped is the frame encoding wire.EventFrame with Skipped gives,
// and the shared frame when nothing was skipped.
func TestEventFrameSkipped(t *testing.T) {
	ev := &Event{Group: "job:1", Seq: 9, Epoch: "ab", Name: "progress", Data: json.RawMessage(`{"done":3,"s":"}"}`), Time: time.Unix(1, 0)}
	for _, n := range []int{0, 1, 7, 123456} {
		want, err := json.Marshal(wire.EventFrame{Type: wire.TypeEvent, Group: ev.Group, Seq: ev.Seq, Epoch: ev.Epoch,
			Event: ev.Name, Data: ev.Data, TS: ev.Time.UTC().Format(time.RFC3339Nano), Skipped: n})
		if err != nil {
			t.Fatal(err)
		}
		if got := ev.FrameSkipped(n); string(got) != string(want) {
			t.Errorf("FrameSkipped(%d) = %s, want %s", n, got, want)
		}
	}
	if string(ev.Frame()) == string(ev.FrameSkipped(2)) || strings.Contains(string(ev.Frame()), "skipped") {
		t.Error("FrameSkipped changed the shared frame")
	}
}
