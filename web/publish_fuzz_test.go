package web

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"taskstream/progress"
	"taskstream/wire"
)

// fuzzMaxData is the data limit the fuzz targets decode with: small, so
// the fuzzer reaches too_large.
const fuzzMaxData = 64

var publishSeeds = []string{
	`{"group": "chat:lobby", "event": "message", "data": {"text": "hi"}}`,
	`{"group": "user:u1", "event": "notification", "data": {"title": "t"}}`,
	`{"group": "job:abc", "event": "state", "data": {"state": "completed"}}`,
	`{"group": "dashboard", "event": "note", "data": null}`,
	`{"group": "chat:lobby", "event": "message", "data": "` + string(bytes.Repeat([]byte("x"), 80)) + `"}`,
	`{"group": "chat:lobby", "event": "message"}`,
	`{"group": "chat:lobby", "data": 1}`,
	`{"event": "x", "data": 1}`,
	`{"group": "metrics:x", "event": "x", "data": 1}`,
	`{"group": "chat:a b", "event": "x", "data": 1}`,
	`{"group": "chat:lobby", "event": "Bad!", "data": 1}`,
	`{"group": "chat:lobby", "event": "x", "data": 1, "seq": 2}`,
	`{"group": "chat:lobby", "event": "x", "data": 1}]`,
	`{"group": "chat:lobby", "event": "x", "data": 1} {}`,
	`{"group": 5, "event": "x", "data": 1}`,
	`{"GROUP": "chat:lobby", "Event": "x", "DATA": [1, 2]}`,
	`{"group": "chat:lobby", "event": "x", "data": {`,
	`["chat:lobby"]`,
	`null`,
	``,
	"\xef\xbb\xbf{}",
}

// FuzzDecodePublish checks decodePublish on any input: it never panics or
// changes its input; its errors are bad_request or too_large with a
// message; what it accepts is a JSON object with a served group, a valid
// event name and JSON data within the limit, and encoding that again
// decodes to the same event.
func FuzzDecodePublish(f *testing.F) {
	for _, s := range publishSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		orig := bytes.Clone(in)
		p, aerr := decodePublish(in, fuzzMaxData)
		if !bytes.Equal(in, orig) {
			t.Fatal("decodePublish changed its input")
		}
		if aerr != nil {
			if (aerr.Code != CodeBadRequest && aerr.Code != CodeTooLarge) || aerr.Message == "" {
				t.Fatalf("error %+v for %q, want bad_request or too_large with a message", aerr, in)
			}
			return
		}
		checkPublishRequest(t, in, p)
		again, aerr := decodePublish(mustJSON(p), fuzzMaxData)
		if aerr != nil {
			t.Fatalf("%q decoded, but its encoding does not: %v", in, aerr)
		}
		if again.Group != p.Group || again.Event != p.Event || again.group != p.group || !sameJSON(again.Data, p.Data) {
			t.Fatalf("round trip of %q: %+v, then %+v", in, p, again)
		}
	})
}

func checkPublishRequest(t *testing.T, in []byte, p publishRequest) {
	t.Helper()
	if !json.Valid(in) || bytes.TrimSpace(in)[0] != '{' {
		t.Fatalf("accepted %q, which is not a JSON object", in)
	}
	g, err := wire.ParseGroup(p.Group)
	if err != nil || g != p.group || g.String() != p.Group {
		t.Fatalf("accepted group %q (%+v): %v", p.Group, p.group, err)
	}
	if !wire.KnownKind(g.Kind) {
		t.Fatalf("accepted the unknown kind of %q", p.Group)
	}
	if !progress.ValidEventName(p.Event) {
		t.Fatalf("accepted the event name %q", p.Event)
	}
	if len(p.Data) == 0 || len(p.Data) > fuzzMaxData || !json.Valid(p.Data) {
		t.Fatalf("accepted data %q", p.Data)
	}
}

// sameJSON reports whether a and b are the same JSON value: spelling
// aside (encoding/json writes "&" as "\u0026"), with numbers kept exact.
func sameJSON(a, b json.RawMessage) bool {
	decode := func(raw json.RawMessage) (any, bool) {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var v any
		return v, dec.Decode(&v) == nil
	}
	va, okA := decode(a)
	vb, okB := decode(b)
	return okA && okB && reflect.DeepEqual(va, vb)
}

// FuzzDecodePublishBatch checks decodePublishBatch on any input: it never
// panics; its errors are bad_request or too_large with a message; what it
// accepts holds 1 to max events, each a JSON value that decodePublish
// then takes or refuses on its own, without panicking.
func FuzzDecodePublishBatch(f *testing.F) {
	const max = 3
	for _, s := range publishSeeds {
		f.Add([]byte(`{"events": [` + s + `]}`))
	}
	for _, s := range []string{
		`{"events": []}`,
		`{"events": [{}, {}, {}, {}]}`,
		`{"events": [null, 1, "x"]}`,
		`{"events": {"group": "chat:a"}}`,
		`{"events": null}`,
		`{}`,
		`{"events": [], "atomic": true}`,
		`{"events": [{"group": "chat:a", "event": "m", "data": 1}]}}`,
		`[]`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		events, aerr := decodePublishBatch(in, max)
		if aerr != nil {
			if (aerr.Code != CodeBadRequest && aerr.Code != CodeTooLarge) || aerr.Message == "" {
				t.Fatalf("error %+v for %q, want bad_request or too_large with a message", aerr, in)
			}
			return
		}
		if len(events) < 1 || len(events) > max || !json.Valid(in) {
			t.Fatalf("accepted %q with %d events", in, len(events))
		}
		for _, raw := range events {
			if !json.Valid(raw) {
				t.Fatalf("event %q of %q is not JSON", raw, in)
			}
			p, aerr := decodePublish(raw, fuzzMaxData)
			if aerr == nil {
				checkPublishRequest(t, raw, p)
			} else if aerr.Code != CodeBadRequest && aerr.Code != CodeTooLarge {
				t.Fatalf("event %q: %+v", raw, aerr)
			}
		}
	})
}
