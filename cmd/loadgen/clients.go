package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/cmd/internal/latency"
	"taskstream/wire"
)

// client is one socket subscribed to the group. Its fields belong to its
// reader goroutine until fleet.Close has returned.
type client struct {
	conn     *websocket.Conn
	base     int64           // the group's last seq when it subscribed: older events are history
	lastSeq  int64           // seq of the last live event
	gaps     int             // live events that did not follow the previous one
	lat      []time.Duration // receive time − event ts, per live event
	lastRecv time.Time
	other    int   // other live events (presence: join, leave, presence)
	err      error // why reading ended early, if it did
	done     sync.Once
}

// fleet is every client of one run.
type fleet struct {
	clients   []*client
	want      int // live events each client expects
	delivered atomic.Int64
	remaining atomic.Int64  // clients neither complete nor stopped
	complete  chan struct{} // closed when remaining reaches 0
	readers   sync.WaitGroup
	closeOnce sync.Once
}

// dialFleet opens n sockets on wsURL, at most conc at a time, subscribes
// each to group and starts its reader as soon as the server confirmed.
// Socket i uses jars[i%len(jars)]: one jar per simulated user.
func dialFleet(ctx context.Context, wsURL, group string, n, conc, want int, jars []http.CookieJar) (*fleet, error) {
	f := &fleet{clients: make([]*client, n), want: want, complete: make(chan struct{})}
	f.remaining.Store(int64(n))
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		d := websocket.Dialer{Jar: jars[i%len(jars)], HandshakeTimeout: 10 * time.Second, ReadBufferSize: 2048, WriteBufferSize: 1024}
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := dialOne(ctx, d, wsURL, group)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("socket %d: %w", i, err)
				}
				return
			}
			f.clients[i] = c
			// Read from now on, as a browser does: the room's presence
			// events arrive while the other sockets are still joining.
			f.readers.Add(1)
			go func() { defer f.readers.Done(); f.read(c) }()
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		for _, c := range f.clients {
			if c != nil {
				_ = c.conn.Close()
			}
		}
		f.readers.Wait()
		return nil, firstErr
	}
	return f, nil
}

func dialOne(ctx context.Context, d websocket.Dialer, wsURL, group string) (*client, error) {
	conn, _, err := d.DialContext(ctx, wsURL, nil)
	if err != nil {
		return nil, err
	}
	c := &client{conn: conn}
	if err := conn.WriteJSON(wire.ClientFrame{Op: wire.OpSubscribe, Group: group, Ref: json.RawMessage(`"1"`)}); err != nil {
		_ = conn.Close()
		return nil, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	for {
		var fr wire.ServerFrame
		if err := conn.ReadJSON(&fr); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("waiting for subscribed: %w", err)
		}
		switch fr.Type {
		case wire.TypeSubscribed:
			c.base = fr.LastSeq
			_ = conn.SetReadDeadline(time.Time{})
			return c, nil
		case wire.TypeError:
			_ = conn.Close()
			return nil, fmt.Errorf("subscribe refused: %s: %s", fr.Code, fr.Message)
		}
	}
}

// read records every live event until the socket ends.
func (f *fleet) read(c *client) {
	defer f.finish(c)
	var buf bytes.Buffer
	for {
		_, r, err := c.conn.NextReader()
		if err != nil {
			if len(c.lat) < f.want {
				c.err = err
			}
			return
		}
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			c.err = err
			return
		}
		now := time.Now()
		name, seq, ts, ok := eventStamp(buf.Bytes())
		if !ok || seq <= c.base {
			continue // a reply, or history from before this run
		}
		if name != "message" {
			c.other++ // presence traffic of the room, not the publisher's
			c.lastSeq = seq
			continue
		}
		if c.lastSeq != 0 && seq != c.lastSeq+1 {
			c.gaps++
		}
		c.lastSeq, c.lastRecv = seq, now
		c.lat = append(c.lat, now.Sub(ts))
		f.delivered.Add(1)
		if len(c.lat) == f.want {
			f.finish(c)
		}
	}
}

// finish marks c complete (or stopped) once.
func (f *fleet) finish(c *client) {
	c.done.Do(func() {
		if f.remaining.Add(-1) == 0 {
			close(f.complete)
		}
	})
}

// wait returns when every client has every event or has stopped, when
// the drain time has passed, or when ctx ends.
func (f *fleet) wait(ctx context.Context, drain time.Duration) {
	t := time.NewTimer(drain)
	defer t.Stop()
	select {
	case <-f.complete:
	case <-t.C:
	case <-ctx.Done():
	}
}

// Close closes every socket and waits for the readers.
func (f *fleet) Close() {
	f.closeOnce.Do(func() {
		for _, c := range f.clients {
			_ = c.conn.Close()
		}
		f.readers.Wait()
	})
}

// Outcome is what the fleet saw, once closed.
type Outcome struct {
	Delivered int64
	Expected  int64
	Complete  int            // clients that got every event
	Dropped   map[string]int // clients whose socket ended early, by reason
	Gaps      int
	Other     int // live events other than the publisher's, summed over sockets
	LastRecv  time.Time
	Latency   latency.Summary
}

// outcome summarizes the fleet; call it after Close.
func (f *fleet) outcome() Outcome {
	o := Outcome{Expected: int64(f.want) * int64(len(f.clients)), Dropped: map[string]int{}}
	all := make([]time.Duration, 0, f.delivered.Load())
	for _, c := range f.clients {
		o.Delivered += int64(len(c.lat))
		o.Gaps += c.gaps
		o.Other += c.other
		all = append(all, c.lat...)
		if len(c.lat) >= f.want {
			o.Complete++
		} else if c.err != nil {
			o.Dropped[closeReason(c.err)]++
		}
		if c.lastRecv.After(o.LastRecv) {
			o.LastRecv = c.lastRecv
		}
	}
	o.Latency = latency.Summarize(all)
	return o
}

func closeReason(err error) string {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return fmt.Sprintf("close %d", ce.Code)
	}
	return "connection lost"
}

// fetchSession makes one request so a server that hands out guest
// sessions sets its cookie in jar; every client then shares it.
func fetchSession(ctx context.Context, base string, jar http.CookieJar) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/me", nil)
	if err != nil {
		return
	}
	res, err := (&http.Client{Jar: jar, Timeout: 10 * time.Second}).Do(req)
	if err == nil {
		var discard json.RawMessage
		_ = json.NewDecoder(res.Body).Decode(&discard)
		res.Body.Close()
	}
}
