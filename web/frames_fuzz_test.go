package web

import (
	"bytes"
	"encoding/json"
	"testing"

	"taskstream/progress"
	"taskstream/wire"
)

// FuzzDecodeClientFrame checks decodeClientFrame on any input: it never
// panics; a frame it accepts has a known op and (except ping) a valid
// group; its errors are bad_request with a message; the ref it returns can
// always be echoed in a reply frame; and when the input is a JSON object
// whose ref is a string or a number, that ref is returned, error or not.
func FuzzDecodeClientFrame(f *testing.F) {
	for _, seed := range []string{
		`{"op": "ping"}`,
		`{"op": "ping", "ref": "4"}`,
		`{"op": "ping", "ref": 4}`,
		`{"op": "ping", "ref": -1.5e3}`,
		`{"op": "subscribe", "group": "job:abc123", "after": 12, "epoch": "e1", "ref": "1"}`,
		`{"op": "subscribe", "group": "dashboard"}`,
		`{"op": "unsubscribe", "group": "job:abc", "ref": "2"}`,
		`{"op": "publish", "group": "chat:lobby", "data": {"text": "hi"}, "ref": "3"}`,
		`  {"op": "ping"}  `,
		``,
		`hello`,
		`[1, 2]`,
		`"ping"`,
		`null`,
		`{`,
		`{"op": "ping", "ref": "t"`,
		`{"op": 5, "ref": "r1"}`,
		`{"op": "dance", "ref": "r2"}`,
		`{"group": "job:x", "ref": 3}`,
		`{"op": "subscribe", "group": "job:", "ref": "r4"}`,
		`{"op": "subscribe", "group": "no spaces allowed", "ref": "r5"}`,
		`{"op": "subscribe", "group": "job:x", "after": -1, "ref": "r8"}`,
		`{"op": "subscribe", "group": "job:x", "after": "x", "ref": "r9"}`,
		`{"op": "subscribe", "group": "job:x", "after": 1e400, "ref": "r9"}`,
		`{"op": "ping", "ref": {"a": 1}}`,
		`{"op": "ping", "ref": [1]}`,
		`{"op": "ping", "ref": true}`,
		`{"op": "ping", "ref": null}`,
		`{"op": "publish", "group": "chat:lobby", "ref": "r15"}`,
		`{"op": "publish", "group": "chat:lobby", "data": null}`,
		`{"op": "ping", "ref": "a", "ref": "b"}`,
		`{"OP": "PING", "Ref": "x"}`,
		`{"op": "ping", "ref": "\u00e9\ud83d\ude00"}`,
		`{"op": "ping"} {"op": "ping"}`,
		"\xef\xbb\xbf{\"op\": \"ping\"}",
		"{\"op\": \"ping\", \"ref\": \"\xff\"}",
		`{"op": "subscribe", "groups": [{"group": "job:a", "after": 3, "epoch": "e"}, {"group": "chat:x"}], "ref": 7}`,
		`{"op": "unsubscribe", "groups": [{"group": "job:a"}, {"group": "job:b"}], "ref": "u"}`,
		`{"op": "subscribe", "groups": [{"group": "bad name"}, {"group": "job:a", "after": -2}, {"group": "job:b", "after": 1.5}]}`,
		`{"op": "subscribe", "groups": [], "ref": "e"}`,
		`{"op": "subscribe", "groups": null, "group": "job:a"}`,
		`{"op": "subscribe", "groups": ["job:a"], "ref": "s"}`,
		`{"op": "subscribe", "group": "job:a", "groups": [{"group": "job:b"}]}`,
		`{"op": "publish", "groups": [{"group": "chat:a"}], "data": {}}`,
		`{"op": "subscribe", "groups": {"group": "job:a"}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		orig := bytes.Clone(in)
		fr, err := decodeClientFrame(in)
		if !bytes.Equal(in, orig) {
			t.Fatalf("decodeClientFrame modified its input")
		}

		// Whatever came back, the reply that echoes the ref encodes.
		reply := replyFrame{Type: "error", Ref: fr.Ref, Code: CodeBadRequest, Message: "m"}
		if err == nil {
			reply = replyFrame{Type: "pong", Ref: fr.Ref}
		}
		b, merr := json.Marshal(reply)
		if merr != nil {
			t.Fatalf("reply with ref %q does not encode: %v", fr.Ref, merr)
		}
		if !json.Valid(b) {
			t.Fatalf("reply %q is not JSON", b)
		}
		if len(fr.Ref) > 0 && string(fr.Ref) != "null" && !refIsStringOrNumber(fr.Ref) {
			t.Fatalf("returned ref %q is not a JSON string, number or null", fr.Ref)
		}

		if err == nil {
			switch fr.Op {
			case opPing:
			case opSubscribe, opUnsubscribe, opPublish:
				if fr.Groups != nil {
					checkGroups(t, fr)
					break
				}
				if !progress.ValidGroup(fr.Group) {
					t.Fatalf("accepted op %s with bad group %q", fr.Op, fr.Group)
				}
				if fr.After != nil && *fr.After < 0 {
					t.Fatalf("accepted after %d", *fr.After)
				}
				if fr.Op == opPublish && (len(fr.Data) == 0 || !json.Valid(fr.Data)) {
					t.Fatalf("accepted publish with data %q", fr.Data)
				}
			default:
				t.Fatalf("accepted unknown op %q from %q", fr.Op, in)
			}
		} else {
			if err.Code != CodeBadRequest || err.Message == "" {
				t.Fatalf("error %+v: want bad_request with a message", err)
			}
		}

		// The ref is echoed whenever the input parses as a JSON object
		// with a string or number ref.
		if !json.Valid(in) {
			return
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(in, &obj) != nil {
			return // valid JSON, but not an object
		}
		// encoding/json matches keys case-insensitively and the last
		// duplicate wins; read the ref the same way a struct would.
		var want struct {
			Ref json.RawMessage `json:"ref"`
		}
		if json.Unmarshal(in, &want) != nil {
			t.Fatalf("object %q did not decode into a ref struct", in)
		}
		if !refIsStringOrNumber(want.Ref) {
			if len(fr.Ref) != 0 && string(fr.Ref) != "null" {
				t.Fatalf("ref %q returned for input ref %q", fr.Ref, want.Ref)
			}
			return
		}
		if !bytes.Equal(fr.Ref, want.Ref) {
			t.Fatalf("input %q: ref %q returned, want %q (err %v)", in, fr.Ref, want.Ref, err)
		}
	})
}

// checkGroups checks an accepted many-group frame: subscribe or
// unsubscribe only, no single group beside it, 1 to MaxGroupsPerFrame
// entries, and each entry either usable (a valid group, after ≥ 0) or
// carrying its own bad_request.
func checkGroups(t *testing.T, fr clientFrame) {
	t.Helper()
	if fr.Op == opPublish || fr.Group != "" || fr.After != nil {
		t.Fatalf("accepted groups with op %q, group %q, after %v", fr.Op, fr.Group, fr.After)
	}
	if len(fr.Groups) == 0 || len(fr.Groups) > wire.MaxGroupsPerFrame || len(fr.GroupErrs) != len(fr.Groups) {
		t.Fatalf("accepted %d groups with %d errors", len(fr.Groups), len(fr.GroupErrs))
	}
	for i, g := range fr.Groups {
		if e := fr.GroupErrs[i]; e != nil {
			if e.Code != CodeBadRequest || e.Message == "" {
				t.Fatalf("group %d error %+v: want bad_request with a message", i, e)
			}
			continue
		}
		if !progress.ValidGroup(g.Group) || (g.After != nil && *g.After < 0) {
			t.Fatalf("accepted group entry %+v", g)
		}
	}
}

// refIsStringOrNumber reports whether r is one JSON string or number.
func refIsStringOrNumber(r json.RawMessage) bool {
	if len(r) == 0 {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(r))
	dec.UseNumber() // a number too big for float64 is still a number
	var v any
	if dec.Decode(&v) != nil || dec.More() {
		return false
	}
	switch v.(type) {
	case string, json.Number:
		return true
	}
	return false
}
