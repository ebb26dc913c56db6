package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"time"
	"unicode/utf8"
)

// SubprotocolV2 is the WebSocket subprotocol (Sec-WebSocket-Protocol) of
// batched, lean frames (docs/protocol.md, "Subprotocol taskstream.v2"). A
// socket that did not negotiate it speaks v1: one full frame per message.
//
// In v2 one server message carries one or more frames separated by '\n'
// (JSON frames never contain a raw newline), and an event frame is lean:
// it has no "type" (a frame with "seq" and no "type" is an event), no
// "epoch" unless it differs from the last epoch the socket was given for
// its group (in the group's subscribed frame or an earlier event frame),
// and its "ts" is the event's time in milliseconds since the Unix epoch,
// written in base 36 (lower-case digits 0-9a-z) as a JSON string. Client
// frames are unchanged, one per message.
const SubprotocolV2 = "taskstream.v2"

// FrameSeparator separates the frames of one v2 message.
const FrameSeparator = '\n'

// SplitFrames yields the frames of a server message, in order: the whole
// message for v1 (one frame), each '\n'-separated piece for v2. Empty
// pieces are skipped. The yielded slices alias msg.
func SplitFrames(msg []byte) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for {
			var frame []byte
			frame, msg = NextFrame(msg)
			if frame == nil || !yield(frame) {
				return
			}
		}
	}
}

// NextFrame returns the first frame of msg (nil when there is none left)
// and the rest of msg after it, for readers that take one frame at a
// time (see SplitFrames). The frame aliases msg.
func NextFrame(msg []byte) (frame, rest []byte) {
	for len(msg) > 0 {
		if i := bytes.IndexByte(msg, FrameSeparator); i >= 0 {
			frame, msg = msg[:i], msg[i+1:]
		} else {
			frame, msg = msg, nil
		}
		if len(bytes.TrimSpace(frame)) > 0 {
			return frame, msg
		}
	}
	return nil, nil
}

// AppendLeanEvent appends the lean (v2) event frame of an event to dst:
// {"group","seq","epoch"?,"event","data","ts","skipped"?} with "epoch"
// only when epoch is not "" and "skipped" only when it is not 0. data is
// written compacted (so the frame holds no raw newline); data that is not
// JSON is written as null, as the v1 encoding does.
func AppendLeanEvent(dst []byte, group string, seq int64, epoch, event string, data json.RawMessage, ts time.Time, skipped int) []byte {
	dst = append(dst, `{"group":`...)
	dst = appendJSONString(dst, group)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendInt(dst, seq, 10)
	if epoch != "" {
		dst = append(dst, `,"epoch":`...)
		dst = appendJSONString(dst, epoch)
	}
	dst = append(dst, `,"event":`...)
	dst = appendJSONString(dst, event)
	dst = append(dst, `,"data":`...)
	dst = appendCompact(dst, data)
	dst = append(dst, `,"ts":"`...)
	dst = strconv.AppendInt(dst, ts.UnixMilli(), 36)
	dst = append(dst, '"')
	if skipped != 0 {
		dst = append(dst, `,"skipped":`...)
		dst = strconv.AppendInt(dst, int64(skipped), 10)
	}
	return append(dst, '}')
}

// appendCompact appends data compacted, or null when it is empty or not
// JSON.
func appendCompact(dst []byte, data json.RawMessage) []byte {
	if len(data) == 0 {
		return append(dst, "null"...)
	}
	buf := bytes.NewBuffer(dst)
	if err := json.Compact(buf, data); err != nil {
		return append(dst, "null"...)
	}
	return buf.Bytes()
}

// appendJSONString appends s as a JSON string: as is when it is plain
// printable ASCII without quotes or backslashes (every group, event name
// and epoch the server makes), else through encoding/json.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' {
			b, _ := json.Marshal(s) // a string always encodes
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// LeanTS returns the lean form of a time: milliseconds since the Unix
// epoch in base 36.
func LeanTS(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 36) }

// ParseLeanTS parses the lean form of a time (LeanTS).
func ParseLeanTS(s string) (time.Time, error) {
	ms, err := strconv.ParseInt(s, 36, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("wire: lean ts %q: %w", s, err)
	}
	return time.UnixMilli(ms).UTC(), nil
}

// errNoType is the error of a frame that is neither typed nor an event.
var errNoType = errors.New(`wire: a frame without "type" or "seq"`)

// DecodeFrame decodes one server frame of either version. A lean event
// frame (no "type", a "seq") comes back as a full one: Type TypeEvent and
// TS in RFC 3339 (millisecond precision, UTC); its Epoch is "" when the
// frame carried none. A Decoder fills that in.
func DecodeFrame(frame []byte) (ServerFrame, error) {
	var f ServerFrame
	if err := json.Unmarshal(frame, &f); err != nil {
		return ServerFrame{}, fmt.Errorf("wire: a frame that is not a JSON object: %w", err)
	}
	if f.Type != "" {
		return f, nil
	}
	if f.Seq == 0 {
		return ServerFrame{}, errNoType
	}
	f.Type = TypeEvent
	if f.TS != "" {
		t, err := ParseLeanTS(f.TS)
		if err != nil {
			return ServerFrame{}, err
		}
		f.TS = t.Format(time.RFC3339Nano)
	}
	return f, nil
}

// Decoder decodes the frames of one socket, of either version, into full
// frames: it remembers the last epoch the socket was given for each group
// and fills it into the lean event frames that leave it out. Use one
// Decoder per socket (a new socket starts over); it is not safe for
// concurrent use. The zero value is ready.
type Decoder struct {
	epochs map[string]string
}

// Decode decodes one frame (see DecodeFrame) and fills in its epoch.
func (d *Decoder) Decode(frame []byte) (ServerFrame, error) {
	f, err := DecodeFrame(frame)
	if err != nil {
		return f, err
	}
	d.Track(&f)
	return f, nil
}

// Track keeps the epoch a decoded frame gives for its group, or fills in
// the group's last one when it is an event frame without an epoch.
func (d *Decoder) Track(f *ServerFrame) {
	switch f.Type {
	case TypeSubscribed:
		if d.epochs == nil {
			d.epochs = map[string]string{}
		}
		d.epochs[f.Group] = f.Epoch
	case TypeEvent:
		if f.Epoch == "" {
			f.Epoch = d.epochs[f.Group]
			return
		}
		if d.epochs == nil {
			d.epochs = map[string]string{}
		}
		d.epochs[f.Group] = f.Epoch
	case TypeUnsubscribed:
		delete(d.epochs, f.Group)
	}
}
