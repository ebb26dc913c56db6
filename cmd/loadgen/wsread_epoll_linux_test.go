//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// testReaders: the goroutine reader and the read loops (one loop, so
// that every socket of a test shares it).
func testReaders(t *testing.T) []testReader {
	loops, err := newReadLoops(1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(loops.Close)
	return []testReader{goroutineReader, {"loops", loops.read}}
}

// serverSide is the server's end of one socket of hijackServer: the test
// writes frames to c and reads the client's from r.
type serverSide struct {
	c net.Conn
	r *bufio.Reader
}

// hijackServer answers each WebSocket handshake, calls setup on the
// connection before it writes the 101 response, and hands the connection
// to the test, which then plays the server.
func hijackServer(t *testing.T, setup func(*net.TCPConn)) (url string, conns <-chan serverSide) {
	t.Helper()
	ch := make(chan serverSide, 100)
	var mu sync.Mutex
	var hijacked []net.Conn
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		mu.Lock()
		hijacked = append(hijacked, c)
		mu.Unlock()
		if setup != nil {
			setup(c.(*net.TCPConn))
		}
		resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n"
		if _, err := c.Write([]byte(resp)); err != nil {
			t.Errorf("write: %v", err)
			c.Close()
			return
		}
		ch <- serverSide{c, brw.Reader}
	}))
	t.Cleanup(func() {
		srv.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range hijacked {
			c.Close()
		}
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http"), ch
}

// loopResult is what one socket's read on the loops returned.
type loopResult struct {
	msgs []string
	err  error
}

// startLoopRead dials url and reads the socket on loops in a goroutine;
// each message goes to msgs as it comes, the end to the returned channel.
func startLoopRead(ctx context.Context, t *testing.T, loops *readLoops, url string, msgs chan<- string) (*sock, <-chan loopResult) {
	t.Helper()
	s := &sock{}
	if err := dialSock(ctx, websocket.Dialer{}, url, nil, s); err != nil {
		t.Fatal(err)
	}
	done := make(chan loopResult, 1)
	go func() {
		var r loopResult
		r.err = loops.read(ctx, s, func(msg []byte, _ time.Time) bool {
			r.msgs = append(r.msgs, string(msg))
			if msgs != nil {
				msgs <- string(msg)
			}
			return true
		})
		done <- r
	}()
	return s, done
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("gave up waiting for %s", what)
		case <-time.After(time.Millisecond):
		}
	}
}

// One loop serves many sockets: a frame that came in pieces is kept per
// socket while the loop serves the others, every socket gets its own
// messages in order, and each socket's close ends that socket only.
func TestReadLoopsKeepPartialFramesPerSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	loops, err := newReadLoops(1)
	if err != nil {
		t.Fatal(err)
	}
	defer loops.Close()
	url, conns := hijackServer(t, nil)
	const n = 20
	type client struct {
		s    *sock
		srv  serverSide
		msgs chan string
		done <-chan loopResult
	}
	cl := make([]client, n)
	for i := range cl {
		cl[i].msgs = make(chan string, 10)
		cl[i].s, cl[i].done = startLoopRead(ctx, t, loops, url, cl[i].msgs)
		cl[i].srv = <-conns
	}
	// Every even socket gets the first part of a frame; the loop must have
	// read it (counted) before the rest is sent, so the frame really is
	// parsed from two reads. The odd sockets are served meanwhile: a whole
	// message each, delivered while the even ones hold their parts.
	whole := make([][]byte, n)
	for i, c := range cl {
		whole[i] = frameBytes(true, websocket.TextMessage, []byte(fmt.Sprintf("the first message of socket %d", i)))
		if i%2 == 1 {
			continue
		}
		before := c.s.read.Load()
		if _, err := c.srv.c.Write(whole[i][:5]); err != nil {
			t.Fatal(err)
		}
		waitFor(ctx, t, "the first part's read", func() bool { return c.s.read.Load() >= before+5 })
	}
	for i := 1; i < n; i += 2 {
		if _, err := cl[i].srv.c.Write(whole[i]); err != nil {
			t.Fatal(err)
		}
		select {
		case <-cl[i].msgs:
		case <-ctx.Done():
			t.Fatalf("socket %d got no message while the others held part of one", i)
		}
	}
	for i := 0; i < n; i += 2 {
		select {
		case m := <-cl[i].msgs:
			t.Fatalf("socket %d got %q from part of a frame", i, m)
		default:
		}
	}
	for i, c := range cl {
		var rest []byte
		if i%2 == 0 {
			rest = whole[i][5:]
		}
		rest = cat(rest, frameBytes(true, websocket.TextMessage, []byte("last")),
			frameBytes(true, websocket.CloseMessage, closePayload(4000+i, "")))
		if _, err := c.srv.c.Write(rest); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range cl {
		var r loopResult
		select {
		case r = <-c.done:
		case <-ctx.Done():
			t.Fatalf("socket %d did not end", i)
		}
		want := []string{string(whole[i][2:]), "last"}
		if strings.Join(r.msgs, "|") != strings.Join(want, "|") {
			t.Errorf("socket %d got %q, want %q", i, r.msgs, want)
		}
		if code := closeCodeOf(r.err); code != 4000+i {
			t.Errorf("socket %d ended with %v, want close %d", i, r.err, 4000+i)
		}
		f, err := readClientFrame(c.srv.r)
		if err != nil || f.opcode != websocket.CloseMessage || !bytes.Equal(f.payload, closePayload(4000+i, "")) {
			t.Errorf("socket %d's close reply: %d %q, %v", i, f.opcode, f.payload, err)
		}
	}
}

