package wire

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestSplitFrames(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want []string
	}{
		{`{"type":"pong"}`, []string{`{"type":"pong"}`}},
		{"{\"a\":1}\n{\"b\":2}", []string{`{"a":1}`, `{"b":2}`}},
		{"{\"a\":1}\n\n{\"b\":2}\n", []string{`{"a":1}`, `{"b":2}`}},
		{"", nil},
		{"\n \n", nil},
	} {
		var got []string
		for f := range SplitFrames([]byte(tc.msg)) {
			got = append(got, string(f))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("SplitFrames(%q) = %q, want %q", tc.msg, got, tc.want)
		}
	}
}

// The lean frame of a 100-byte chat text on a loadgen-like room is at
// most 196 bytes: 200 on the wire with the 4-byte header of a server
// message of 126 bytes or more (docs/protocol.md), for seqs below 10^6.
func TestLeanEventSize(t *testing.T) {
	data := json.RawMessage(`{"text":"` + strings.Repeat("x", 100) + `"}`)
	ts := time.Date(2026, 12, 5, 22, 44, 29, 123456789, time.UTC)
	for _, seq := range []int64{1, 1234, 999_999} {
		f := AppendLeanEvent(nil, "chat:load-1234abcd", seq, "", EventMessage, data, ts, 0)
		if len(f) > 196 {
			t.Errorf("seq %d: %d bytes: %s", seq, len(f), f)
		}
	}
}

