package web

import (
	"encoding/json"
	"fmt"
	"testing"

	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// breakLog makes group's log unreadable for good: its stream key holds a
// string, so every read of it fails with WRONGTYPE, a permanent error
// (not "unavailable") for which the hub fails the group's subscribers.
func (e *testEnv) breakLog(group string) {
	e.t.Helper()
	if err := e.rdb.Set(e.t.Context(), "ts:{"+group+"}:log", "not a stream", 0).Err(); err != nil {
		e.t.Fatal(err)
	}
}

// hubHoldsFullSocket reports whether the hub holds exactly the groups of
// one full socket, one subscriber each.
func (e *testEnv) hubHoldsFullSocket() bool {
	st := e.hub.Stats()
	return st.Groups == wire.MaxGroupsPerSocket && st.Subscribers == wire.MaxGroupsPerSocket
}

// dropPubSub breaks the hub's pub/sub connection: the hub reconnects,
// resubscribes and reads the log of every group it holds (a catch-up),
// as after any lost connection. A real Redis kills the connection
// (CLIENT KILL); the embedded one restarts with its data kept.
func (e *testEnv) dropPubSub() {
	e.t.Helper()
	if m := e.redis.Miniredis(); m != nil {
		m.Close()
		if err := m.Restart(); err != nil {
			e.t.Fatalf("restart miniredis: %v", err)
		}
		return
	}
	if err := e.rdb.ClientKillByFilter(e.t.Context(), "TYPE", "pubsub").Err(); err != nil {
		e.t.Fatalf("CLIENT KILL TYPE pubsub: %v", err)
	}
}

// userGroups are n user groups from user:PREFIX0 on: an admin may watch
// any, and nothing publishes to them.
func userGroups(prefix string, n int) []wire.GroupPosition {
	out := make([]wire.GroupPosition, n)
	for i := range out {
		out[i] = wire.GroupPosition{Group: wire.UserGroup(fmt.Sprintf("%s%d", prefix, i)).String()}
	}
	return out
}

// fillSocket subscribes n groups on ws (frames of up to MaxGroupsPerFrame)
// and checks each is subscribed.
func fillSocket(t *testing.T, ws *wsClient, groups []wire.GroupPosition) {
	t.Helper()
	for i := 0; i < len(groups); i += wire.MaxGroupsPerFrame {
		batch := groups[i:min(i+wire.MaxGroupsPerFrame, len(groups))]
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Ref: json.RawMessage(`"fill"`), Groups: batch})
		replies, _ := ws.readReplies(len(batch))
		for g, f := range replies {
			if f.Type != wire.TypeSubscribed {
				t.Fatalf("filling the socket, group %s: %+v", g, f)
			}
		}
	}
}

