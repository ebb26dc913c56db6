package web

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"runtime/pprof"
	"strconv"
	"strings"
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

// An idle socket keeps one goroutine of its own on the read side: its read
// pump, started outside net/http (so the HTTP handler's goroutine, with
// the router and middleware under it, the request and its context, are
// not kept for the socket's life), and no frame handler once its frames
// are answered (they run off the read pump's stack, see conn.offStack).
// The write side's goroutines are not counted here. The server's
// goroutines are told from other tests' by a profiler label they inherit
// from this test's goroutine.
func TestIdleSocketKeepsOnlyItsReadPump(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		label := pprof.Labels("test", t.Name())
		pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), label))
		e := newEnv(t, srv, withoutWorker()) // its server's goroutines carry the label
		pprof.SetGoroutineLabels(context.Background())
		client, group := e.privateGroup()
		const sockets = 20
		for range sockets {
			c := e.dialAs(client)
			c.send(map[string]any{"op": "subscribe", "group": group, "ref": "s"})
			if f := c.read(); f.Type != "subscribed" {
				t.Fatalf("got %+v, want subscribed", f)
			}
		}
		want := goroutineCounts{readPumps: sockets}
		var got goroutineCounts
		eventually(t, fmt.Sprintf("every socket idle in its read pump alone (%+v, last %+v)", want, &got), func() bool {
			got = countSocketGoroutines(t, "test", t.Name())
			return got == want
		})
	})
}

// goroutineCounts counts a server's socket goroutines by what they run.
type goroutineCounts struct {
	readPumps     int // in conn.readPump
	deepReadPumps int // of those, with a frame's handling (conn.handle) on their own stack
	underHandler  int // running a socket inside net/http's connection goroutine
	frameHandlers int // answering a frame for a read pump (conn.offStack: a goroutine of the stack pool)
}

// countSocketGoroutines reads the goroutine profile and counts the socket
// goroutines labelled key=value.
func countSocketGoroutines(t *testing.T, key, value string) goroutineCounts {
	t.Helper()
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("# labels: {%q:%q}", key, value)
	var n goroutineCounts
	// debug=1: one record per distinct stack, "COUNT @ PCS", its labels,
	// then a line per frame; records are separated by blank lines.
	for _, rec := range strings.Split(buf.String(), "\n\n") {
		if !strings.Contains(rec, want) {
			continue
		}
		count, _, _ := strings.Cut(rec, " @ ")
		// The first record follows the profile's title line.
		k, err := strconv.Atoi(count[strings.LastIndexByte(count, '\n')+1:])
		if err != nil {
			t.Fatalf("goroutine profile record %q: %v", count, err)
		}
		has := func(fn string) bool { return strings.Contains(rec, "taskstream/web."+fn+"+") }
		if (has("(*Server).serveSocket") || strings.Contains(rec, "taskstream/web.(*conn).")) && strings.Contains(rec, "net/http.(*conn).serve+") {
			n.underHandler += k
		}
		switch {
		case has("(*stackPool).work") && has("(*conn).onMessage"):
			n.frameHandlers += k
		case has("(*conn).readPump"):
			n.readPumps += k
			if has("(*conn).handle") {
				n.deepReadPumps += k
			}
		}
	}
	return n
}

// A client frame is answered in another goroutine (the stack pool's) while
// the read pump waits: the stack a subscribe grows (here stuck in a Redis round trip to
// a frozen Redis) is not the read pump's, so it is freed when the answer is
// done rather than kept by the idle socket (see conn.offStack).
func TestSocketFrameHandledOffReadPump(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		label := pprof.Labels("test", t.Name())
		pprof.SetGoroutineLabels(pprof.WithLabels(context.Background(), label))
		e := newEnv(t, srv, withoutWorker())
		pprof.SetGoroutineLabels(context.Background())
		c := e.dial()
		c.send(map[string]any{"op": "ping", "ref": "p"})
		if f := c.read(); f.Type != "pong" {
			t.Fatalf("got %+v, want pong", f)
		}
		srv.Pause(t) // skips on miniredis
		// Authorizing a job's group reads its owner from Redis.
		c.send(map[string]any{"op": "subscribe", "group": "job:0123456789abcdef", "ref": "j"})
		want := goroutineCounts{readPumps: 1, frameHandlers: 1}
		var got goroutineCounts
		eventually(t, fmt.Sprintf("the subscribe answered off the read pump's stack (want %+v)", want), func() bool {
			got = countSocketGoroutines(t, "test", t.Name())
			return got == want
		})
		srv.Resume()
	})
}
