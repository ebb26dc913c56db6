package web

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/jobs"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// Sockets whose readers stall while a fast job and a busy chat room flow
// (as under CPU starvation, or on a phone's bad network): only the
// stalled ones on the chat room are closed with 1013; the stalled job
// watchers stay open and, once they read again, get the job's stream
// conflated: every state, log and result event, increasing seqs, the
// latest progress, and skipped counts that add up to the events they
// stand for. The sockets that keep reading get every event of both
// groups and nothing skipped.
func TestStalledReadersOnlyChatClosed(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		// Pings far apart: a stalled client answers none, and the test
		// decides when it reads again, not the server's keep-alive.
		e := newEnv(t, srv, withoutWorker(), withListener(smallSendBuffers),
			withWebConfig(Config{SendQueue: 64, WriteTimeout: 5 * time.Minute, PingInterval: 5 * time.Minute}))
		job := jobs.Group(e.submit("steps", map[string]any{"steps": 1}))
		room := wire.ChatGroup("stall").String()

		subscribe := func(c *wsClient, group string) {
			t.Helper()
			c.send(map[string]any{"op": wire.OpSubscribe, "group": group})
			c.readUntil(func(f frame) bool { return f.Type == wire.TypeSubscribed && f.Group == group })
		}
		stalledChat, stalledJob, stalledBoth := e.dialSmallBuffer(), e.dialSmallBuffer(), e.dialSmallBuffer()
		subscribe(stalledChat, room)
		subscribe(stalledJob, job)
		subscribe(stalledBoth, room)
		subscribe(stalledBoth, job)
		readers := []*wsClient{e.dial(), e.dial()}
		for _, c := range readers {
			subscribe(c, room)
			subscribe(c, job)
		}

		// The readers check each group's seqs run on with no gap and nothing
		// skipped, and report how far they got.
		var mu sync.Mutex
		reached := make([]map[string]int64, len(readers))
		var wg sync.WaitGroup
		errs := make(chan error, len(readers))
		done := make(chan struct{})
		for i, c := range readers {
			reached[i] = map[string]int64{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					f, err := c.tryRead(30 * time.Second)
					if err != nil {
						select {
						case <-done:
						default:
							errs <- fmt.Errorf("reader %d: %v", i, err)
						}
						return
					}
					if f.Type != wire.TypeEvent {
						continue
					}
					mu.Lock()
					last := reached[i][f.Group]
					reached[i][f.Group] = f.Seq
					mu.Unlock()
					if (last > 0 && f.Seq != last+1) || f.Skipped != 0 {
						errs <- fmt.Errorf("reader %d on %s: seq %d (skipped %d) after %d", i, f.Group, f.Seq, f.Skipped, last)
						return
					}
				}
			}()
		}
		defer func() {
			close(done)
			for _, c := range readers {
				_ = c.conn.Close()
			}
			wg.Wait()
		}()

		// The fast job and the chat traffic, in batches the readers keep up
		// with (flow control by the test, not by timing), each event large
		// enough that the stalled sockets fill their kernel buffers and
		// their queues.
		ctx := context.Background()
		pad := strings.Repeat("x", 2<<10)
		published := map[string]int64{}
		lifecycle := map[int64]string{} // the job's non-progress events by seq
		var lastProgress int64
		publish := func(group, name string, data any) {
			t.Helper()
			ev, err := e.log.Publish(ctx, group, name, data)
			if err != nil {
				t.Fatal(err)
			}
			published[group] = ev.Seq
			if group == job {
				if name == wire.EventProgress {
					lastProgress = ev.Seq
				} else {
					lifecycle[ev.Seq] = name
				}
			}
		}
		publish(job, wire.EventState, map[string]any{"state": wire.StateActive, "attempt": 1})
		const events, batch = 400, 20 // 4 times what fills a stalled socket's buffers and queue
		for i := 1; i <= events; i++ {
			if i%50 == 0 {
				publish(job, wire.EventLog, map[string]any{"level": "info", "message": fmt.Sprint("step ", i)})
			}
			publish(job, wire.EventProgress, map[string]any{"done": i, "total": events, "message": pad})
			publish(room, wire.EventMessage, map[string]any{"id": fmt.Sprint(i), "text": pad})
			if i%batch == 0 || i == events {
				eventually(t, "the reading sockets to keep up", func() bool {
					mu.Lock()
					defer mu.Unlock()
					for r := range reached {
						for g, seq := range published {
							if reached[r][g] < seq && len(errs) == 0 {
								return false
							}
						}
					}
					return true
				})
			}
		}
		publish(job, wire.EventResult, map[string]any{"result": "done"})
		publish(job, wire.EventState, map[string]any{"state": wire.StateCompleted})

		// The stalled sockets on the chat room: a gap-free prefix, then 1013.
		for name, c := range map[string]*wsClient{"stalled on chat": stalledChat, "stalled on chat and job": stalledBoth} {
			last := map[string]int64{}
			for {
				f, err := c.tryRead(30 * time.Second)
				if err != nil {
					if code := closeCodeOf(err); code != wire.CloseTryAgain {
						t.Fatalf("%s: ended with %v (code %d), want close 1013", name, err, code)
					}
					break
				}
				if f.Type == wire.TypeEvent && f.Group == room {
					if l := last[f.Group]; l > 0 && f.Seq != l+1 {
						t.Fatalf("%s: seq %d after %d on %s", name, f.Seq, l, f.Group)
					}
					last[f.Group] = f.Seq
				}
			}
			if last[room] >= published[room] {
				t.Fatalf("%s received the whole room; the test did not stall it", name)
			}
		}

		// The stalled job watcher, reading again: the conflated stream.
		var got, skipped, frames int64
		var lastSeq int64
		seen := map[int64]bool{}
		for lastSeq < published[job] {
			f, err := stalledJob.tryRead(30 * time.Second)
			if err != nil {
				t.Fatalf("stalled job watcher: %v after seq %d", err, lastSeq)
			}
			if f.Type != wire.TypeEvent {
				continue
			}
			if f.Seq <= lastSeq {
				t.Fatalf("stalled job watcher: seq %d after %d", f.Seq, lastSeq)
			}
			if f.Skipped > 0 && f.Event != wire.EventProgress {
				t.Fatalf("stalled job watcher: %s event %d says skipped %d; only progress replaces others", f.Event, f.Seq, f.Skipped)
			}
			lastSeq = f.Seq
			seen[f.Seq] = true
			got++
			frames++
			skipped += int64(f.Skipped)
		}
		for seq, name := range lifecycle {
			if !seen[seq] {
				t.Errorf("stalled job watcher missed the %s event %d", name, seq)
			}
		}
		if !seen[lastProgress] {
			t.Errorf("stalled job watcher missed the latest progress %d", lastProgress)
		}
		// From seq 2 on (seq 1, the job's pending state, came before the
		// stall): every seq is received or counted as skipped.
		if seen[1] {
			got--
		}
		if got+skipped != published[job]-1 {
			t.Errorf("stalled job watcher: %d frames + %d skipped = %d, want the %d events after seq 1", got, skipped, got+skipped, published[job]-1)
		}
		if skipped == 0 {
			t.Fatal("nothing was conflated; the test did not stall the job watcher")
		}
		t.Logf("stalled job watcher: %d frames for %d events (%d skipped)", frames, published[job]-1, skipped)
		// It is still open: it answers a ping.
		stalledJob.send(map[string]any{"op": wire.OpPing, "ref": "p"})
		stalledJob.readUntil(func(f frame) bool { return f.Type == wire.TypePong })

		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		eventually(t, "the two 1013 closes counted", func() bool {
			s := e.scrape()
			return s.value(t, "taskstream_send_queue_overflows_total") == 2 &&
				s.value(t, "taskstream_socket_closes_total", "code", "1013") == 2
		})
		if n := e.web.ConnCount(); n != 1+len(readers) {
			t.Errorf("%d sockets open, want the stalled job watcher and the %d readers", n, len(readers))
		}
	})
}

