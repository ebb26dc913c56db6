package web

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"taskstream/progress/progresstest"
)

// BenchmarkPublishFanout is issue 10's fan-out scenario at benchmark
// scale: 16 publishers POST /api/publish (admin token) into one group
// that N real sockets watch (one guest's user group: no presence and no
// join limits), closed loop (a publisher sends its next event once every
// socket has all but the last 16 events), on real Redis, clients and
// server sharing the cores. ns/delivery is the cost of one frame to one
// socket. proto is what the sockets offer: v1 (nothing) or taskstream.v2
// (a server without it answers v1).
func BenchmarkPublishFanout(b *testing.B) {
	for _, proto := range []string{"v1", "taskstream.v2"} {
		b.Run("proto="+proto, func(b *testing.B) { benchPublishFanout(b, 1000, proto) })
	}
}

func benchPublishFanout(b *testing.B, n int, proto string) {
	const publishers = 16
	srv := progresstest.Real(b)
	e := newEnv(b, srv, withoutWorker())
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	group := "user:" + e.me(browser)
	url := "ws" + strings.TrimPrefix(e.http.URL, "http") + "/ws"
	counter := &fanoutCounter{perSocket: make([]atomic.Int64, n), wake: make(chan struct{}, 1)}
	var readers sync.WaitGroup
	clients := make([]*wsClient, 0, n)
	var header []string
	if proto != "v1" {
		header = []string{"Sec-WebSocket-Protocol", proto}
	}
	for i := range n {
		c := dialWSJar(b, jar, url, header...)
		clients = append(clients, c)
		c.send(map[string]any{"op": "subscribe", "group": group})
		if f := c.read(); f.Type != "subscribed" {
			b.Fatalf("got %+v, want subscribed", f)
		}
		_ = c.conn.SetReadDeadline(time.Time{})
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
				for range bytes.Count(buf.Bytes(), []byte(`"event":"bench"`)) {
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
	body := []byte(`{"group":"` + group + `","event":"bench","data":{"text":"` + strings.Repeat("x", 100) + `"}}`)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: publishers}}
	var published atomic.Int64
	var failed atomic.Value
	b.ResetTimer()
	var pubs sync.WaitGroup
	for range publishers {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for {
				i := published.Add(1)
				if i > int64(b.N) {
					return
				}
				if i > publishers {
					if err := counter.await(i - publishers); err != nil {
						failed.Store(err)
						return
					}
				}
				req, _ := http.NewRequest(http.MethodPost, e.http.URL+"/api/publish", bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+testAdminToken)
				req.Header.Set("Content-Type", "application/json")
				res, err := hc.Do(req)
				if err == nil {
					if res.StatusCode != http.StatusOK {
						err = fmt.Errorf("publish: HTTP %d", res.StatusCode)
					}
					res.Body.Close()
				}
				if err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	pubs.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	counter.waitFor(b, int64(b.N))
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "deliveries/s")
}

// await blocks until every socket received at least n messages, for
// goroutines other than the benchmark's (which may not call Fatal): the
// wake-up is shared, so it rechecks every 10 ms.
func (c *fanoutCounter) await(n int64) error {
	deadline := time.Now().Add(10 * time.Second)
	for c.slowest() < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("stuck: the slowest socket has %d of %d messages", c.slowest(), n)
		}
		select {
		case <-c.wake:
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// BenchmarkIdleSockets opens N sockets subscribed to one group and
// reports, per socket, the Go heap and stacks in use and the goroutines,
// once they are idle: server and client sides together (the clients are
// gorilla connections in this process with one reader goroutine each,
// the same in every version of the server), so compare versions, not
// absolute figures. b.N is ignored: one measurement per run.
func BenchmarkIdleSockets(b *testing.B) {
	const n = 2000
	srv := progresstest.Real(b)
	e := newEnv(b, srv, withoutWorker())
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	group := "user:" + e.me(browser)
	url := "ws" + strings.TrimPrefix(e.http.URL, "http") + "/ws"
	before := memInUse()
	goroutines := runtime.NumGoroutine()
	var readers sync.WaitGroup
	clients := make([]*wsClient, 0, n)
	for range n {
		c := dialWSJar(b, jar, url, "Sec-WebSocket-Protocol", "taskstream.v2")
		clients = append(clients, c)
		c.send(map[string]any{"op": "subscribe", "group": group})
		if f := c.read(); f.Type != "subscribed" {
			b.Fatalf("got %+v, want subscribed", f)
		}
		_ = c.conn.SetReadDeadline(time.Time{})
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				if _, _, err := c.conn.NextReader(); err != nil {
					return
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
	time.Sleep(100 * time.Millisecond) // let the last writers end
	after := memInUse()
	b.ReportMetric(float64(after-before)/n, "bytes/socket")
	b.ReportMetric(float64(runtime.NumGoroutine()-goroutines)/n, "goroutines/socket")
}

// memInUse is the Go heap and stack memory in use after a GC.
func memInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}
