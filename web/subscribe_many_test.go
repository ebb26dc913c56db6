package web

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// readReplies reads n reply frames (anything but events) and returns them
// by group; events read on the way are returned too.
func (c *wsClient) readReplies(n int) (map[string]frame, []frame) {
	c.t.Helper()
	replies := map[string]frame{}
	var events []frame
	for len(replies) < n {
		f := c.read()
		if f.Type == wire.TypeEvent {
			events = append(events, f)
			continue
		}
		if _, dup := replies[f.Group]; dup {
			c.t.Fatalf("two replies for group %q: %+v", f.Group, f)
		}
		replies[f.Group] = f
	}
	return replies, events
}

// A subscribe naming many groups is answered per group: the caller's own
// job and user group and a chat room are subscribed (and their events
// follow), someone else's job and user group and a bad name each get
// their own error frame, and every reply carries the frame's ref.
func TestSubscribeManyAuthorizesEachGroup(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		mine1 := e.submit("steps", map[string]any{"steps": 2})
		mine2 := e.submit("steps", map[string]any{"steps": 2})
		other := e.newBrowser()
		status, body, _ := e.doAs(other, "POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]any{"steps": 2}})
		if status != 202 {
			t.Fatalf("submit as the other user: %d %v", status, body)
		}
		theirs := body["id"].(string)
		me := wire.UserGroup(e.me(e.client)).String()
		them := wire.UserGroup(e.me(other)).String()
		room := wire.ChatGroup("many").String()

		ws := e.dial()
		zero := int64(0)
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Ref: json.RawMessage(`"m1"`), Groups: []wire.GroupPosition{
			{Group: wire.JobGroup(mine1).String(), After: &zero},
			{Group: wire.JobGroup(theirs).String()},
			{Group: "no spaces"},
			{Group: wire.JobGroup(mine2).String()},
			{Group: me},
			{Group: them},
			{Group: room},
		}})
		want := map[string]string{
			wire.JobGroup(mine1).String():  wire.TypeSubscribed,
			wire.JobGroup(theirs).String(): wire.CodeForbidden,
			"no spaces":                    wire.CodeBadRequest,
			wire.JobGroup(mine2).String():  wire.TypeSubscribed,
			me:                             wire.TypeSubscribed,
			them:                           wire.CodeForbidden,
			room:                           wire.TypeSubscribed,
		}
		replies, events := ws.readReplies(len(want))
		for group, w := range want {
			f := replies[group]
			got := f.Type
			if f.Type == wire.TypeError {
				got = f.Code
			}
			if got != w || string(f.Ref) != `"m1"` {
				t.Errorf("group %s: %+v, want %s with ref \"m1\"", group, f, w)
			}
		}
		// The subscribed groups deliver: each job's "state pending" is
		// replayed, and a notification published now arrives.
		if _, err := e.log.Publish(context.Background(), me, wire.EventNotification, map[string]string{"title": "hi"}); err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, f := range events {
			seen[f.Group+" "+f.Event] = true
		}
		for len(seen) < 3 || !seen[me+" "+wire.EventNotification] {
			f := ws.read()
			if f.Type == wire.TypeEvent {
				seen[f.Group+" "+f.Event] = true
			}
		}
		for _, key := range []string{wire.JobGroup(mine1).String() + " state", wire.JobGroup(mine2).String() + " state"} {
			if !seen[key] {
				t.Errorf("no %s event; saw %v", key, seen)
			}
		}
	})
}

