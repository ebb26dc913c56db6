package web

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/wire"
)

// sendCase is a socket protocol and a way for the flusher to send.
type sendCase struct {
	name, protocol string
	noRing         bool // one write(2) per socket instead of the send ring
}

// sendCases are v1 and v2 sockets each written through the flusher's send
// ring (where the kernel gives one: TestSendRingIsUsed) and with a
// write(2) per socket.
func sendCases() []sendCase {
	var cases []sendCase
	for _, p := range []struct{ name, protocol string }{{"v1", ""}, {"v2", wire.SubprotocolV2}} {
		cases = append(cases, sendCase{p.name + "/ring", p.protocol, false}, sendCase{p.name + "/write", p.protocol, true})
	}
	return cases
}

// directSocket serves one socket whose frames go out through a Server's
// flusher (direct writes), with cfg's timeouts, and pre queued before it
// starts writing (one batch); it hands the server side to the test and
// keeps it open until the test ends.
func directSocket(t *testing.T, cfg Config, protocol string, maxBytes int, pre [][]byte) (*conn, *websocket.Conn) {
	t.Helper()
	s := &Server{cfg: cfg.withDefaults(), flush: newFlusher(2, !cfg.NoSendRing, nil)}
	t.Cleanup(s.flush.close) // after the socket's own cleanup
	return directSocketOn(t, s, protocol, maxBytes, pre)
}

// directSocketOn is directSocket on s, whose flusher the test closes.
func directSocketOn(t *testing.T, s *Server, protocol string, maxBytes int, pre [][]byte) (*conn, *websocket.Conn) {
	t.Helper()
	conns := make(chan *conn, 1)
	done := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, out, v2, err := upgradeSocket(w, r)
		if err != nil {
			return
		}
		c := &conn{s: s, ws: ws, out: out, v2: v2, send: newSendQueue(1<<20, maxBytes), closed: make(chan struct{})}
		for _, f := range pre {
			c.send.push(f)
		}
		c.startWriting()
		conns <- c
		<-done
		c.close(closeNormal, "")
		c.send.writers.Wait()
		_ = ws.Close()
	})
	hs := httptest.NewServer(h)
	d := websocket.Dialer{}
	if protocol != "" {
		d.Subprotocols = []string{protocol}
	}
	ws, _, err := d.Dial("ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(done)
		_ = ws.Close()
		hs.Close()
	})
	return <-conns, ws
}

// readFrames reads frames from ws (split in v2) until n arrived.
func readFrames(t *testing.T, ws *websocket.Conn, n int) []string {
	t.Helper()
	var got []string
	for len(got) < n {
		_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, data, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("read: %v (close code %d) after %d of %d frames", err, closeCodeOf(err), len(got), n)
		}
		for f := range wire.SplitFrames(data) {
			got = append(got, string(f))
		}
	}
	return got
}

func frameN(i, size int) []byte {
	f := fmt.Appendf(nil, `{"type":"pong","ref":%d,"pad":"`, i)
	for len(f) < size-2 {
		f = append(f, 'x')
	}
	return append(f, `"}`...)
}

// Frames queued for a socket with room in its buffer go out from the
// flusher, in order, in v1 and v2, also after a writer goroutine's batch
// (a ping) left a write deadline that has long passed: the runtime
// refuses writes through the poller on such a socket until the deadline
// is moved, which once closed the socket (1006); direct writes do not go
// through the poller.
func TestDirectWritesAfterAnOldDeadline(t *testing.T) {
	for _, tc := range sendCases() {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{WriteTimeout: 20 * time.Millisecond, NoSendRing: tc.noRing}
			c, ws := directSocket(t, cfg, tc.protocol, 1<<20, nil)
			pinged := make(chan struct{}, 1)
			ws.SetPingHandler(func(string) error {
				select {
				case pinged <- struct{}{}:
				default:
				}
				return nil
			})
			c.send.requestPing() // a writer goroutine's batch, with a deadline
			c.enqueue(frameN(0, 64))
			got := readFrames(t, ws, 1)
			<-pinged                         // handled within the read that returned the frame, or before
			time.Sleep(3 * cfg.WriteTimeout) // the ping batch's deadline passes
			const n = 20
			for i := 1; i <= n; i++ {
				if !c.enqueue(frameN(i, 64)) {
					t.Fatalf("frame %d refused", i)
				}
			}
			got = append(got, readFrames(t, ws, n)...)
			for i, f := range got {
				if f != string(frameN(i, 64)) {
					t.Fatalf("frame %d is %.40s, want %.40s", i, f, frameN(i, 64))
				}
			}
		})
	}
}

