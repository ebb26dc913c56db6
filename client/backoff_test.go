package client

import (
	"testing"
	"time"
)

// Each delay is jittered within the upper half of its step, the steps
// double from MinBackoff and stop at MaxBackoff.
func TestBackoff(t *testing.T) {
	w := &Watcher{cfg: WatchConfig{MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}.withDefaults()}
	for _, tt := range []struct {
		attempt int
		step    time.Duration
	}{{0, 100 * time.Millisecond}, {1, 200 * time.Millisecond}, {3, 800 * time.Millisecond}, {4, time.Second}, {100, time.Second}} {
		for range 200 {
			if d := w.backoff(tt.attempt); d < tt.step/2 || d > tt.step {
				t.Fatalf("attempt %d: %v, want within [%v, %v]", tt.attempt, d, tt.step/2, tt.step)
			}
		}
	}
}
