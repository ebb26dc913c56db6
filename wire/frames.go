package wire

import "encoding/json"

// ClientFrame is a frame a client sends on the socket. Ref is optional, a
// JSON string or number, and is echoed on the reply. After and Epoch are
// a subscribe's position: without After the whole retained history is
// replayed.
//
// A subscribe or unsubscribe names either one Group (with After and
// Epoch) or, instead, up to MaxGroupsPerFrame Groups, each with its own
// position: the server answers each group on its own (one subscribed,
// unsubscribed or error frame per group, all with the frame's Ref), and
// its per-socket frame limit counts the whole frame once.
type ClientFrame struct {
	Op     string          `json:"op"`
	Group  string          `json:"group,omitempty"`
	Groups []GroupPosition `json:"groups,omitempty"`
	After  *int64          `json:"after,omitempty"`
	Epoch  string          `json:"epoch,omitempty"`
	Data   json.RawMessage `json:"data,omitempty"`
	Ref    json.RawMessage `json:"ref,omitempty"`
}

// GroupPosition is one group of a many-group subscribe or unsubscribe,
// with where to resume it (ignored by unsubscribe).
type GroupPosition struct {
	Group string `json:"group"`
	After *int64 `json:"after,omitempty"`
	Epoch string `json:"epoch,omitempty"`
}

// Socket limits a client needs to know to stay within them.
const (
	// MaxGroupsPerFrame is the most groups one subscribe or unsubscribe
	// frame may name; a frame with more is refused whole (bad_request).
	MaxGroupsPerFrame = 100
	// MaxGroupsPerSocket is how many groups one socket may watch at once
	// (the server's default); each group beyond it gets an error frame
	// bad_request of its own.
	MaxGroupsPerSocket = 200
)

// EventFrame is an event as the socket, SSE (its data line) and long-poll
// carry it.
//
// Skipped, when not 0, says that this many earlier events of the group,
// all of them `progress` events of a job group, were dropped for this
// socket because it fell behind (conflation): this frame replaces them.
// The seq still increases; a client that ignores Skipped sees the latest
// progress and every other event.
type EventFrame struct {
	Type    string          `json:"type"` // TypeEvent
	Group   string          `json:"group"`
	Seq     int64           `json:"seq"`
	Epoch   string          `json:"epoch"`
	Event   string          `json:"event"`
	Data    json.RawMessage `json:"data"`
	TS      string          `json:"ts"`
	Skipped int             `json:"skipped,omitempty"`
}

// SubscribedFrame answers a subscribe (and starts an SSE stream).
// Recovered false means the position could not be resumed: the replay
// that follows is the whole retained history.
//
// Users (an extension) is, for a chat group, who is in the room as of
// LastSeq: a client starts its member list from it, then applies the
// join, leave and rename events that follow (replayed and live) as set
// operations. It is present, possibly empty, on every subscribed frame of
// a chat group from a server that tracks presence, and absent otherwise
// (omitzero keeps an empty list, which means "nobody", apart from no list).
type SubscribedFrame struct {
	Type      string          `json:"type"` // TypeSubscribed
	Group     string          `json:"group"`
	Ref       json.RawMessage `json:"ref,omitempty"`
	Epoch     string          `json:"epoch"`
	LastSeq   int64           `json:"last_seq"`
	Replayed  int             `json:"replayed"`
	Recovered bool            `json:"recovered"`
	Users     []Member        `json:"users,omitzero"`
}

// Member is one user present in a chat room: the "user" of join, leave
// and rename events, and each of a subscribed frame's Users.
type Member struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// ReplyFrame is every other server frame: unsubscribed, published, pong
// and error (with Code and Message).
type ReplyFrame struct {
	Type    string          `json:"type"`
	Group   string          `json:"group,omitempty"`
	Ref     json.RawMessage `json:"ref,omitempty"`
	Code    string          `json:"code,omitempty"`
	Message string          `json:"message,omitempty"`
}

// ServerFrame is any frame the server sends, for clients that read them
// into one type and switch on Type.
type ServerFrame struct {
	Type      string          `json:"type"`
	Group     string          `json:"group,omitempty"`
	Ref       json.RawMessage `json:"ref,omitempty"`
	Seq       int64           `json:"seq,omitempty"`
	Epoch     string          `json:"epoch,omitempty"`
	Event     string          `json:"event,omitempty"`
	Data      json.RawMessage `json:"data,omitempty"`
	TS        string          `json:"ts,omitempty"`
	LastSeq   int64           `json:"last_seq,omitempty"`
	Replayed  int             `json:"replayed,omitempty"`
	Recovered bool            `json:"recovered,omitempty"`
	Skipped   int             `json:"skipped,omitempty"`
	Users     []Member        `json:"users,omitzero"`
	Code      string          `json:"code,omitempty"`
	Message   string          `json:"message,omitempty"`
}

// LongPoll is the answer of a long-poll request on a group's events. Each
// of Events is an EventFrame; they stay raw so a server can send frames it
// encoded once for all its subscribers.
type LongPoll struct {
	Events    []json.RawMessage `json:"events"`
	LastSeq   int64             `json:"last_seq"`
	Epoch     string            `json:"epoch"`
	Recovered bool              `json:"recovered"`
}

// ErrorBody is the body of every non-2xx HTTP answer. Field and Job are
// extensions: the request field a bad_request is about, and the existing
// job a conflict (a unique type's duplicate) or idempotency_key_reused
// is about.
type ErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field,omitempty"`
		Job     string `json:"job,omitempty"`
	} `json:"error"`
}

// NewErrorBody returns the error body for code and message.
func NewErrorBody(code, message string) ErrorBody {
	var b ErrorBody
	b.Error.Code, b.Error.Message = code, message
	return b
}

// Progress is the payload of a "progress" event, and a job's progress in
// its snapshot (docs/protocol.md).
type Progress struct {
	Done    int64   `json:"done"`
	Total   int64   `json:"total"`
	Percent float64 `json:"percent"`
	Stage   string  `json:"stage,omitempty"`
	Message string  `json:"message,omitempty"`
	Rate    float64 `json:"rate"`            // units of Done per second, smoothed
	ETA     float64 `json:"eta_s,omitempty"` // seconds until Done reaches Total at Rate
}
