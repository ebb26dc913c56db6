package wire

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
	EventState    = "state"    // {"state","attempt"?,"error"?}
	EventProgress = "progress" // the job's progress object
	EventLog      = "log"      // {"level","message"}
	EventResult   = "result"   // {"result"}: a completed job's last event
	EventFailed   = "failed"   // {"error"}: a failed job's last event

	// chat groups.
	EventMessage  = "message"  // {"id","user","text"}
	EventJoin     = "join"     // {"user"}
	EventLeave    = "leave"    // {"user"}
	EventPresence = "presence" // {"users"}
	EventRename   = "rename"   // {"user","old"}

	// user groups.
	EventNotification = "notification" // {"title","body"?,"link"?}
	EventSubmitted    = "submitted"    // the job object: the user submitted a job (any tab, any program)

	// the dashboard group.
	EventStats = "stats"
)

// Job states.
const (
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
