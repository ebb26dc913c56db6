package jobs

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Priorities of a submission. A job type's queue Q is served as three
// Asynq queues, one per priority: "Q:high", "Q" (normal) and "Q:low".
// A worker gives each the weight of Q times PriorityWeight, so when all
// three hold work a high job is dequeued four times as often as a low
// one (Asynq picks queues at random by weight: a low job still runs under
// a flood of high ones, it only waits longer).
const (
	PriorityLow    = "low"
	PriorityNormal = "normal"
	PriorityHigh   = "high"
)

// Priorities lists the priorities from highest to lowest.
var Priorities = []string{PriorityHigh, PriorityNormal, PriorityLow}

// PriorityWeight is the factor a priority's Asynq queue gets on the weight
// of its queue (see the Priority constants).
var PriorityWeight = map[string]int{PriorityHigh: 4, PriorityNormal: 2, PriorityLow: 1}

// AsynqQueue returns the Asynq queue that serves queue at priority.
func AsynqQueue(queue, priority string) string {
	if priority == "" || priority == PriorityNormal {
		return queue
	}
	return queue + ":" + priority
}

// splitAsynqQueue is AsynqQueue reversed: the queue and the priority of
// an Asynq queue name.
func splitAsynqQueue(q string) (queue, priority string) {
	for _, p := range []string{PriorityHigh, PriorityLow} {
		if base, ok := strings.CutSuffix(q, ":"+p); ok {
			return base, p
		}
	}
	return q, PriorityNormal
}

// ExpandQueues turns queue weights (as WORKER_QUEUES names them: the
// queues of the job types) into the weights of the Asynq queues that
// serve them, one per priority (see the Priority constants).
func ExpandQueues(weights map[string]int) map[string]int {
	out := make(map[string]int, 3*len(weights))
	for q, w := range weights {
		for _, p := range Priorities {
			out[AsynqQueue(q, p)] = w * PriorityWeight[p]
		}
	}
	return out
}

// ValidQueueName reports whether name can be a job type's queue: 1 to 64
// of a-z 0-9 _ - (no ':', which separates the priority).
func ValidQueueName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Options are what a submitter may choose besides type and params, in the
// form they arrive in (JSON strings for durations and times). Every field
// is optional; the job type bounds each (see Type).
type Options struct {
	// Queue is one of the type's queues. Default: the type's first.
	Queue string `json:"queue,omitempty"`
	// Priority is "high", "normal" (the default) or "low".
	Priority string `json:"priority,omitempty"`
	// Timeout bounds one run, a Go duration ("90s", "5m"), from 1s to the
	// type's MaxTimeout. Default: the type's Timeout.
	Timeout string `json:"timeout,omitempty"`
	// MaxRetry is how many times a failed run is retried, 0 to the type's
	// RetryLimit. Default: the type's MaxRetry.
	MaxRetry *int `json:"max_retry,omitempty"`
	// Delay runs the job this long after the submit (a Go duration above
	// zero, at most Config.MaxDelay). Not with RunAt.
	Delay string `json:"delay,omitempty"`
	// RunAt runs the job at this time (RFC 3339, in the future, at most
	// Config.MaxDelay ahead). Not with Delay.
	RunAt string `json:"run_at,omitempty"`
}

// OptionError is a client mistake in a submission option (not in params).
type OptionError struct {
	Field  string // the option's JSON name
	Reason string
}

func (e *OptionError) Error() string { return e.Field + ": " + e.Reason }

func badOption(field, format string, args ...any) error {
	return &OptionError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// runOptions are Options checked against the type and resolved.
type runOptions struct {
	Queue    string // the type's queue (not the Asynq queue)
	Priority string
	Timeout  time.Duration
	MaxRetry int
	RunAt    time.Time // zero: run now
}

// asynqQueue is the Asynq queue the job goes to.
func (o runOptions) asynqQueue() string { return AsynqQueue(o.Queue, o.Priority) }

// resolveOptions checks o against t and fills the type's defaults; now is
// the submit's time (for delay and run_at), maxDelay the furthest ahead a
// job may be scheduled. Errors are *OptionError.
func (t Type) resolveOptions(o Options, now time.Time, maxDelay time.Duration) (runOptions, error) {
	r := runOptions{Queue: t.Queue, Priority: PriorityNormal, Timeout: t.Timeout, MaxRetry: t.MaxRetry}
	if o.Queue != "" {
		if !slices.Contains(t.Queues, o.Queue) {
			return r, badOption("queue", "must be one of %s for type %s, not %q", strings.Join(t.Queues, ", "), t.Name, o.Queue)
		}
		r.Queue = o.Queue
	}
	if o.Priority != "" {
		if _, ok := PriorityWeight[o.Priority]; !ok {
			return r, badOption("priority", "must be high, normal or low, not %q", o.Priority)
		}
		r.Priority = o.Priority
	}
	if o.Timeout != "" {
		d, err := time.ParseDuration(o.Timeout)
		switch {
		case err != nil:
			return r, badOption("timeout", "must be a duration like 90s or 5m, not %q", o.Timeout)
		case d < time.Second:
			return r, badOption("timeout", "must be at least 1s, not %s", o.Timeout)
		case d > t.MaxTimeout:
			return r, badOption("timeout", "must be at most %s for type %s, not %s", t.MaxTimeout, t.Name, o.Timeout)
		}
		r.Timeout = d
	}
	if o.MaxRetry != nil {
		if n := *o.MaxRetry; n < 0 || n > t.RetryLimit {
			return r, badOption("max_retry", "must be from 0 to %d for type %s, not %d", t.RetryLimit, t.Name, n)
		}
		r.MaxRetry = *o.MaxRetry
	}
	switch {
	case o.Delay != "" && o.RunAt != "":
		return r, badOption("run_at", "give delay or run_at, not both")
	case o.Delay != "":
		d, err := time.ParseDuration(o.Delay)
		switch {
		case err != nil:
			return r, badOption("delay", "must be a duration like 3s or 2h, not %q", o.Delay)
		case d <= 0:
			return r, badOption("delay", "must be above zero, not %s", o.Delay)
		case d > maxDelay:
			return r, badOption("delay", "must be at most %s, not %s", maxDelay, o.Delay)
		}
		r.RunAt = now.Add(d)
	case o.RunAt != "":
		at, err := time.Parse(time.RFC3339Nano, o.RunAt)
		switch {
		case err != nil:
			return r, badOption("run_at", "must be an RFC 3339 time like 2030-01-02T15:04:05Z, not %q", o.RunAt)
		case !at.After(now):
			return r, badOption("run_at", "is in the past (%s)", o.RunAt)
		case at.Sub(now) > maxDelay:
			return r, badOption("run_at", "must be at most %s ahead, not %s", maxDelay, o.RunAt)
		}
		r.RunAt = at.UTC()
	}
	return r, nil
}

// fingerprint identifies a submission for Idempotency-Key: the type, the
// normalized params and the options as resolved, except that a delay
// counts as the delay (not the time it yields), so the same request sent
// again has the same fingerprint.
func fingerprint(typ string, params json.RawMessage, o Options, r runOptions) string {
	when := o.Delay
	if d, err := time.ParseDuration(o.Delay); err == nil {
		when = "in " + d.String()
	}
	if !r.RunAt.IsZero() && o.Delay == "" {
		when = "at " + r.RunAt.Format(time.RFC3339Nano)
	}
	b, _ := json.Marshal([]any{typ, params, r.Queue, r.Priority, r.Timeout.String(), r.MaxRetry, when})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}