// A socket whose context ends is closed (the server reads EOF) and its
// read returns net.ErrClosed; closing the loops ends the sockets still on
// them with errLoopClosed.
func TestReadLoopsEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	loops, err := newReadLoops(2)
	if err != nil {
		t.Fatal(err)
	}
	defer loops.Close() // again: Close is idempotent
	url, conns := hijackServer(t, nil)
	for _, tc := range []struct {
		name    string
		end     func(cancel context.CancelFunc)
		wantErr error
	}{
		{"context ended", func(cancel context.CancelFunc) { cancel() }, net.ErrClosed},
		{"loops closed", func(context.CancelFunc) { loops.Close() }, errLoopClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sctx, scancel := context.WithCancel(ctx)
			defer scancel()
			msgs := make(chan string, 1)
			_, done := startLoopRead(sctx, t, loops, url, msgs)
			srv := <-conns
			// A message first: the socket is on its loop.
			if _, err := srv.c.Write(frameBytes(true, websocket.TextMessage, []byte("hi"))); err != nil {
				t.Fatal(err)
			}
			<-msgs
			tc.end(scancel)
			select {
			case r := <-done:
				if !errors.Is(r.err, tc.wantErr) {
					t.Errorf("read returned %v, want %v", r.err, tc.wantErr)
				}
			case <-ctx.Done():
				t.Fatal("the read did not return")
			}
			if _, err := readClientFrame(srv.r); err == nil {
				t.Error("the server read a frame, want the closed connection")
			}
		})
	}
	// A closed loop takes no more sockets.
	s := &sock{}
	if err := dialSock(ctx, websocket.Dialer{}, url, nil, s); err != nil {
		t.Fatal(err)
	}
	if err := loops.read(ctx, s, func([]byte, time.Time) bool { return true }); !errors.Is(err, errLoopClosed) {
		t.Errorf("read on closed loops: %v, want %v", err, errLoopClosed)
	}
}