// A subscription the hub fails for good (its log cannot be read) ends
// with its error frame: it no longer counts toward the socket's groups,
// so the next subscribe of a full socket is served, and the hub drops
// the group's Redis subscription at once; nothing more of it arrives.
// Both when it fails before its subscribed frame (the error carries the
// subscribe's ref) and after it (a catch-up read after a lost pub/sub
// connection fails).
func TestFailedSubscriptionFreesItsSlot(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		ws := e.dial("Authorization", "Bearer "+testAdminToken) // an admin may watch any user group
		fillSocket(t, ws, userGroups("u", wire.MaxGroupsPerSocket-1))

		// Before its subscribed frame: the last slot's group fails.
		const bad = "user:bad"
		e.breakLog(bad)
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: bad, Ref: json.RawMessage(`"bad"`)})
		if f := ws.read(); f.Type != wire.TypeError || f.Group != bad || string(f.Ref) != `"bad"` || f.Code != CodeInternal {
			t.Fatalf("subscribe of an unreadable log: %+v, want an internal error for it with its ref", f)
		}
		// Its slot is free: the socket is one short of its cap.
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: "user:next", Ref: json.RawMessage(`"next"`)})
		if f := ws.read(); f.Type != wire.TypeSubscribed || f.Group != "user:next" {
			t.Fatalf("subscribe after a failed one: %+v, want subscribed", f)
		}
		// And the hub holds nothing of it: one group per subscription.
		eventually(t, "the failed group's hub subscription released", e.hubHoldsFullSocket)

		// After its subscribed frame: a group of the full socket fails on
		// the catch-up read that follows a lost pub/sub connection.
		const later = "user:u7"
		e.breakLog(later)
		e.dropPubSub()
		f := ws.read()
		if f.Type != wire.TypeError || f.Group != later || len(f.Ref) != 0 || f.Code != CodeInternal {
			t.Fatalf("after a catch-up read of an unreadable log: %+v, want an internal error for %s without a ref", f, later)
		}
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: "user:after", Ref: json.RawMessage(`"after"`)})
		if f := ws.read(); f.Type != wire.TypeSubscribed || f.Group != "user:after" {
			t.Fatalf("subscribe after a later failure: %+v, want subscribed", f)
		}
		eventually(t, "the later failed group's hub subscription released", e.hubHoldsFullSocket)
		// The socket is full again: the cap still holds.
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: "user:over", Ref: json.RawMessage(`"over"`)})
		if f := ws.read(); f.Type != wire.TypeError || f.Code != CodeBadRequest || f.Group != "user:over" {
			t.Fatalf("subscribe over the cap: %+v, want bad_request", f)
		}
		// Unsubscribing a failed group is no error (and frees nothing).
		ws.send(wire.ClientFrame{Op: wire.OpUnsubscribe, Group: later, Ref: json.RawMessage(`"un"`)})
		if f := ws.read(); f.Type != wire.TypeUnsubscribed || f.Group != later {
			t.Fatalf("unsubscribe of a failed group: %+v", f)
		}
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: "user:over", Ref: json.RawMessage(`"over2"`)})
		if f := ws.read(); f.Type != wire.TypeError || f.Code != CodeBadRequest || f.Group != "user:over" {
			t.Fatalf("subscribe over the cap after unsubscribing a failed group: %+v, want bad_request", f)
		}
	})
}

// The client may unsubscribe and subscribe again a group whose
// subscriptions keep failing while the hub fails them: each failure ends
// only its own subscription, whatever the order, so once the last one
// failed the socket holds exactly its other groups.
func TestFailedSubscriptionRacesItsClient(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		ws := e.dial("Authorization", "Bearer "+testAdminToken)
		fillSocket(t, ws, userGroups("u", wire.MaxGroupsPerSocket-2))
		const bad = "user:bad"
		e.breakLog(bad)
		// Well within the frame limit (burst 100), without waiting for
		// answers: subscribes that restart the group's failing
		// subscription, unsubscribes of it, and failures cross.
		for i := range 30 {
			ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: bad, Ref: json.RawMessage(fmt.Sprint(i))})
			if i%3 == 0 {
				ws.send(wire.ClientFrame{Op: wire.OpUnsubscribe, Group: bad})
			}
		}
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: bad, Ref: json.RawMessage(`"last"`)})
		ws.readUntil(func(f frame) bool {
			if f.Type == wire.TypeSubscribed || (f.Group != bad && f.Type != wire.TypeUnsubscribed) {
				t.Fatalf("unexpected frame %+v", f)
			}
			return f.Type == wire.TypeError && string(f.Ref) == `"last"`
		})
		// Two slots are free, not one more nor less.
		for _, g := range []string{"user:x", "user:y"} {
			ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: g})
			if f := ws.read(); f.Type != wire.TypeSubscribed || f.Group != g {
				t.Fatalf("subscribe %s: %+v, want subscribed", g, f)
			}
		}
		ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: "user:z"})
		if f := ws.read(); f.Type != wire.TypeError || f.Code != CodeBadRequest || f.Group != "user:z" {
			t.Fatalf("subscribe over the cap: %+v, want bad_request", f)
		}
		eventually(t, "the hub holds the socket's groups only", e.hubHoldsFullSocket)
	})
}