func TestLeanEventRoundTrip(t *testing.T) {
	ts := time.Date(2026, 12, 5, 22, 44, 29, 123456789, time.UTC)
	for _, tc := range []struct {
		name    string
		group   string
		epoch   string
		data    string
		skipped int
		want    string // the frame
	}{
		{"lean", "chat:a", "", `{"text":"hi"}`, 0, `{"group":"chat:a","seq":7,"event":"message","data":{"text":"hi"},"ts":"mxb02fyb"}`},
		{"epoch", "chat:a", "0a1b", `{"text":"hi"}`, 0, `{"group":"chat:a","seq":7,"epoch":"0a1b","event":"message","data":{"text":"hi"},"ts":"mxb02fyb"}`},
		{"skipped", "job:x", "", `1`, 3, `{"group":"job:x","seq":7,"event":"message","data":1,"ts":"mxb02fyb","skipped":3}`},
		{"compacted", "chat:a", "", "{\"text\":\n \"a\\nb\" }", 0, `{"group":"chat:a","seq":7,"event":"message","data":{"text":"a\nb"},"ts":"mxb02fyb"}`},
		{"not JSON", "chat:a", "", `{`, 0, `{"group":"chat:a","seq":7,"event":"message","data":null,"ts":"mxb02fyb"}`},
		{"odd strings", "a\"\n\\é", "", `2`, 0, `{"group":"a\"\n\\é","seq":7,"event":"message","data":2,"ts":"mxb02fyb"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := AppendLeanEvent(nil, tc.group, 7, tc.epoch, EventMessage, json.RawMessage(tc.data), ts, tc.skipped)
			if string(b) != tc.want {
				t.Fatalf("frame\n%s\nwant\n%s", b, tc.want)
			}
			f, err := DecodeFrame(b)
			if err != nil {
				t.Fatal(err)
			}
			if f.Type != TypeEvent || f.Group != tc.group || f.Seq != 7 || f.Epoch != tc.epoch || f.Event != EventMessage ||
				f.TS != "2026-12-05T22:44:29.123Z" || f.Skipped != tc.skipped {
				t.Fatalf("decoded %+v", f)
			}
		})
	}
}

// A Decoder fills the epoch of lean frames from the group's subscribed
// frame and from earlier events, per group.
func TestDecoderEpochs(t *testing.T) {
	msg := strings.Join([]string{
		`{"type":"subscribed","group":"chat:a","epoch":"e1","last_seq":3,"replayed":0,"recovered":true}`,
		`{"type":"subscribed","group":"chat:b","epoch":"","last_seq":0,"replayed":0,"recovered":true}`,
		`{"group":"chat:a","seq":4,"event":"message","data":{},"ts":"1"}`,
		`{"group":"chat:b","seq":1,"epoch":"f1","event":"message","data":{},"ts":"1"}`,
		`{"group":"chat:b","seq":2,"event":"message","data":{},"ts":"1"}`,
		`{"group":"chat:a","seq":1,"epoch":"e2","event":"message","data":{},"ts":"1"}`,
		`{"group":"chat:a","seq":2,"event":"message","data":{},"ts":"1"}`,
		`{"type":"event","group":"chat:a","seq":3,"epoch":"e2","event":"message","data":{},"ts":"2026-12-05T22:44:29Z"}`,
		`{"type":"unsubscribed","group":"chat:a"}`,
		`{"group":"chat:a","seq":9,"event":"message","data":{},"ts":"1"}`,
	}, "\n")
	want := []string{"e1", "", "e1", "f1", "f1", "e2", "e2", "e2", "", ""}
	var d Decoder
	var got []string
	for frame := range SplitFrames([]byte(msg)) {
		f, err := d.Decode(frame)
		if err != nil {
			t.Fatalf("%s: %v", frame, err)
		}
		got = append(got, f.Epoch)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("epochs %q, want %q", got, want)
	}
}

func TestDecodeFrameErrors(t *testing.T) {
	for _, in := range []string{``, `[]`, `{}`, `{"group":"chat:a"}`, `{"seq":1,"ts":"!"}`, `{"seq":"x"}`, `{"type":1}`} {
		if f, err := DecodeFrame([]byte(in)); err == nil {
			t.Errorf("DecodeFrame(%q) = %+v, want an error", in, f)
		}
	}
}

// Any message decodes without panicking; every frame that decodes has a
// type, and a lean event's ts is RFC 3339.
func FuzzDecodeFrame(f *testing.F) {
	ts := time.Date(2026, 12, 5, 22, 44, 29, 0, time.UTC)
	f.Add(AppendLeanEvent(nil, "chat:a", 1, "e", EventMessage, json.RawMessage(`{"text":"x"}`), ts, 0))
	f.Add([]byte("{\"type\":\"pong\"}\n{\"group\":\"job:a\",\"seq\":2,\"event\":\"progress\",\"data\":null,\"ts\":\"zz\",\"skipped\":4}"))
	f.Add([]byte(`{"type":"subscribed","group":"chat:a","epoch":"e1"}`))
	f.Add([]byte("\n\n{\"seq\":-1,\"ts\":\"-1\"}"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var d Decoder
		for frame := range SplitFrames(msg) {
			if bytes.IndexByte(frame, FrameSeparator) >= 0 {
				t.Fatalf("a frame with a separator: %q", frame)
			}
			fr, err := d.Decode(frame)
			if err != nil {
				continue
			}
			if fr.Type == "" {
				t.Fatalf("decoded a frame without a type: %q", frame)
			}
		}
	})
}

// Every lean frame AppendLeanEvent makes is one frame (no separator in
// it) that decodes back to what was encoded.
func FuzzLeanEventRoundTrip(f *testing.F) {
	f.Add("chat:a", int64(1), "e", "message", []byte(`{"text":"x"}`), int64(1764960000123), 0)
	f.Add("job:a\n", int64(1<<62), "", "progress", []byte("{\n}"), int64(-5), 7)
	f.Fuzz(func(t *testing.T, group string, seq int64, epoch, event string, data []byte, ms int64, skipped int) {
		ts := time.UnixMilli(ms)
		b := AppendLeanEvent(nil, group, seq, epoch, event, data, ts, skipped)
		if bytes.IndexByte(b, FrameSeparator) >= 0 {
			t.Fatalf("a raw newline in %q", b)
		}
		if !json.Valid(b) {
			t.Fatalf("not JSON: %q", b)
		}
		if seq == 0 {
			return // not an event: a lean frame is told by its seq
		}
		fr, err := DecodeFrame(b)
		if err != nil {
			t.Fatalf("%q: %v", b, err)
		}
		wantData := "null"
		if json.Valid(data) {
			var c bytes.Buffer
			_ = json.Compact(&c, data)
			wantData = c.String()
		}
		if !utf8Valid(group, epoch, event) {
			return // invalid UTF-8 is replaced when encoded
		}
		if fr.Group != group || fr.Seq != seq || fr.Epoch != epoch || fr.Event != event || string(fr.Data) != wantData ||
			fr.TS != ts.UTC().Format(time.RFC3339Nano) || fr.Skipped != skipped {
			t.Fatalf("%q decoded to %+v", b, fr)
		}
	})
}

func utf8Valid(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}
