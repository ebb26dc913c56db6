package progress

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"taskstream/wire"
)

// Event is one entry of a group's log, as delivered to subscribers.
//
// An Event is immutable once published or read: the Hub shares one *Event
// among all local subscribers of its group.
type Event struct {
	Group string          // the group it belongs to, e.g. "job:42"
	Seq   int64           // position in the group's log: 1, 2, 3, … within one epoch
	Epoch string          // the log's epoch when the event was appended
	Name  string          // event name: "state", "progress", "message", …
	Data  json.RawMessage // the event's payload, a JSON value
	Time  time.Time       // when the producer published it

	frameOnce sync.Once
	frame     []byte
	leanOnce  [2]sync.Once // lean frames (taskstream.v2): without, with the epoch
	lean      [2][]byte
}

// Frame returns the event encoded as the protocol's "event" frame. It is
// encoded once and shared: fan-out to many sockets costs one encoding per
// process, not one per socket. Callers must not modify the returned slice.
func (e *Event) Frame() []byte {
	e.frameOnce.Do(func() { e.frame = e.encodeFrame() })
	return e.frame
}

// FrameSkipped returns the event's frame with "skipped": n, for a socket
// that is sent this event in place of n earlier ones it fell behind on
// (wire.EventFrame.Skipped). It is the shared frame with the field added
// at its end, where encoding wire.EventFrame puts it: a copy per call,
// no encoding.
func (e *Event) FrameSkipped(n int) []byte {
	return withSkipped(e.Frame(), n)
}

// withSkipped returns frame, a JSON object, with "skipped": n added at
// its end (a copy), or frame itself when n is 0.
func withSkipped(frame []byte, n int) []byte {
	if n == 0 {
		return frame
	}
	b := make([]byte, 0, len(frame)+len(`,"skipped":}`)+20)
	b = append(b, frame[:len(frame)-1]...)
	b = append(b, `,"skipped":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '}')
}

// LeanFrame returns the event's lean frame, the event frame of the
// taskstream.v2 subprotocol (wire.AppendLeanEvent): with its epoch when
// withEpoch, the form for a socket whose last epoch of the group differs.
// Like Frame, each form is encoded once per process and shared; callers
// must not modify the returned slice.
func (e *Event) LeanFrame(withEpoch bool) []byte {
	i := 0
	if withEpoch {
		i = 1
	}
	e.leanOnce[i].Do(func() {
		epoch := ""
		if withEpoch {
			epoch = e.Epoch
		}
		e.lean[i] = wire.AppendLeanEvent(nil, e.Group, e.Seq, epoch, e.Name, e.Data, e.Time, 0)
	})
	return e.lean[i]
}

// LeanFrameSkipped is LeanFrame with "skipped": n (see FrameSkipped): a
// copy per call, no encoding.
func (e *Event) LeanFrameSkipped(withEpoch bool, n int) []byte {
	return withSkipped(e.LeanFrame(withEpoch), n)
}

func (e *Event) encodeFrame() []byte {
	data := e.Data
	if len(data) == 0 {
		data = json.RawMessage("null")
	}
	f := wire.EventFrame{
		Type: wire.TypeEvent, Group: e.Group, Seq: e.Seq, Epoch: e.Epoch,
		Event: e.Name, Data: data, TS: e.Time.UTC().Format(time.RFC3339Nano),
	}
	b, err := json.Marshal(f)
	if err != nil {
		// Data was validated as JSON when it was published or read, so
		// this cannot happen; keep the frame well-formed regardless
		// (JSON-escaped strings, unlike Go's %q, so control characters
		// cannot break it).
		f.Data = json.RawMessage("null")
		b, _ = json.Marshal(f)
	}
	return b
}

// MarshalJSON encodes the event as its protocol frame.
func (e *Event) MarshalJSON() ([]byte, error) { return e.Frame(), nil }

var (
	namePattern = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)
)

// ValidGroup reports whether name is a well-formed group name
// (wire.ParseGroup: a kind, optionally ":" and an id). Which groups a
// caller may join is decided by the caller's layer, not here.
func ValidGroup(name string) bool { return wire.ValidGroup(name) }

// ValidEventName reports whether name can be used as an event name.
func ValidEventName(name string) bool { return namePattern.MatchString(name) }

// pubsub payload: "seq\nepoch\nname\nts\ndata". The first four fields never
// contain a newline (seq is a number, epoch is hex, names and RFC 3339 times
// are validated), so the data is everything after the fourth newline.
func decodeMessage(group, payload string) (*Event, error) {
	var fields [4]string
	rest := payload
	for i := range fields {
		j := strings.IndexByte(rest, '\n')
		if j < 0 {
			return nil, fmt.Errorf("progress: malformed message on %s: %d fields", group, i)
		}
		fields[i], rest = rest[:j], rest[j+1:]
	}
	seq, err := strconv.ParseInt(fields[0], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("progress: malformed seq on %s: %w", group, err)
	}
	if seq < 1 {
		return nil, fmt.Errorf("progress: malformed seq on %s: %d", group, seq)
	}
	if fields[1] == "" {
		return nil, fmt.Errorf("progress: malformed message on %s: empty epoch", group)
	}
	if !ValidEventName(fields[2]) {
		return nil, fmt.Errorf("progress: malformed event name on %s: %q", group, fields[2])
	}
	ts, err := time.Parse(time.RFC3339Nano, fields[3])
	if err != nil {
		return nil, fmt.Errorf("progress: malformed time on %s: %w", group, err)
	}
	if !json.Valid([]byte(rest)) {
		return nil, fmt.Errorf("progress: malformed data on %s: not JSON", group)
	}
	return &Event{Group: group, Seq: seq, Epoch: fields[1], Name: fields[2], Data: json.RawMessage(rest), Time: ts}, nil
}