// A direct batch the kernel takes only in part (the client reads slower
// than the server writes) is finished by a writer goroutine, every frame
// queued meanwhile follows it, and every frame arrives whole and in
// order.
func TestDirectWriteCarriedOnWhenTheBufferIsFull(t *testing.T) {
	for _, tc := range sendCases() {
		t.Run(tc.name, func(t *testing.T) {
			// 8 MiB, more than loopback's buffers hold, in the first
			// direct batch; then more frames while it is being finished.
			const size, n = 4 << 10, 2048
			pre := make([][]byte, n)
			for i := range pre {
				pre[i] = frameN(i, size)
			}
			c, ws := directSocket(t, Config{NoSendRing: tc.noRing}, tc.protocol, 4*size*n, pre)
			for i := n; i < n+n/8; i++ {
				if !c.enqueue(frameN(i, size)) {
					t.Fatalf("frame %d refused", i)
				}
			}
			got := readFrames(t, ws, n+n/8)
			for i, f := range got {
				if f != string(frameN(i, size)) {
					t.Fatalf("frame %d is %.40s, want %.40s", i, f, frameN(i, size))
				}
			}
			c.out.mu.Lock()
			carried := c.out.carried
			c.out.mu.Unlock()
			if carried == 0 {
				t.Error("no direct write was left for a writer goroutine: the buffer never filled")
			}
		})
	}
}

// The flusher runs every queue handed to it exactly once, whoever hands
// them over and however many, and close waits until they ran; once
// closed it takes no more.
func TestFlusherRunsEveryQueueOnce(t *testing.T) {
	for _, tc := range []struct{ goroutines, senders, queues int }{
		{1, 1, 10}, {2, 4, 5000}, {3, 8, 20000},
	} {
		t.Run(fmt.Sprintf("%d goroutines, %d queues", tc.goroutines, tc.queues), func(t *testing.T) {
			f := newFlusher(tc.goroutines, false, nil)
			runs := make([]atomic.Int32, tc.queues)
			qs := make([]*sendQueue, tc.queues)
			for i := range qs {
				q := newSendQueue(1, 1)
				q.direct = func(*flushState) directStep { runs[i].Add(1); return directReleased }
				q.writers.Add(1) // counted as running, as startLocked does
				qs[i] = q
			}
			var wg sync.WaitGroup
			for s := range tc.senders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := s; i < len(qs); i += tc.senders {
						if !f.add(qs[i]) {
							t.Errorf("queue %d refused before close", i)
						}
					}
				}()
			}
			wg.Wait()
			f.close()
			for i := range runs {
				if n := runs[i].Load(); n != 1 {
					t.Fatalf("queue %d ran %d times", i, n)
				}
				qs[i].writers.Wait() // runDirect released it
			}
			if f.add(newSendQueue(1, 1)) {
				t.Error("a closed flusher took a queue")
			}
		})
	}
}

// taskstream.v2 batches framed by the direct write (not gorilla's writer)
// read as gorilla's client reads them: every frame whole and in order,
// messages of at most maxBatchBytes unless one frame alone is longer,
// payload lengths in each of the header's three encodings.
func TestDirectV2Framing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sizes []int
	}{
		{"one small frame", []int{40}},
		{"7-bit, 16-bit and 64-bit lengths", []int{125, 126, 4 << 10, maxBatchBytes - 1, maxBatchBytes + 1, 70 << 10}},
		{"many that fill messages exactly", func() []int {
			// 63 frames of 1039 bytes and their 62 separators are 65,519
			// bytes: a 64th frame would overflow the message.
			s := make([]int, 200)
			for i := range s {
				s[i] = 1039
			}
			return s
		}()},
		{"a frame longer than a message among small ones", []int{30, 30, 3 * maxBatchBytes, 30}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pre := make([][]byte, len(tc.sizes))
			total := 0
			for i, size := range tc.sizes {
				pre[i] = frameN(i, size)
				total += size
			}
			_, ws := directSocket(t, Config{}, wire.SubprotocolV2, 2*total, pre) // through the send ring
			var got []string
			for len(got) < len(pre) {
				_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
				_, data, err := ws.ReadMessage()
				if err != nil {
					t.Fatalf("read: %v (close code %d) after %d of %d frames", err, closeCodeOf(err), len(got), len(pre))
				}
				n := 0
				for f := range wire.SplitFrames(data) {
					got = append(got, string(f))
					n++
				}
				if len(data) > maxBatchBytes && n > 1 {
					t.Errorf("a message of %d bytes (%d frames), more than %d", len(data), n, maxBatchBytes)
				}
			}
			for i, f := range got {
				if f != string(pre[i]) {
					t.Fatalf("frame %d is %.40s… (%d bytes), want %.40s… (%d bytes)", i, f, len(f), pre[i], len(pre[i]))
				}
			}
		})
	}
}