// Pongs the socket cannot take yet (its send buffer is full because the
// server does not read) wait and go out in order once it does; a server
// that never reads ends the socket once the backlog passes its bound.
func TestReadLoopsPongBacklog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	loops, err := newReadLoops(1)
	if err != nil {
		t.Fatal(err)
	}
	defer loops.Close()
	// Small buffers on both sides, so that the pongs fill them: the
	// server's still above two loopback segments (64 KiB), or TCP holds
	// back its window updates and the test crawls.
	url, conns := hijackServer(t, func(c *net.TCPConn) { _ = c.SetReadBuffer(128 << 10) })
	ping := func(i int) []byte { return []byte(fmt.Sprintf("%0125d", i)) }
	for _, tc := range []struct {
		name    string
		pings   int
		read    bool // the server reads the pongs after sending every ping
		wantErr string
	}{
		{"the server reads late", 6000, true, ""}, // 786 KB of pongs, under the bound
		// Pongs of 131 bytes: the bound, and another MiB for what the
		// kernel's buffers take.
		{"the server never reads", (maxControlBacklog + 1<<20) / (6 + 125), false, "does not take"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &sock{}
			if err := dialSock(ctx, websocket.Dialer{}, url, nil, s); err != nil {
				t.Fatal(err)
			}
			_ = underlying(s.ws.NetConn()).(*net.TCPConn).SetWriteBuffer(4096)
			done := make(chan error, 1)
			go func() { done <- loops.read(ctx, s, func([]byte, time.Time) bool { return true }) }()
			srv := <-conns
			defer srv.c.Close()
			var all []byte
			for i := range tc.pings {
				all = append(all, frameBytes(true, websocket.PingMessage, ping(i))...)
			}
			if !tc.read {
				// The client ends the socket while the server is still
				// writing: the write may fail then.
				_, _ = srv.c.Write(all)
				select {
				case err := <-done:
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Errorf("read returned %v, want an error with %q", err, tc.wantErr)
					}
				case <-ctx.Done():
					t.Fatal("the read did not return")
				}
				return
			}
			if _, err := srv.c.Write(all); err != nil {
				t.Fatal(err)
			}
			for i := range tc.pings {
				f, err := readClientFrame(srv.r)
				if err != nil {
					t.Fatalf("pong %d: %v", i, err)
				}
				if f.opcode != websocket.PongMessage || !bytes.Equal(f.payload, ping(i)) {
					t.Fatalf("frame %d: opcode %d %.20q…, want the pong of ping %d", i, f.opcode, f.payload, i)
				}
			}
			if _, err := srv.c.Write(frameBytes(true, websocket.CloseMessage, closePayload(websocket.CloseNormalClosure, ""))); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if code := closeCodeOf(err); code != websocket.CloseNormalClosure {
					t.Errorf("read returned %v, want close %d", err, websocket.CloseNormalClosure)
				}
			case <-ctx.Done():
				t.Fatal("the read did not return")
			}
		})
	}
}

// The readers side by side on a fan-out: each op sends one small message
// to each of 500 sockets (one write per socket, from this process, as a
// server's fan-out does) and waits until every socket got it. Reported:
// this process's CPU per delivery (server writes, reads and parsing) and
// reads per delivery; the difference between the readers is theirs.
//
//	go test -run '^$' -bench BenchmarkReaders -benchtime 2000x ./cmd/loadgen
func BenchmarkReaders(b *testing.B) {
	const n = 500
	for _, rdr := range testReaders(&testing.T{}) {
		b.Run(rdr.name, func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			url, conns := hijackServer(&testing.T{}, nil)
			var got atomic.Int64
			socks := make([]*sock, n)
			srv := make([]net.Conn, n)
			var wg sync.WaitGroup
			for i := range n {
				socks[i] = &sock{}
				if err := dialSock(ctx, websocket.Dialer{}, url, nil, socks[i]); err != nil {
					b.Fatal(err)
				}
				srv[i] = (<-conns).c
				wg.Add(1)
				go func() {
					defer wg.Done()
					_ = rdr.read(ctx, socks[i], func([]byte, time.Time) bool { got.Add(1); return true })
				}()
			}
			msg := frameBytes(true, websocket.TextMessage, bytes.Repeat([]byte("x"), 150))
			var r0, r1 syscall.Rusage
			reads := func() (sum int64) {
				for _, s := range socks {
					sum += s.reads.Load()
				}
				return sum
			}
			reads0 := reads()
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
			b.ResetTimer()
			for i := range b.N {
				for _, c := range srv {
					if _, err := c.Write(msg); err != nil {
						b.Fatal(err)
					}
				}
				for got.Load() < int64(i+1)*n {
					runtime.Gosched()
				}
			}
			b.StopTimer()
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
			cpu := time.Duration(syscall.TimevalToNsec(r1.Utime) - syscall.TimevalToNsec(r0.Utime) +
				syscall.TimevalToNsec(r1.Stime) - syscall.TimevalToNsec(r0.Stime))
			deliveries := float64(b.N) * n
			b.ReportMetric(float64(cpu.Nanoseconds())/deliveries, "cpu-ns/delivery")
			b.ReportMetric(float64(reads()-reads0)/deliveries, "reads/delivery")
			cancel()
			wg.Wait()
		})
	}
}
