package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"taskstream/client"
	"taskstream/cmd/internal/latency"
)

// socket is one socket subscribed to the group. Its fields belong to its
// reader goroutine until fleet.Close has returned.
type socket struct {
	conn     *client.Conn
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
	clients   []*socket
	want      int // live events each client expects
	delivered atomic.Int64
	remaining atomic.Int64  // clients neither complete nor stopped
	complete  chan struct{} // closed when remaining reaches 0
	readers   sync.WaitGroup
	closeOnce sync.Once
}

// dialFleet opens n sockets, at most conc at a time, subscribes each to
// group and starts its reader as soon as the server confirmed. Socket i
// belongs to users[i%len(users)]: one client (one session) per simulated
// user.
func dialFleet(ctx context.Context, group string, n, conc, want int, users []*client.Client) (*fleet, error) {
	f := &fleet{clients: make([]*socket, n), want: want, complete: make(chan struct{})}
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
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := dialOne(ctx, users[i%len(users)], group)
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

func dialOne(ctx context.Context, user *client.Client, group string) (*socket, error) {
	conn, err := user.Dial(ctx)
	if err != nil {
		return nil, err
	}
	_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	sub, err := conn.Join(group, client.Position{})
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	_ = conn.SetReadDeadline(time.Time{})
	return &socket{conn: conn, base: sub.LastSeq}, nil
}

// read records every live event until the socket ends.
func (f *fleet) read(c *socket) {
	defer f.finish(c)
	for {
		frame, err := c.conn.ReadRaw()
		if err != nil {
			if len(c.lat) < f.want {
				c.err = err
			}
			return
		}
		now := time.Now()
		name, seq, ts, ok := eventStamp(frame)
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
func (f *fleet) finish(c *socket) {
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
	var ce *client.CloseError
	if errors.As(err, &ce) {
		return fmt.Sprintf("close %d", ce.Code)
	}
	return "connection lost"
}
