package web

import (
	"encoding/json"
	"testing"

	"taskstream/progress/progresstest"
)

// A job submitted over HTTP is watched to the end over a real socket:
// pending, active, progress, completed, result, in seq order with no gap.
func TestSocketWatchesJobToCompletion(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		id := e.submit("steps", map[string]any{"steps": 5, "interval_ms": 10})
		c := e.dial()
		c.send(map[string]any{"op": "subscribe", "group": "job:" + id, "ref": "1"})
		first := c.read()
		if first.Type != "subscribed" || string(first.Ref) != `"1"` || first.Epoch == "" {
			t.Fatalf("first frame = %+v, want subscribed with ref 1 and an epoch", first)
		}
		frames := c.readUntil(isTerminalEvent)
		var names []string
		for i, f := range frames {
			if f.Seq != int64(i+1) {
				t.Fatalf("frame %d has seq %d: %+v", i, f.Seq, frames)
			}
			names = append(names, f.Event)
		}
		if names[0] != "state" || names[len(names)-1] != "result" {
			t.Fatalf("events %v: want state first and result last", names)
		}
		var res struct{ Result struct{ Steps int } }
		_ = json.Unmarshal(frames[len(frames)-1].Data, &res)
		if res.Result.Steps != 5 {
			t.Fatalf("result %s", frames[len(frames)-1].Data)
		}
	})
}
