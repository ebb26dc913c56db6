package web

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"taskstream/progress"
	"taskstream/wire"
)

// Socket operations a client may send (package wire).
const (
	opSubscribe   = wire.OpSubscribe
	opUnsubscribe = wire.OpUnsubscribe
	opPublish     = wire.OpPublish
	opPing        = wire.OpPing
)

// clientFrame is one decoded client frame: wire.ClientFrame, whose After
// decodeClientFrame parses from RawAfter.
type clientFrame struct {
	wire.ClientFrame

	// RawAfter is "after" as sent (it shadows ClientFrame.After when
	// decoding): decoded by parseSeq, so every bad value (a fraction, an
	// exponent, a string, beyond int64) gets the same clear message
	// instead of encoding/json's.
	RawAfter json.RawMessage `json:"after"`

	// RawGroups is "groups" as sent (it shadows ClientFrame.Groups):
	// decodeClientFrame checks the list as a whole and each entry on its
	// own, into Groups and GroupErrs.
	RawGroups []rawGroupPosition `json:"groups"`
	// GroupErrs holds, for each of Groups, why that entry cannot be used
	// (nil when it can): a bad group name or position in one entry is
	// answered with an error frame for that group alone.
	GroupErrs []*APIError `json:"-"`
}

// rawGroupPosition is one entry of "groups" as sent.
type rawGroupPosition struct {
	Group    string          `json:"group"`
	RawAfter json.RawMessage `json:"after"`
	Epoch    string          `json:"epoch"`
}

// errBadSeq is the answer to an "after" (or Last-Event-ID) that is not a
// seq.
var errBadSeq = apiErr(CodeBadRequest, `"after" (or Last-Event-ID) must be a seq: an integer from 0 to 9223372036854775807`)

// parseSeq parses a position in a group: a decimal integer from 0 to
// math.MaxInt64, written without a fraction or an exponent. Any value in
// that range is a valid position, whether or not the group's log ever
// reached it (beyond it, the subscriber is told recovered:false).
func parseSeq(s string) (int64, *APIError) {
	if s == "" || s[0] == '+' {
		return 0, errBadSeq
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, errBadSeq
	}
	return n, nil
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
			f = clientFrame{ClientFrame: wire.ClientFrame{Ref: refOnly.Ref}}
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
	if f.RawGroups != nil {
		return decodeGroups(f)
	}
	if !progress.ValidGroup(f.Group) {
		return f, apiErr(CodeBadRequest, fmt.Sprintf("bad group name %q", f.Group))
	}
	if len(f.RawAfter) > 0 && string(f.RawAfter) != "null" {
		n, aerr := parseSeq(string(f.RawAfter))
		if aerr != nil {
			return f, aerr
		}
		f.After = &n
	}
	if f.Op == opPublish && len(f.Data) == 0 {
		return f, apiErr(CodeBadRequest, `"data" is required to publish`)
	}
	return f, nil
}

// decodeGroups checks the many-group form of subscribe and unsubscribe:
// the list as a whole (refused whole when it is wrong), then each entry
// (an entry's error is kept in GroupErrs and answered for that group
// alone).
func decodeGroups(f clientFrame) (clientFrame, *APIError) {
	switch {
	case f.Op == opPublish:
		return f, apiErr(CodeBadRequest, `publish takes one "group", not "groups"`)
	case f.Group != "" || len(f.RawAfter) > 0 || f.Epoch != "":
		return f, apiErr(CodeBadRequest, `give either "group" (with "after" and "epoch") or "groups", not both`)
	case len(f.RawGroups) == 0:
		return f, apiErr(CodeBadRequest, `"groups" must list at least one group`)
	case len(f.RawGroups) > wire.MaxGroupsPerFrame:
		return f, apiErr(CodeBadRequest, fmt.Sprintf(`"groups" may list at most %d groups per frame`, wire.MaxGroupsPerFrame))
	}
	f.Groups = make([]wire.GroupPosition, len(f.RawGroups))
	f.GroupErrs = make([]*APIError, len(f.RawGroups))
	for i, g := range f.RawGroups {
		f.Groups[i] = wire.GroupPosition{Group: g.Group, Epoch: g.Epoch}
		if !progress.ValidGroup(g.Group) {
			f.GroupErrs[i] = apiErr(CodeBadRequest, fmt.Sprintf("bad group name %q", g.Group))
			continue
		}
		if len(g.RawAfter) > 0 && string(g.RawAfter) != "null" {
			n, aerr := parseSeq(string(g.RawAfter))
			if aerr != nil {
				f.GroupErrs[i] = aerr
				continue
			}
			f.Groups[i].After = &n
		}
	}
	f.RawGroups = nil
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

// Server frames (package wire).
type (
	subscribedFrame = wire.SubscribedFrame
	replyFrame      = wire.ReplyFrame
)

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own frame structs get here; they always encode.
		panic(err)
	}
	return b
}
