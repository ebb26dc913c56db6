package wire

import "encoding/json"

// Socket operations (client to server).
const (
	OpSubscribe   = "subscribe"
	OpUnsubscribe = "unsubscribe"
	OpPublish     = "publish"
	OpPing        = "ping"
)

// Frame types (server to client).
const (
	TypeSubscribed   = "subscribed"
	TypeEvent        = "event"
	TypeUnsubscribed = "unsubscribed"
	TypePublished    = "published"
	TypePong         = "pong"
	TypeError        = "error"
)

// Event names.
const (
	// job groups; lifecycle events are emitted by the workers only.
	EventState    = "state"    // {"state","attempt"?,"error"?,"message"?,"run_at"?}
	EventProgress = "progress" // the job's progress object
	EventLog      = "log"      // {"level","message"}
	EventResult   = "result"   // {"result"}: a completed job's last event
	EventFailed   = "failed"   // {"error"}: a failed job's last event

	// chat groups.
	EventMessage  = "message"  // {"id","user","text"}
	EventJoin     = "join"     // {"user"}
	EventLeave    = "leave"    // {"user"}
	EventPresence = "presence" // {"users"}: no longer published (the list is in SubscribedFrame.Users); still reserved, old histories may hold it
	EventRename   = "rename"   // {"user","old"}

	// user groups.
	EventNotification = "notification" // {"title","body"?,"link"?}
	EventSubmitted    = "submitted"    // the job object: the user submitted a job (any tab, any program)

	// the dashboard group.
	EventStats = "stats"
)

// Job states.
const (
	// StateScheduled is a job submitted with a delay or run_at, waiting
	// for its time; it then runs as a pending job would.
	StateScheduled = "scheduled"
	StatePending   = "pending"
	StateActive    = "active"
	StateRetry     = "retry"
	StateCompleted = "completed"
	StateFailed    = "failed"
	StateCanceled  = "canceled"
)

// Terminal reports whether a job in state has ended.
func Terminal(state string) bool {
	return state == StateCompleted || state == StateFailed || state == StateCanceled
}

// FinalJobEvent reports whether an event of a job group is the job's last
// one: result, failed, or state canceled. Nothing follows it.
func FinalJobEvent(event string, data json.RawMessage) bool {
	switch event {
	case EventResult, EventFailed:
		return true
	case EventState:
		var s struct {
			State string `json:"state"`
		}
		return json.Unmarshal(data, &s) == nil && s.State == StateCanceled
	}
	return false
}

// Reserved reports whether event names an event that only the server
// itself puts into groups of kind: a job's lifecycle and log (its
// workers), a chat room's record of who is present (its presence
// tracking), the dashboard's statistics. Programs that publish through
// the server API cannot send these.
func Reserved(kind, event string) bool {
	switch kind {
	case KindJob:
		switch event {
		case EventState, EventProgress, EventLog, EventResult, EventFailed:
			return true
		}
	case KindChat:
		switch event {
		case EventJoin, EventLeave, EventPresence, EventRename:
			return true
		}
	case KindDashboard:
		return event == EventStats
	}
	return false
}
