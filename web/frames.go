package web

import (
	"bytes"
	"encoding/json"
	"fmt"

	"taskstream/progress"
)

// Socket operations a client may send (PROTOCOL.md, "The socket").
const (
	opSubscribe   = "subscribe"
	opUnsubscribe = "unsubscribe"
	opPublish     = "publish"
	opPing        = "ping"
)

// clientFrame is one decoded client frame.
type clientFrame struct {
	Op    string          `json:"op"`
	Group string          `json:"group"`
	After *int64          `json:"after"`
	Epoch string          `json:"epoch"`
	Data  json.RawMessage `json:"data"`
	Ref   json.RawMessage `json:"ref"`
}

// decodeClientFrame parses and checks one client frame. On error it still
// returns the frame's ref when it could be read, so the error frame can
// echo it.
func decodeClientFrame(b []byte) (clientFrame, *APIError) {
	var f clientFrame
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return f, apiErr(CodeBadRequest, "a frame must be one JSON object")
	}
	if err := json.Unmarshal(b, &f); err != nil {
		// Salvage the ref for the error frame when only another field is bad.
		var refOnly struct {
			Ref json.RawMessage `json:"ref"`
		}
		if json.Unmarshal(b, &refOnly) == nil && validRef(refOnly.Ref) {
			f = clientFrame{Ref: refOnly.Ref}
		} else {
			f = clientFrame{}
		}
		return f, apiErr(CodeBadRequest, "malformed frame: "+err.Error())
	}
	if !validRef(f.Ref) {
		f.Ref = nil
		return f, apiErr(CodeBadRequest, `"ref" must be a string or a number`)
	}
	switch f.Op {
	case opPing:
		return f, nil
	case opSubscribe, opUnsubscribe, opPublish:
	case "":
		return f, apiErr(CodeBadRequest, `"op" is required`)
	default:
		return f, apiErr(CodeBadRequest, fmt.Sprintf("unknown op %q", f.Op))
	}
	if !progress.ValidGroup(f.Group) {
		return f, apiErr(CodeBadRequest, fmt.Sprintf("bad group name %q", f.Group))
	}
	if f.After != nil && *f.After < 0 {
		return f, apiErr(CodeBadRequest, `"after" must be 0 or more`)
	}
	if f.Op == opPublish && len(f.Data) == 0 {
		return f, apiErr(CodeBadRequest, `"data" is required to publish`)
	}
	return f, nil
}

// refOf extracts only the ref of a frame, for replies to frames that are
// not otherwise decoded.
func refOf(b []byte) json.RawMessage {
	var f struct {
		Ref json.RawMessage `json:"ref"`
	}
	if json.Unmarshal(b, &f) != nil || !validRef(f.Ref) {
		return nil
	}
	return f.Ref
}

func validRef(r json.RawMessage) bool {
	if len(r) == 0 || string(r) == "null" {
		return true
	}
	c := r[0]
	return c == '"' || c == '-' || (c >= '0' && c <= '9')
}

// Server frames.
type subscribedFrame struct {
	Type      string          `json:"type"`
	Group     string          `json:"group"`
	Ref       json.RawMessage `json:"ref,omitempty"`
	Epoch     string          `json:"epoch"`
	LastSeq   int64           `json:"last_seq"`
	Replayed  int             `json:"replayed"`
	Recovered bool            `json:"recovered"`
}

type replyFrame struct {
	Type    string          `json:"type"`
	Group   string          `json:"group,omitempty"`
	Ref     json.RawMessage `json:"ref,omitempty"`
	Code    string          `json:"code,omitempty"`
	Message string          `json:"message,omitempty"`
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own frame structs get here; they always encode.
		panic(err)
	}
	return b
}