// A socket whose descriptor was closed before its staged send went out is
// left out of the ring's enter and ended (its client resumes elsewhere);
// the flusher goes on sending to the others.
func TestSendRingLeavesOutAClosedSocket(t *testing.T) {
	cfg := Config{}
	closed, _ := directSocket(t, cfg, wire.SubprotocolV2, 1<<20, nil)
	live, ws := directSocket(t, cfg, wire.SubprotocolV2, 1<<20, nil)
	_ = closed.out.Conn.Close() // the descriptor goes; the socket does not know yet
	closed.enqueue(frameN(0, 64))
	select {
	case <-closed.closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the socket whose descriptor was closed was not ended")
	}
	for i := range 3 {
		if !live.enqueue(frameN(i, 64)) {
			t.Fatalf("frame %d refused", i)
		}
	}
	for i, f := range readFrames(t, ws, 3) {
		if f != string(frameN(i, 64)) {
			t.Fatalf("frame %d is %.40s", i, f)
		}
	}
}

// Small frames queued one at a time while the client does not read go
// out as the flusher's chunks take them (staged sends where they are
// small, a socket's own write where they piled up) until the kernel's
// buffer is full, then through a writer goroutine; every frame arrives
// whole and in order.
func TestSmallFramesThroughAFullBuffer(t *testing.T) {
	for _, tc := range sendCases() {
		if tc.protocol != wire.SubprotocolV2 {
			continue // only v2 batches are staged
		}
		t.Run(tc.name, func(t *testing.T) {
			const size, n = 2 << 10, 4096 // 8 MiB
			c, ws := directSocket(t, Config{NoSendRing: tc.noRing}, tc.protocol, 2*size*n, nil)
			for i := range n {
				if !c.enqueue(frameN(i, size)) {
					t.Fatalf("frame %d refused", i)
				}
			}
			for i, f := range readFrames(t, ws, n) {
				if f != string(frameN(i, size)) {
					t.Fatalf("frame %d is %.40s, want %.40s", i, f, frameN(i, size))
				}
			}
		})
	}
}

// One chunk of the flusher holds a socket whose small batch is staged for
// the send ring and one whose large batch goes out at once with its own
// write: each gets its own bytes (the large one's framing once overwrote
// the staged ones, and a fan-out's sockets read garbage).
func TestStagedAndImmediateWritesInOneChunk(t *testing.T) {
	s := &Server{cfg: Config{}.withDefaults(), flush: newFlusher(1, true, nil)}
	t.Cleanup(s.flush.close)
	small, smallWS := directSocketOn(t, s, wire.SubprotocolV2, 1<<20, nil)
	large, largeWS := directSocketOn(t, s, wire.SubprotocolV2, 1<<20, nil)
	// Hold the flusher's one goroutine on a queue of its own, so that
	// both sockets' batches wait for its next chunk together.
	hold, held := make(chan struct{}), make(chan struct{})
	blocker := newSendQueue(1, 1)
	blocker.direct = func(*flushState) directStep { close(held); <-hold; return directReleased }
	blocker.writers.Add(1)
	s.flush.add(blocker)
	<-held
	smallFrames := []string{string(frameN(0, 100)), string(frameN(1, 100))}
	largeFrames := []string{string(frameN(2, 6<<10)), string(frameN(3, 6<<10))} // over maxStaged together
	for _, f := range smallFrames {
		small.enqueue([]byte(f))
	}
	for _, f := range largeFrames {
		large.enqueue([]byte(f))
	}
	close(hold)
	for _, tc := range []struct {
		ws   *websocket.Conn
		want []string
	}{{smallWS, smallFrames}, {largeWS, largeFrames}} {
		got := readFrames(t, tc.ws, len(tc.want))
		for i := range tc.want {
			if got[i] != tc.want[i] {
				t.Fatalf("frame %d is %.40s…, want %.40s…", i, got[i], tc.want[i])
			}
		}
	}
}
