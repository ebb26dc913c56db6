package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"taskstream/client"
	"taskstream/progress/progresstest"
	"taskstream/web"
	"taskstream/wire"
)

// WatchMany at the server's cap (MaxGroups is wire.MaxGroupsPerSocket),
// swapping a group for a new one as fast as the answers come, on a
// server whose frame limit drops most of the frames, with groups whose
// subscription fails (an unreadable log) mixed in: each new group is
// subscribed, or reported failed with its own error, and never refused
// for "too many groups on one socket". An unsubscribe the server dropped
// as rate_limited still holds its groups there, so the watch counts them
// until an unsubscribed answer and sends the frame again; a group that
// failed holds nothing on the server, nor in the watch.
func TestWatchManyAtTheCap(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		// A burst of three frames, then one every 50 ms: the watch sends
		// one every millisecond when it has something to send.
		s := newServer(t, srv, serverOptions{noWorker: true, web: web.Config{FrameRate: 20, FrameBurst: 3}})
		rdb := rdbOf(srv, t.Cleanup)
		c := newClient(t, s, client.Config{Token: adminToken, Watch: client.WatchConfig{
			SubscribeInterval: time.Millisecond, RateLimitedDelay: 10 * time.Millisecond}})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()

		subscribed := make(chan string, 4*wire.MaxGroupsPerSocket)
		w := c.WatchMany(ctx, client.OnSubscribed(func(f wire.SubscribedFrame) {
			select {
			case subscribed <- f.Group:
			default:
				t.Errorf("more subscribed answers than groups added (%s)", f.Group)
			}
		}))
		refused := make(chan *client.Error, wire.MaxGroupsPerSocket)
		readerDone := make(chan error, 1)
		go func() { // ends with the watch (Close below)
			for {
				_, err := w.Next(ctx)
				var e *client.Error
				if errors.As(err, &e) && e.Group != "" {
					refused <- e
					continue
				}
				if err != nil {
					readerDone <- err
					return
				}
			}
		}()
		defer func() {
			_ = w.Close()
			if err := <-readerDone; !errors.Is(err, client.ErrClosed) {
				t.Errorf("the watch ended with %v", err)
			}
		}()
		// wantAnswer waits for group's answer: subscribed, or (failed)
		// its own internal error.
		wantAnswer := func(group string, failed bool) {
			t.Helper()
			select {
			case got := <-subscribed:
				if got != group || failed {
					t.Fatalf("subscribed %s, want %s's answer (a failure: %v)", got, group, failed)
				}
			case e := <-refused:
				if e.Group != group || !failed || e.Code != wire.CodeInternal {
					t.Fatalf("refused %s: %v, want %s's answer (a failure: %v)", e.Group, e, group, failed)
				}
			case <-ctx.Done():
				t.Fatalf("no answer for %s", group)
			}
		}

		var held []string // subscribed on the server, oldest first
		fill := make(map[string]bool, wire.MaxGroupsPerSocket)
		for i := range wire.MaxGroupsPerSocket {
			g := wire.UserGroup(fmt.Sprintf("fill%d", i)).String()
			fill[g] = true
			held = append(held, g)
			if err := w.Add(g, client.Position{}); err != nil {
				t.Fatal(err)
			}
		}
		for range wire.MaxGroupsPerSocket {
			select {
			case g := <-subscribed:
				delete(fill, g)
			case e := <-refused:
				t.Fatalf("filling the socket: %v", e)
			case <-ctx.Done():
				t.Fatalf("filling the socket: %d groups not subscribed", len(fill))
			}
		}
		for i := range 40 {
			if len(held) == wire.MaxGroupsPerSocket {
				w.Remove(held[0])
				held = held[1:]
			}
			g := wire.UserGroup(fmt.Sprintf("swap%d", i)).String()
			failing := i%5 == 4
			if failing {
				if err := rdb.Set(ctx, "ts:{"+g+"}:log", "not a stream", 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Add(g, client.Position{}); err != nil {
				t.Fatal(err)
			}
			wantAnswer(g, failing)
			if !failing {
				held = append(held, g)
			}
		}
	})
}

// A group removed and added again while its unsubscribe is not handled
// yet (the server dropped it as rate_limited and the frame waits to be
// sent again) starts over from the position it was added with: what the
// old subscription still delivers until the server handles the
// unsubscribe is not the new one's, so the new one's replay is whole.
func TestWatchManyReAddWhileUnsubscribing(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		// One frame, then one every two seconds: the unsubscribe that
		// follows the subscribe is dropped.
		s := newServer(t, srv, serverOptions{noWorker: true, web: web.Config{FrameRate: 0.5, FrameBurst: 1}})
		c := newClient(t, s, client.Config{Token: adminToken, Watch: client.WatchConfig{
			SubscribeInterval: time.Millisecond, RateLimitedDelay: 10 * time.Millisecond}})
		group := wire.UserGroup("readd").String()
		publishN(t, s.log, group, 3, nil)
		w := c.WatchMany(context.Background())
		defer w.Close()
		if err := w.Add(group, client.Position{}); err != nil {
			t.Fatal(err)
		}
		nextN(t, w, 0, 3)
		w.Remove(group)
		if err := w.Add(group, client.Position{}); err != nil {
			t.Fatal(err)
		}
		publishN(t, s.log, group, 1, nil) // seq 4, live on the old subscription
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for want := int64(1); want <= 4; want++ {
			ev, err := w.Next(ctx)
			if err != nil || ev.Seq != want {
				t.Fatalf("after adding the group again: %+v, %v; want seq %d", ev.EventFrame, err, want)
			}
		}
	})
}
