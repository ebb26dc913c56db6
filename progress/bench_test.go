package progress

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// Benchmarks of the event path: Publish (the Lua append + PUBLISH),
// encoding an event frame once per process, decoding the pub/sub payload,
// and the hub's fan-out to in-process sinks. The figures and the commands
// are in BENCHMARKS.md at the repository root.

// benchProgressData is a typical progress payload.
var benchProgressData = Progress{Done: 37, Total: 100, Percent: 37, Stage: "steps", Rate: 9.8, ETA: 6.4}

func benchLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// BenchmarkPublish measures Log.Publish of a progress event: one serial
// publisher (the latency of one append, a Redis round trip plus the
// script), and publishers on every P (throughput of one Redis).
func BenchmarkPublish(b *testing.B) {
	servers := []struct {
		name  string
		start func(testing.TB) *progresstest.Server
	}{
		{"redis-server", progresstest.Real},
		{"miniredis", progresstest.Embedded},
	}
	for _, s := range servers {
		b.Run(s.name, func(b *testing.B) {
			srv := s.start(b)
			l := NewLog(srv.Client(b), LogConfig{})
			ctx := context.Background()
			b.Run("serial", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := l.Publish(ctx, "job:bench-serial", "progress", benchProgressData); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("parallel", func(b *testing.B) {
				b.ReportAllocs()
				var n atomic.Int64
				b.RunParallel(func(pb *testing.PB) {
					// One group per goroutine, as with one job per worker slot.
					group := "job:bench-par-" + strconv.FormatInt(n.Add(1), 10)
					for pb.Next() {
						if _, err := l.Publish(ctx, group, "progress", benchProgressData); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		})
	}
}

// BenchmarkEventFrame measures encoding an event as the protocol's frame,
// which the hub does once per event per process (not per socket).
func BenchmarkEventFrame(b *testing.B) {
	data, _ := json.Marshal(benchProgressData)
	ts := time.Now()
	b.ReportAllocs()
	var size int
	for b.Loop() {
		ev := &Event{Group: "job:0123456789abcdef01234567", Seq: 42, Epoch: "9f0c1234abcd5678", Name: "progress", Data: data, Time: ts}
		size = len(ev.Frame())
	}
	b.SetBytes(int64(size))
}

// BenchmarkDecodeMessage measures decoding a pub/sub payload into an
// Event, which the hub does once per event per process.
func BenchmarkDecodeMessage(b *testing.B) {
	data, _ := json.Marshal(benchProgressData)
	payload := benchPayload(42, "9f0c1234abcd5678", string(data))
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeMessage("job:0123456789abcdef01234567", payload); err != nil {
			b.Fatal(err)
		}
	}
}

// benchPayload is the pub/sub payload the append script publishes.
func benchPayload(seq int64, epoch, data string) string {
	return strconv.FormatInt(seq, 10) + "\n" + epoch + "\nprogress\n" + time.Now().UTC().Format(time.RFC3339Nano) + "\n" + data
}

// benchCounter counts what a set of sinks received.
type benchCounter struct {
	synced    atomic.Int64
	delivered atomic.Int64
	k         int64
	progress  chan struct{} // a signal each time an event reached all k sinks
}

// benchSink is a Sink that only counts: what remains is the hub's cost.
type benchSink struct{ c *benchCounter }

func (s benchSink) Synced(SyncInfo) bool { s.c.synced.Add(1); return true }
func (s benchSink) Lagged()              { panic("benchmark sink lagged") }
func (s benchSink) Failed(err error)     { panic("benchmark subscription failed: " + err.Error()) }
func (s benchSink) Send(*Event) bool {
	if s.c.delivered.Add(1)%s.c.k == 0 {
		select {
		case s.c.progress <- struct{}{}:
		default:
		}
	}
	return true
}

// benchSubscribe subscribes k counting sinks to group and waits until
// each has had its initial SyncInfo.
func benchSubscribe(b *testing.B, h *Hub, group string, k int) (*benchCounter, func()) {
	c := &benchCounter{k: int64(k), progress: make(chan struct{}, 1)}
	subs := make([]*Subscription, k)
	for i := range subs {
		s, err := h.Subscribe(group, 0, "", benchSink{c})
		if err != nil {
			b.Fatal(err)
		}
		subs[i] = s
	}
	deadline := time.Now().Add(30 * time.Second)
	for c.synced.Load() < int64(k) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d sinks synced", c.synced.Load(), k)
		}
		time.Sleep(time.Millisecond)
	}
	return c, func() {
		for _, s := range subs {
			s.Close()
		}
	}
}

// BenchmarkHubFanout delivers events to K in-process sinks of one group.
//
// redis-server: end to end, Log.Publish → Redis pub/sub → the hub's
// receive loop → K sinks, with up to 32 events in flight (a publisher
// faster than the hub would otherwise grow Redis's output buffer without
// bound). ns/op is per published event; ns/delivery divides by K.
//
// dispatch: the hub alone, fed the pub/sub message directly (decode,
// group lookup, fan-out under the group's lock), on one goroutine as the
// receive loop runs it.
func BenchmarkHubFanout(b *testing.B) {
	const window = 32
	ks := []int{1, 100, 1000}
	b.Run("redis-server", func(b *testing.B) {
		srv := progresstest.Real(b)
		rdb := srv.Client(b)
		l := NewLog(rdb, LogConfig{})
		h := NewHub(rdb, l, HubConfig{Logger: benchLogger()})
		b.Cleanup(func() { _ = h.Shutdown(context.Background()) })
		ctx := context.Background()
		data := json.RawMessage(`{"done":37,"total":100,"percent":37,"stage":"steps","rate":9.8,"eta_s":6.4}`)
		for _, k := range ks {
			b.Run(fmt.Sprintf("K=%d", k), func(b *testing.B) {
				group := fmt.Sprintf("chat:fanout-%d-%d", k, b.N)
				c, closeAll := benchSubscribe(b, h, group, k)
				defer closeAll()
				want := func(n int) int64 { return int64(n) * int64(k) }
				b.ResetTimer()
				for i := range b.N {
					for want(i-window) > c.delivered.Load() {
						select {
						case <-c.progress:
						case <-time.After(10 * time.Second):
							b.Fatalf("stuck: %d of %d deliveries", c.delivered.Load(), want(i-window))
						}
					}
					if _, err := l.Publish(ctx, group, "progress", data); err != nil {
						b.Fatal(err)
					}
				}
				for c.delivered.Load() < want(b.N) {
					select {
					case <-c.progress:
					case <-time.After(10 * time.Second):
						b.Fatalf("stuck: %d of %d deliveries", c.delivered.Load(), want(b.N))
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(want(b.N)), "ns/delivery")
			})
		}
	})
	b.Run("dispatch", func(b *testing.B) {
		srv := progresstest.Embedded(b) // only subscribing touches Redis
		rdb := srv.Client(b)
		l := NewLog(rdb, LogConfig{})
		h := NewHub(rdb, l, HubConfig{Logger: benchLogger()})
		b.Cleanup(func() { _ = h.Shutdown(context.Background()) })
		data := `{"done":37,"total":100,"percent":37,"stage":"steps","rate":9.8,"eta_s":6.4}`
		for _, k := range ks {
			b.Run(fmt.Sprintf("K=%d", k), func(b *testing.B) {
				group := fmt.Sprintf("chat:dispatch-%d-%d", k, b.N)
				// One real event gives the group its epoch and the sinks seq 1;
				// the dispatched ones follow it, so no sink sees a gap.
				first, err := l.Publish(context.Background(), group, "progress", json.RawMessage(data))
				if err != nil {
					b.Fatal(err)
				}
				c, closeAll := benchSubscribe(b, h, group, k)
				defer closeAll()
				deadline := time.Now().Add(10 * time.Second)
				for c.delivered.Load() < int64(k) { // the replay of the first event
					if time.Now().After(deadline) {
						b.Fatal("replay did not arrive")
					}
					time.Sleep(time.Millisecond)
				}
				msgs := make([]*redis.Message, b.N)
				for i := range msgs {
					msgs[i] = &redis.Message{Channel: l.Channel(group), Payload: benchPayload(first.Seq+1+int64(i), first.Epoch, data)}
				}
				base := c.delivered.Load()
				b.ReportAllocs()
				b.ResetTimer()
				for _, m := range msgs {
					h.onMessage(m)
				}
				b.StopTimer()
				if got := c.delivered.Load() - base; got != int64(b.N)*int64(k) {
					b.Fatalf("delivered %d, want %d", got, int64(b.N)*int64(k))
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(int64(b.N)*int64(k)), "ns/delivery")
			})
		}
	})
}

// newGroupSink signals its op's index once its first SyncInfo arrived.
type newGroupSink struct {
	i    int
	done chan<- int
}

func (s newGroupSink) Synced(SyncInfo) bool { s.done <- s.i; return true }
func (newGroupSink) Send(*Event) bool       { return true }
func (newGroupSink) Lagged()                { panic("benchmark sink lagged") }
func (newGroupSink) Failed(err error)       { panic("benchmark subscription failed: " + err.Error()) }

// BenchmarkHubNewGroups subscribes to new groups, each with a one-event
// history, W of them in flight (1: one after the other, where no read
// can share a round trip), as a socket watching each submitted
// job does (jobload): one op is a Subscribe, the group's SUBSCRIBE and
// read of its log, the initial SyncInfo, and its Close. alone reads each
// group's log in its own round trip (HubConfig.ReadBatch 1), batched
// lets the reads queued meanwhile share one. cpu-ns/op is this process's
// CPU (hub and client, not redis-server) per op, reads/op the round trips
// that read a group's log, redis-reads/op the reads Redis made from all
// its sockets (INFO total_reads_processed).
func BenchmarkHubNewGroups(b *testing.B) {
	srv := progresstest.Real(b)
	for _, bc := range []struct {
		name      string
		window    int
		readBatch int
	}{{"W=1/alone", 1, 1}, {"W=1/batched", 1, 0}, {"W=32/alone", 32, 1}, {"W=32/batched", 32, 0}} {
		window := bc.window
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			pub := NewLog(srv.Client(b), LogConfig{})
			rdb := srv.Client(b)
			counted := &logReads{l: pub}
			rdb.AddHook(counted)
			h := NewHub(srv.Client(b), NewLog(rdb, LogConfig{}), HubConfig{ReadBatch: bc.readBatch, Logger: benchLogger()})
			defer func() { _ = h.Shutdown(ctx) }()
			groups := make([]string, b.N)
			posts := make([]Post, 0, 1000)
			for i := range groups {
				groups[i] = fmt.Sprintf("job:new-%d-%d-%d-%d", window, bc.readBatch, b.N, i)
				posts = append(posts, Post{Group: groups[i], Name: "submitted", Data: benchProgressData})
				if len(posts) == cap(posts) || i == len(groups)-1 {
					_, errs := pub.PublishMany(ctx, posts)
					for _, err := range errs {
						if err != nil {
							b.Fatal(err)
						}
					}
					posts = posts[:0]
				}
			}
			done := make(chan int, window)
			subs := make([]*Subscription, b.N)
			wait := func() {
				select {
				case j := <-done:
					subs[j].Close()
				case <-time.After(10 * time.Second):
					b.Fatal("no SyncInfo within 10s")
				}
			}
			redisReads := func() int64 {
				info, err := srv.Client(b).Info(ctx, "stats").Result()
				if err != nil {
					b.Fatal(err)
				}
				_, rest, _ := strings.Cut(info, "total_reads_processed:")
				n, _ := strconv.ParseInt(strings.TrimSpace(strings.SplitN(rest, "\n", 2)[0]), 10, 64)
				return n
			}
			trips0, reads0 := len(counted.Trips()), redisReads()
			cpu0, cpuKnown := processCPU()
			b.ResetTimer()
			for i := range b.N {
				if i >= window {
					wait()
				}
				s, err := h.Subscribe(groups[i], 0, "", newGroupSink{i, done})
				if err != nil {
					b.Fatal(err)
				}
				subs[i] = s
			}
			for range min(window, b.N) {
				wait()
			}
			b.StopTimer()
			n := float64(b.N)
			if cpu, _ := processCPU(); cpuKnown {
				b.ReportMetric(float64(cpu-cpu0)/n, "cpu-ns/op")
			}
			b.ReportMetric(float64(len(counted.Trips())-trips0)/n, "reads/op")
			b.ReportMetric(float64(redisReads()-reads0-1)/n, "redis-reads/op")
		})
	}
}
