package main

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"taskstream/cmd/internal/latency"
	"taskstream/progress"
)

// PubResult is what the publisher did.
type PubResult struct {
	Start, End time.Time
	Published  int
	Calls      latency.Summary // duration of each Log.Publish call
	Err        error
}

// Rate is the achieved publish rate.
func (p PubResult) Rate() float64 {
	if p.Published < 2 {
		return 0
	}
	return float64(p.Published-1) / p.End.Sub(p.Start).Seconds()
}

// due is when event i (from 0) should go out, at rate per second from start.
func due(start time.Time, i int, rate float64) time.Time {
	return start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
}

// chatPayload is a chat message whose text is size bytes.
func chatPayload(size int) json.RawMessage {
	b, _ := json.Marshal(map[string]string{"id": "loadgen", "user": "loadgen", "text": strings.Repeat("x", size)})
	return b
}

// publish sends n "message" events to group on log, paced at rate per
// second: event i goes out at start + i/rate, or at once when the
// publisher is behind. It stops early when ctx ends or a publish fails.
func publish(ctx context.Context, log *progress.Log, group string, n int, rate float64, payload int) PubResult {
	data := chatPayload(payload)
	calls := make([]time.Duration, 0, n)
	res := PubResult{Start: time.Now()}
	for i := range n {
		if wait := time.Until(due(res.Start, i, rate)); wait > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
		if ctx.Err() != nil {
			res.Err = ctx.Err()
			break
		}
		t0 := time.Now()
		if _, err := log.Publish(ctx, group, "message", data); err != nil {
			res.Err = err
			break
		}
		res.End = time.Now()
		calls = append(calls, res.End.Sub(t0))
		res.Published++
	}
	res.Calls = latency.Summarize(calls)
	return res
}
