package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// More sockets than the ring's submission queue (recvRingEntries) run
// out of buffers in one batch: re-arming them fills the queue inside
// Reap, so queue enters the ring (to submit only) from Reap's callback.
// Every socket must still get each message once, in order, then the
// server's close.
func TestRecvRingRearmsMoreThanTheQueue(t *testing.T) {
	if why := ringExpected(); why != "" {
		t.Skip(why)
	}
	rr, err := newRecvRing(2)
	if err != nil {
		t.Fatal(err)
	}
	defer rr.close()
	const socks, msgs = 2 * recvRingEntries, 40
	start := make(chan struct{})
	srv := burstServer(t, msgs, msgs, start, make(chan string, socks))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, socks)
	for i := range socks {
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
			case next != msgs:
				errs <- fmt.Errorf("%s: %d messages, want %d", name, next, msgs)
			}
		}()
	}
	close(start)
	wg.Wait()
	rr.close()
	t.Logf("receives armed again: %d", rr.rearms)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
