package web

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

// 500 sockets watching one job share one Redis subscription, which is
// released when the last of them leaves.
func TestManySocketsShareOneSubscription(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		id := e.submit("steps", map[string]any{"steps": 3})
		group := "job:" + id
		channel := e.log.Channel(group)
		const n = 500
		clients := make([]*wsClient, n)
		for i := range clients {
			clients[i] = e.dial()
			clients[i].send(map[string]any{"op": "subscribe", "group": group})
		}
		for _, c := range clients {
			if f := c.read(); f.Type != "subscribed" {
				t.Fatalf("got %+v, want subscribed", f)
			}
		}
		numsub := func() int64 {
			m, err := e.rdb.PubSubNumSub(context.Background(), channel).Result()
			if err != nil {
				t.Fatal(err)
			}
			return m[channel]
		}
		eventually(t, "PUBSUB NUMSUB = 1", func() bool { return numsub() == 1 })
		if got := e.hub.Stats(); got.Groups != 1 || got.Subscribers != n {
			t.Fatalf("hub stats %+v, want 1 group and %d subscribers", got, n)
		}
		// One published event reaches every socket.
		if _, err := e.log.Publish(context.Background(), group, "log", map[string]string{"level": "info", "message": "hello"}); err != nil {
			t.Fatal(err)
		}
		for _, c := range clients {
			f := c.readUntil(func(f frame) bool { return f.Type == "event" && f.Event == "log" })
			if last := f[len(f)-1]; last.Seq != 2 {
				t.Fatalf("log event seq %d, want 2", last.Seq)
			}
		}
		for _, c := range clients {
			_ = c.conn.Close()
		}
		eventually(t, "PUBSUB NUMSUB = 0", func() bool { return numsub() == 0 })
		eventually(t, "hub empty", func() bool { return e.hub.Stats() == progress.HubStats{} })
	})
}

// A socket that stops reading is closed with 1013 once its send queue is
// full, and never delays the sockets that keep reading: they get every
// event. The slow one gets a gap-free prefix, then the close.
func TestSlowSocketIsDroppedWithoutDelayingOthers(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker(), withWebConfig(Config{SendQueue: 64, WriteTimeout: time.Minute}))
		browser, group := e.privateGroup()
		slow := e.dialAs(browser)
		slow.send(map[string]any{"op": "subscribe", "group": group})
		if f := slow.read(); f.Type != "subscribed" {
			t.Fatalf("got %+v", f)
		}
		fast := []*wsClient{e.dialAs(browser), e.dialAs(browser), e.dialAs(browser)}
		for _, c := range fast {
			c.send(map[string]any{"op": "subscribe", "group": group})
			if f := c.read(); f.Type != "subscribed" {
				t.Fatalf("got %+v", f)
			}
		}
		// Enough data to fill the kernel's socket buffers and the queue.
		const events = 1500
		payload := map[string]string{"text": strings.Repeat("x", 8<<10)}
		var wg sync.WaitGroup
		errs := make(chan error, len(fast))
		progressOf := make([]atomic.Int64, len(fast))
		for i, c := range fast {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for want := int64(1); want <= events; want++ {
					f, err := c.tryRead(30 * time.Second)
					if err != nil {
						errs <- fmt.Errorf("fast socket: %v after seq %d", err, want-1)
						return
					}
					if f.Seq != want {
						errs <- fmt.Errorf("fast socket got seq %d, want %d", f.Seq, want)
						return
					}
					progressOf[i].Store(want)
				}
			}()
		}
		// Publish in batches the fast readers keep up with (flow control by
		// the test, not by timing), so only the one that stopped reading
		// can overflow its queue.
		const batch = 30
		for sent := int64(0); sent < events; {
			for range batch {
				if _, err := e.log.Publish(context.Background(), group, "message", payload); err != nil {
					t.Fatal(err)
				}
				sent++
			}
			eventually(t, "fast readers keep up", func() bool {
				for i := range progressOf {
					if progressOf[i].Load() < sent && len(errs) == 0 {
						return false
					}
				}
				return true
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		// Now read the slow socket: a gap-free prefix, then 1013.
		var last int64
		for {
			f, err := slow.tryRead(30 * time.Second)
			if err != nil {
				if code := closeCodeOf(err); code != closeTryAgain {
					t.Fatalf("slow socket ended with %v (code %d) after seq %d, want close 1013", err, code, last)
				}
				break
			}
			if f.Seq != last+1 {
				t.Fatalf("slow socket got seq %d after %d", f.Seq, last)
			}
			last = f.Seq
		}
		if last >= events {
			t.Fatalf("slow socket received all %d events; the test did not make it slow", events)
		}
		// The metrics say so: one overflow, one 1013 close (the fast
		// sockets are still open).
		eventually(t, "the overflow and its 1013 close counted", func() bool {
			s := e.scrape()
			return s.value(t, "taskstream_send_queue_overflows_total") == 1 &&
				s.value(t, "taskstream_socket_closes_total", "code", "1013") == 1
		})
		if s := e.scrape(); s.value(t, "taskstream_sockets", "transport", "websocket") != float64(len(fast)) {
			t.Errorf("open sockets %v, want the %d fast ones", s.value(t, "taskstream_sockets", "transport", "websocket"), len(fast))
		}
	})
}