// smallSendBuffers gives every connection the server accepts a small
// kernel send buffer (no autotuning up to megabytes), so a client that
// stops reading stalls the server's writer after a few dozen KiB: the
// queue fills after a few hundred events rather than thousands.
func smallSendBuffers(l net.Listener) net.Listener { return smallBufListener{l} }

type smallBufListener struct{ net.Listener }

func (l smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(32 << 10)
	}
	return c, err
}

// dialSmallBuffer opens a socket as the env's browser whose TCP receive
// buffer is small (set before connecting, so the window stays small): a
// client that stops reading holds little in the kernel, and its server
// queue fills after a few hundred KiB instead of megabytes.
func (e *testEnv) dialSmallBuffer() *wsClient {
	e.t.Helper()
	d := *websocket.DefaultDialer
	d.Jar = e.client.Jar
	nd := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = setRecvBuffer(fd, 16<<10) })
		return errors.Join(err, serr)
	}}
	d.NetDialContext = nd.DialContext
	url := "ws" + strings.TrimPrefix(e.http.URL, "http") + "/ws"
	conn, _, err := d.Dial(url, nil)
	if err != nil {
		e.t.Fatalf("dial %s: %v", url, err)
	}
	e.t.Cleanup(func() { _ = conn.Close() })
	return &wsClient{t: e.t, conn: conn}
}