// The frame limit counts a many-group frame once; a frame over
// MaxGroupsPerFrame is refused whole; the per-socket cap still holds,
// per group; unsubscribe takes many groups too.
func TestSubscribeManyLimits(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		// Four frames, then nothing for a very long time.
		e := newEnv(t, srv, withoutWorker(), withWebConfig(Config{FrameRate: 0.0001, FrameBurst: 4}))
		ws := e.dial("Authorization", "Bearer "+testAdminToken) // an admin may watch any user group
		users := func(from, n int) []wire.GroupPosition {
			out := make([]wire.GroupPosition, n)
			for i := range out {
				out[i] = wire.GroupPosition{Group: wire.UserGroup(fmt.Sprintf("u%d", from+i)).String()}
			}
			return out
		}

		// Over the per-frame cap: refused whole (and counted, as every
		// frame is).
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Ref: json.RawMessage(`1`), Groups: users(0, wire.MaxGroupsPerFrame+1)})
		if f := ws.read(); f.Type != wire.TypeError || f.Code != wire.CodeBadRequest || string(f.Ref) != "1" {
			t.Fatalf("a frame of %d groups: %+v, want bad_request", wire.MaxGroupsPerFrame+1, f)
		}
		// Two full frames: the socket's whole cap, no rate_limited.
		for i, ref := range []string{"2", "3"} {
			ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Ref: json.RawMessage(ref), Groups: users(i*wire.MaxGroupsPerFrame, wire.MaxGroupsPerFrame)})
			replies, _ := ws.readReplies(wire.MaxGroupsPerFrame)
			for g, f := range replies {
				if f.Type != wire.TypeSubscribed || string(f.Ref) != ref {
					t.Fatalf("group %s: %+v", g, f)
				}
			}
		}
		// The socket is full: the next group gets its own error.
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Ref: json.RawMessage(`4`), Groups: users(1000, 1)})
		if f := ws.read(); f.Type != wire.TypeError || f.Code != wire.CodeBadRequest || f.Group != "user:u1000" {
			t.Fatalf("group over the socket's cap: %+v", f)
		}
		// The limiter is spent: the next frame is dropped.
		ws.send(wire.ClientFrame{Op: wire.OpUnsubscribe, Ref: json.RawMessage(`5`), Groups: users(0, wire.MaxGroupsPerFrame)})
		if f := ws.read(); f.Type != wire.TypeError || f.Code != wire.CodeRateLimited {
			t.Fatalf("fifth frame: %+v, want rate_limited", f)
		}
	})
}

// Unsubscribe names many groups too: each is answered, and events of the
// groups left stop while the others go on.
func TestUnsubscribeMany(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		ws := e.dial("Authorization", "Bearer "+testAdminToken)
		groups := []wire.GroupPosition{{Group: "user:a"}, {Group: "user:b"}, {Group: "user:c"}}
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Groups: groups})
		ws.readReplies(len(groups))
		ws.send(wire.ClientFrame{Op: wire.OpUnsubscribe, Ref: json.RawMessage(`"u"`), Groups: groups[:2]})
		replies, _ := ws.readReplies(2)
		for _, g := range groups[:2] {
			if f := replies[g.Group]; f.Type != wire.TypeUnsubscribed || string(f.Ref) != `"u"` {
				t.Fatalf("%s: %+v", g.Group, f)
			}
		}
		ctx := context.Background()
		for _, g := range []string{"user:a", "user:b", "user:c"} {
			if _, err := e.log.Publish(ctx, g, wire.EventNotification, map[string]string{"title": g}); err != nil {
				t.Fatal(err)
			}
		}
		// Frames of one socket arrive in order: a pong sent after the
		// publishes comes after any event of theirs.
		ws.send(wire.ClientFrame{Op: wire.OpPing, Ref: json.RawMessage(`"p"`)})
		var got []string
		for f := ws.read(); f.Type != wire.TypePong; f = ws.read() {
			if f.Type == wire.TypeEvent {
				got = append(got, f.Group)
			}
		}
		if len(got) > 1 || (len(got) == 1 && got[0] != "user:c") {
			t.Fatalf("events after unsubscribing a and b: %v", got)
		}
		if len(got) == 0 {
			if f := ws.read(); f.Type != wire.TypeEvent || f.Group != "user:c" {
				t.Fatalf("want user:c's event, got %+v", f)
			}
		}
	})
}
