package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// A swarm's sockets receive through rings where the kernel allows them:
// a silent fallback to read(2) would measure another client.
func TestRecvRingIsUsed(t *testing.T) {
	if why := ringExpected(); why != "" {
		t.Skip(why)
	}
	sw := newSwarm(context.Background(), &gorillaTarget{}, 3, 1, 1)
	note := sw.reader(true)
	defer sw.Close()
	if len(sw.rings) == 0 || sw.socks[2].ring == nil || !strings.Contains(note, "io_uring") {
		t.Fatalf("no rings: %s", note)
	}
	off := newSwarm(context.Background(), &gorillaTarget{}, 1, 1, 1)
	defer off.Close()
	if note := off.reader(false); off.socks[0].ring != nil || !strings.Contains(note, "read(2)") {
		t.Fatalf("rings without asking: %s", note)
	}
}

// burstServer sends each socket msgs text messages ("<socket>.<n>") in
// bursts of burst, all sockets at once, then closes with 1000; done
// hears when a socket's connection ended on the server's side.
func burstServer(t *testing.T, msgs, burst int, start <-chan struct{}, done chan<- string) *httptest.Server {
	t.Helper()
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		name := r.URL.Query().Get("s")
		go func() { // read until the client's close, or the connection's end
			for {
				if _, _, err := ws.NextReader(); err != nil {
					done <- name
					return
				}
			}
		}()
		if msgs == 0 {
			<-r.Context().Done()
			return
		}
		<-start
		for i := 0; i < msgs; i += burst {
			for j := i; j < min(i+burst, msgs); j++ {
				if err := ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprintf("%s.%d", name, j))); err != nil {
					return
				}
			}
			time.Sleep(time.Millisecond)
		}
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Many sockets on one ring with fewer provided buffers than sockets with
// data at once: the kernel's receives run out (ENOBUFS) and are armed
// again, and every socket still gets each of its messages once, in
// order, then the server's close. With more sockets than the ring's
// submission queue (recvRingEntries), re-arming them fills the queue
// inside Reap, so queue enters the ring (to submit only) from Reap's
// callback.
func TestRecvRingManySocketsFewBuffers(t *testing.T) {
	if why := ringExpected(); why != "" {
		t.Skip(why)
	}
	for _, tc := range []struct {
		name               string
		socks, msgs, burst int
	}{
		{"16 sockets, bursts of 25", 16, 300, 25},
		{"more sockets than the submission queue", 2 * recvRingEntries, 40, 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rr, err := newRecvRing(2)
			if err != nil {
				t.Fatal(err)
			}
			defer rr.close()
			start := make(chan struct{})
			srv := burstServer(t, tc.msgs, tc.burst, start, make(chan string, tc.socks))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			var wg sync.WaitGroup
			errs := make(chan error, tc.socks)
			for i := range tc.socks {
				s := &sock{ring: rr}
				name := fmt.Sprint("s", i)
				if err := dialSock(ctx, websocket.Dialer{}, "ws"+strings.TrimPrefix(srv.URL, "http")+"?s="+name, nil, s); err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer s.ws.Close()
					next := 0
					err := s.readMessages(ctx, func(msg []byte, _ time.Time) bool {
						if want := fmt.Sprintf("%s.%d", name, next); string(msg) != want {
							errs <- fmt.Errorf("%s: got %q, want %q", name, msg, want)
							return false
						}
						next++
						return true
					})
					switch {
					case closeCodeOf(err) != websocket.CloseNormalClosure:
						errs <- fmt.Errorf("%s ended with %v, want the server's close", name, err)
					case next != tc.msgs:
						errs <- fmt.Errorf("%s: %d messages, want %d", name, next, tc.msgs)
					}
				}()
			}
			close(start)
			wg.Wait()
			rr.close()
			t.Logf("receives armed again: %d", rr.rearms) // after close: the ring's goroutine ended
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

// A reader whose context ends leaves the ring and gets the socket back:
// the close that follows reaches the server (the ring let go of the
// socket's file). A ring closed under a reader ends it with
// errRingClosed.
func TestRecvRingLetsGo(t *testing.T) {
	if why := ringExpected(); why != "" {
		t.Skip(why)
	}
	rr, err := newRecvRing(0)
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan string, 2)
	srv := burstServer(t, 0, 1, nil, ended)
	dial := func(name string) *sock {
		s := &sock{ring: rr}
		if err := dialSock(context.Background(), websocket.Dialer{}, "ws"+strings.TrimPrefix(srv.URL, "http")+"?s="+name, nil, s); err != nil {
			t.Fatal(err)
		}
		return s
	}

	s := dial("cancelled")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if err := s.readMessages(ctx, func([]byte, time.Time) bool { return true }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled reader: %v, want context.Canceled", err)
	}
	_ = s.ws.Close()
	select {
	case name := <-ended:
		if name != "cancelled" {
			t.Fatalf("the server saw %q end", name)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the server never saw the cancelled socket's close")
	}

	s = dial("closing")
	got := make(chan error, 1)
	go func() { got <- s.readMessages(context.Background(), func([]byte, time.Time) bool { return true }) }()
	time.Sleep(50 * time.Millisecond)
	rr.close()
	rr.close() // idempotent
	if err := <-got; !errors.Is(err, errRingClosed) {
		t.Fatalf("reader on a closed ring: %v, want errRingClosed", err)
	}
	if rr.request(ringRequest{rs: &ringSock{result: make(chan error, 1)}}) {
		t.Fatal("a closed ring took a request")
	}
}