// Resume: the right epoch gives recovered=true and only what is newer; a
// stale epoch gives recovered=false and the whole retained history.
func TestSocketResume(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		browser, group := e.privateGroup()
		var epoch string
		for i := range 10 {
			ev, err := e.log.Publish(context.Background(), group, "message", map[string]int{"i": i})
			if err != nil {
				t.Fatal(err)
			}
			epoch = ev.Epoch
		}
		cases := []struct {
			name      string
			after     int64
			epoch     string
			recovered bool
			firstSeq  int64
		}{
			{"same epoch", 7, epoch, true, 8},
			{"stale epoch", 7, "0000000000000000", false, 1},
			{"no epoch", 4, "", true, 5},
			{"caught up", 10, epoch, true, 0},
			{"from the start", 0, "", true, 1},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				c := e.dialAs(browser)
				c.send(map[string]any{"op": "subscribe", "group": group, "after": tc.after, "epoch": tc.epoch, "ref": 7})
				f := c.read()
				if f.Type != "subscribed" || f.Recovered != tc.recovered || f.Epoch != epoch || f.LastSeq != 10 || string(f.Ref) != "7" {
					t.Fatalf("subscribed frame %+v, want recovered=%v epoch=%s last_seq=10 ref=7", f, tc.recovered, epoch)
				}
				wantReplay := 0
				if tc.firstSeq > 0 {
					wantReplay = int(10 - tc.firstSeq + 1)
				}
				if f.Replayed != wantReplay {
					t.Fatalf("replayed %d, want %d", f.Replayed, wantReplay)
				}
				for seq := tc.firstSeq; tc.firstSeq > 0 && seq <= 10; seq++ {
					if got := c.read(); got.Seq != seq || got.Type != "event" {
						t.Fatalf("got %+v, want event seq %d", got, seq)
					}
				}
				c.send(map[string]any{"op": "ping", "ref": "end"})
				if got := c.read(); got.Type != "pong" {
					t.Fatalf("got %+v after the replay, want only the pong", got)
				}
			})
		}
	})
}

// Replay and live delivery race: events are published while clients
// subscribe at random points; each client gets every event after its
// position exactly once, in order.
func TestSubscribeWhilePublishing(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		const iterations, events, clients = 15, 60, 4
		for it := range iterations {
			browser, group := e.privateGroup()
			// Seed one event so the group has an epoch before anyone joins.
			if _, err := e.log.Publish(context.Background(), group, "message", it); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range events - 1 {
					if _, err := e.log.Publish(context.Background(), group, "message", i); err != nil {
						t.Error(err)
						return
					}
				}
			}()
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
					after := int64(rand.IntN(2)) // never beyond the seeded event: a position past the log is "lost"
					c := e.dialAs(browser)
					c.send(map[string]any{"op": "subscribe", "group": group, "after": after})
					if f := c.read(); f.Type != "subscribed" {
						t.Errorf("got %+v", f)
						return
					}
					for want := after + 1; want <= events; want++ {
						f, err := c.tryRead(15 * time.Second)
						if err != nil {
							t.Errorf("iteration %d: %v waiting for seq %d", it, err, want)
							return
						}
						if f.Seq != want {
							t.Errorf("iteration %d: got seq %d, want %d", it, f.Seq, want)
							return
						}
					}
					_ = c.conn.Close()
				}()
			}
			wg.Wait()
			if t.Failed() {
				return
			}
		}
	})
}

// Shutdown closes every socket with 1001 so clients reconnect and resume.
func TestShutdownClosesSocketsWithGoingAway(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker())
	c := e.dial()
	c.send(map[string]any{"op": "subscribe", "group": "chat:bye"})
	if f := c.read(); f.Type != "subscribed" {
		t.Fatalf("got %+v", f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.web.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if code := c.closeCode(); code != closeGoingAway {
		t.Fatalf("close code %d, want 1001", code)
	}
	if n := e.web.ConnCount(); n != 0 {
		t.Fatalf("%d sockets left after shutdown", n)
	}
	// New sockets are refused while shutting down.
	status, body, _ := e.do("GET", "/ws", nil, "Connection", "Upgrade", "Upgrade", "websocket", "Sec-WebSocket-Version", "13", "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	if status != 503 || body["error"].(map[string]any)["code"] != CodeUnavailable {
		t.Fatalf("socket during shutdown: %d %v", status, body)
	}
}

// A socket whose writes time out is dropped even while its client keeps
// sending frames: the server reads nothing more from it.
func TestStuckWriterEndsConnection(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker(), withWebConfig(Config{WriteTimeout: 200 * time.Millisecond, SendQueue: 100000, SendQueueBytes: 1 << 30}))
	browser, group := e.privateGroup()
	c := e.dialAs(browser)
	c.send(map[string]any{"op": "subscribe", "group": group})
	if f := c.read(); f.Type != "subscribed" {
		t.Fatalf("got %+v", f)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a client that talks but never reads
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				if c.conn.WriteJSON(map[string]any{"op": "ping"}) != nil {
					return
				}
			}
		}
	}()
	// More than the kernel's socket buffers hold, so the writer stalls.
	payload := map[string]string{"text": strings.Repeat("x", 64<<10)}
	for range 300 {
		if _, err := e.log.Publish(context.Background(), group, "message", payload); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the stuck socket to be dropped", func() bool { return e.web.ConnCount() == 0 })
}
