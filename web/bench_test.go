package web

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"taskstream/progress/progresstest"
)

// fanoutCounter counts the benchmark's messages each socket received.
type fanoutCounter struct {
	perSocket []atomic.Int64
	wake      chan struct{}
}

func (c *fanoutCounter) add(i int) {
	c.perSocket[i].Add(1)
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// slowest is the count of the socket that received the fewest.
func (c *fanoutCounter) slowest() int64 {
	low := c.perSocket[0].Load()
	for i := range c.perSocket {
		low = min(low, c.perSocket[i].Load())
	}
	return low
}

// waitFor blocks until every socket received at least n messages.
func (c *fanoutCounter) waitFor(b *testing.B, n int64) {
	for c.slowest() < n {
		select {
		case <-c.wake:
		case <-time.After(10 * time.Second):
			b.Fatalf("stuck: the slowest socket has %d of %d messages", c.slowest(), n)
		}
	}
}

// BenchmarkSocketFanout publishes with Log.Publish to a chat group that N
// real sockets (httptest server, gorilla clients, loopback) watch, and
// counts frames as the clients read them: the whole path, Redis pub/sub,
// hub, send queues, write pumps, TCP and the client's read. The clients
// share the 2 cores with the server and Redis.
//
// serial: the next event is published once every socket has the previous
// one, so ns/op is the end-to-end time of one message to N sockets.
// window=32: the next event is published once every socket has the one
// 32 before it, so ns/delivery is the cost of one frame to one socket with
// the pipeline full (no socket ever lags by more than 32 frames, far from
// the send queue's 256, so none is dropped as too slow).
func BenchmarkSocketFanout(b *testing.B) {
	const n = 100
	srv := progresstest.Real(b)
	e := newEnv(b, srv, withoutWorker())
	const group = "chat:bench"
	counter := &fanoutCounter{perSocket: make([]atomic.Int64, n), wake: make(chan struct{}, 1)}
	var readers sync.WaitGroup
	clients := make([]*wsClient, 0, n)
	url := "ws" + strings.TrimPrefix(e.http.URL, "http") + "/ws"
	// One browser (one guest) for every socket: a room with N distinct
	// users would add N join events to the setup. The guest
	// session comes from an ordinary request first.
	jar, _ := cookiejar.New(nil)
	if res, err := (&http.Client{Jar: jar}).Get(e.http.URL + "/api/me"); err == nil {
		res.Body.Close()
	}
	for i := range n {
		c := dialWSJar(b, jar, url)
		clients = append(clients, c)
		c.send(map[string]any{"op": "subscribe", "group": group})
		if f := c.read(); f.Type != "subscribed" {
			b.Fatalf("got %+v, want subscribed", f)
		}
		_ = c.conn.SetReadDeadline(time.Time{}) // c.read left a 10 s deadline
		readers.Add(1)
		go func() {
			defer readers.Done()
			var buf bytes.Buffer
			for {
				_, r, err := c.conn.NextReader()
				if err != nil {
					return
				}
				buf.Reset()
				if _, err := buf.ReadFrom(r); err != nil {
					return
				}
				// Count the benchmark's messages only, not the room's
				// presence events (join) or their replay.
				if bytes.Contains(buf.Bytes(), []byte(`"event":"message"`)) {
					counter.add(i)
				}
			}
		}()
	}
	b.Cleanup(func() {
		for _, c := range clients {
			_ = c.conn.Close()
		}
		readers.Wait()
	})
	data := json.RawMessage(`{"id":"0123456789abcdef","user":"guest","text":"` + strings.Repeat("x", 100) + `"}`)
	ctx := context.Background()
	for _, window := range []int{1, 32} {
		name := fmt.Sprintf("window=%d", window)
		if window == 1 {
			name = "serial"
		}
		b.Run(fmt.Sprintf("N=%d/%s", n, name), func(b *testing.B) {
			base := counter.slowest() // every socket has had every earlier message
			b.ResetTimer()
			for i := range b.N {
				if i >= window {
					counter.waitFor(b, base+int64(i-window+1))
				}
				if _, err := e.log.Publish(ctx, group, "message", data); err != nil {
					b.Fatal(err)
				}
			}
			counter.waitFor(b, base+int64(b.N))
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
		})
	}
}
