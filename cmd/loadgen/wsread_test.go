package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// frameBytes is one server frame (unmasked) of opcode with payload.
func frameBytes(fin bool, opcode int, payload []byte) []byte {
	b0 := byte(opcode)
	if fin {
		b0 |= 0x80
	}
	out := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		out = append(out, byte(n))
	case n <= 0xffff:
		out = append(out, 126, byte(n>>8), byte(n))
	default:
		out = append(out, 127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	return append(out, payload...)
}

func closePayload(code int, text string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(code)), text...)
}

// clientFrame is a frame the client sent (masked), unmasked.
type clientFrame struct {
	opcode  int
	payload []byte
}

// readClientFrame reads one masked client frame from r.
func readClientFrame(r *bufio.Reader) (clientFrame, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return clientFrame{}, err
	}
	if h[1]&0x80 == 0 {
		return clientFrame{}, errors.New("an unmasked client frame")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return clientFrame{}, err
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return clientFrame{}, err
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	var key [4]byte
	if _, err := io.ReadFull(r, key[:]); err != nil {
		return clientFrame{}, err
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return clientFrame{}, err
	}
	for i := range p {
		p[i] ^= key[i%4]
	}
	return clientFrame{int(h[0] & 0x0f), p}, nil
}

// rawServer is a WebSocket server that answers the handshake and sends
// the bytes of its test in the same write as its 101 response (so they
// reach the client with it, as frames sent right after an upgrade may),
// then reports every frame the client sends on got.
func rawServer(t *testing.T, send []byte, got chan<- clientFrame) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer c.Close()
		resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n"
		if _, err := c.Write(append([]byte(resp), send...)); err != nil {
			t.Errorf("write: %v", err)
			return
		}
		for {
			f, err := readClientFrame(brw.Reader)
			if err != nil {
				return
			}
			got <- f
			if f.opcode == websocket.CloseMessage {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// The subscribers' frame reader on a real socket: messages whole and in
// order however the server frames them, pings answered, the close
// answered and returned with its code, protocol errors refused, and the
// frames that came in the same read as the handshake's response kept.
func TestReadMessages(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 200<<10) // larger than the buffer: it grows
	many := []byte{}
	var manyWant []string
	for i := range 3000 { // more than a buffer of small frames
		m := strings.Repeat("m", i%50)
		many = append(many, frameBytes(true, websocket.TextMessage, []byte(m))...)
		manyWant = append(manyWant, m)
	}
	closeFrame := frameBytes(true, websocket.CloseMessage, closePayload(websocket.CloseTryAgainLater, "busy"))
	ways := readers(t)
	for _, tc := range []struct {
		name      string
		send      []byte
		want      []string
		wantCode  int    // the close code readMessages returns (0: an error that is no close)
		wantErr   string // part of a protocol error
		wantCtrl  []clientFrame
		stopAfter int // the callback says stop after this many messages (0: never)
	}{
		{name: "two messages then close", send: cat(frameBytes(true, 1, []byte("a")), frameBytes(true, 1, []byte("b\nc")), closeFrame),
			want: []string{"a", "b\nc"}, wantCode: websocket.CloseTryAgainLater,
			wantCtrl: []clientFrame{{websocket.CloseMessage, closePayload(websocket.CloseTryAgainLater, "")}}},
		{name: "fragments with a ping between", send: cat(frameBytes(false, 1, []byte("he")), frameBytes(true, websocket.PingMessage, []byte("p1")),
			frameBytes(false, 0, []byte("ll")), frameBytes(true, 0, []byte("o")), frameBytes(true, 1, []byte("next")), closeFrame),
			want: []string{"hello", "next"}, wantCode: websocket.CloseTryAgainLater,
			wantCtrl: []clientFrame{{websocket.PongMessage, []byte("p1")}, {websocket.CloseMessage, closePayload(websocket.CloseTryAgainLater, "")}}},
		{name: "a message larger than the buffer", send: cat(frameBytes(true, 2, big), frameBytes(true, 1, []byte("after")), closeFrame),
			want: []string{string(big), "after"}, wantCode: websocket.CloseTryAgainLater},
		{name: "many small frames", send: cat(many, closeFrame), want: manyWant, wantCode: websocket.CloseTryAgainLater},
		{name: "close without a code", send: frameBytes(true, websocket.CloseMessage, nil), wantCode: websocket.CloseNoStatusReceived,
			wantCtrl: []clientFrame{{websocket.CloseMessage, nil}}}, // gorilla's FormatCloseMessage: no code echoed for 1005
		{name: "stop asked by the callback", send: cat(frameBytes(true, 1, []byte("a")), frameBytes(true, 1, []byte("b"))), want: []string{"a"}, stopAfter: 1},
		{name: "masked frame", send: []byte{0x81, 0x81, 1, 2, 3, 4, 'x'}, wantErr: "masked"},
		{name: "reserved bits", send: []byte{0xc1, 0x01, 'x'}, wantErr: "reserved"},
		{name: "continuation outside a message", send: frameBytes(true, 0, []byte("x")), wantErr: "continuation"},
		{name: "message inside a message", send: cat(frameBytes(false, 1, []byte("a")), frameBytes(true, 1, []byte("b"))), wantErr: "inside"},
		{name: "unknown opcode", send: frameBytes(true, 3, nil), wantErr: "opcode 3"},
		{name: "too large", send: []byte{0x82, 127, 0, 0, 0, 0, 0x10, 0, 0, 0}, wantErr: "bytes (at most"},
		{name: "one-byte close", send: frameBytes(true, websocket.CloseMessage, []byte{3}), wantErr: "1 byte"},
	} {
		for _, reader := range ways {
			t.Run(reader.name+"/"+tc.name, func(t *testing.T) {
				ctrl := make(chan clientFrame, 10)
				srv := rawServer(t, tc.send, ctrl)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				s := &sock{ring: reader.ring}
				if err := dialSock(ctx, websocket.Dialer{}, "ws"+strings.TrimPrefix(srv.URL, "http"), nil, s); err != nil {
					t.Fatal(err)
				}
				defer s.ws.Close()
				var got []string
				err := s.readMessages(ctx, func(msg []byte, at time.Time) bool {
					if at.IsZero() {
						t.Error("a message without its read time")
					}
					got = append(got, string(msg))
					return tc.stopAfter == 0 || len(got) < tc.stopAfter
				})
				if strings.Join(got, "|") != strings.Join(tc.want, "|") || len(got) != len(tc.want) {
					t.Errorf("got %d messages, want %d (%.80q…)", len(got), len(tc.want), got)
				}
				switch {
				case tc.stopAfter > 0:
					if err != nil {
						t.Errorf("stopped: %v, want nil", err)
					}
				case tc.wantErr != "":
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Errorf("error %v, want one with %q", err, tc.wantErr)
					}
				default:
					if code := closeCodeOf(err); code != tc.wantCode {
						t.Errorf("close code %d (%v), want %d", code, err, tc.wantCode)
					}
				}
				for _, want := range tc.wantCtrl {
					select {
					case f := <-ctrl:
						if f.opcode != want.opcode || !bytes.Equal(f.payload, want.payload) {
							t.Errorf("the client sent opcode %d %q, want %d %q", f.opcode, f.payload, want.opcode, want.payload)
						}
					case <-ctx.Done():
						t.Fatalf("no opcode %d from the client", want.opcode)
					}
				}
				if wantRead := int64(len(tc.send)); tc.wantErr == "" && tc.stopAfter == 0 && s.read.Load() < wantRead {
					t.Errorf("counted %d bytes read, less than the %d frames' bytes", s.read.Load(), wantRead)
				}
			})
		}
	}
}

// Frames split anywhere between reads parse as when read whole: the same
// messages and the same end. The reader parses what servers send: no
// input panics it or makes it deliver more than it was sent.
func FuzzWSReader(f *testing.F) {
	f.Add(bytes.Join([][]byte{frameBytes(false, 1, []byte("ab")), frameBytes(true, 9, []byte("p")), frameBytes(true, 0, []byte("c"))}, nil), uint16(3))
	f.Add(frameBytes(true, 2, bytes.Repeat([]byte("y"), 70<<10)), uint16(1000))
	f.Add(frameBytes(true, 8, closePayload(1001, "bye")), uint16(1))
	f.Add([]byte{0x82, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, uint16(5))
	f.Fuzz(func(t *testing.T, in []byte, chunk uint16) {
		run := func(step int) ([]string, string) {
			var msgs []string
			rd := newWSReader(func(int, []byte) {}, func(m []byte, _ time.Time) bool {
				msgs = append(msgs, string(m))
				return true
			})
			p := in
			for len(p) > 0 {
				n := min(step, len(p))
				if err := rd.feedBytes(p[:n], time.Now()); err != nil {
					return msgs, err.Error()
				}
				p = p[n:]
			}
			return msgs, ""
		}
		whole, wholeErr := run(len(in) + 1)
		split, splitErr := run(int(chunk)%512 + 1)
		if strings.Join(whole, "\x00") != strings.Join(split, "\x00") || len(whole) != len(split) || wholeErr != splitErr {
			t.Fatalf("whole: %d messages, %q; in pieces of %d: %d messages, %q", len(whole), wholeErr, int(chunk)%512+1, len(split), splitErr)
		}
		total := 0
		for _, m := range whole {
			total += len(m)
		}
		if total > len(in) {
			t.Fatalf("%d bytes of messages from %d bytes", total, len(in))
		}
	})
}

// The handshake split: countingConn hands gorilla the response up to its
// headers' end, wherever the reads cut it, and keeps what follows.
func TestCountingConnSplitsHandshake(t *testing.T) {
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
	after := "\x81\x01a\r\n\r\n"
	for _, step := range []int{1, 2, 3, 5, len(resp) - 1, len(resp), len(resp) + 1, 1000} {
		a, b := net.Pipe()
		s := &sock{}
		c := &countingConn{Conn: a, s: s}
		go func() {
			data := []byte(resp + after)
			for len(data) > 0 {
				n := min(step, len(data))
				if _, err := b.Write(data[:n]); err != nil {
					return
				}
				data = data[n:]
			}
			b.Close()
		}()
		var handshake []byte
		buf := make([]byte, 4096)
		for !bytes.HasSuffix(handshake, []byte("\r\n\r\n")) {
			n, err := c.Read(buf)
			handshake = append(handshake, buf[:n]...)
			if err != nil {
				t.Fatalf("step %d: %v after %q", step, err, handshake)
			}
		}
		rest, _ := io.ReadAll(a) // what the pipe still holds
		a.Close()
		if string(handshake) != resp || string(s.pending)+string(rest) != after {
			t.Errorf("step %d: gorilla got %q, then pending %q and %q on the wire", step, handshake, s.pending, rest)
		}
	}
}

// cat joins frames.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// A reader gives its buffer back once every byte in it is parsed, and
// keeps it while a frame is only partly read: idle sockets hold none.
func TestReaderReleasesItsBuffer(t *testing.T) {
	whole := frameBytes(true, websocket.TextMessage, []byte("hello"))
	big := frameBytes(true, websocket.BinaryMessage, bytes.Repeat([]byte("x"), 2*readBufSize))
	for _, tc := range []struct {
		name string
		feed []byte
		kept bool // the buffer is still held after release
	}{
		{"a whole frame", whole, false},
		{"a frame and part of the next", cat(whole, whole[:3]), true},
		{"part of a frame larger than the buffer", big[:readBufSize], true},
		{"a frame larger than the buffer, whole", big, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got int
			rd := newWSReader(func(int, []byte) {}, func(msg []byte, _ time.Time) bool { got++; return true })
			if err := rd.feedBytes(tc.feed, time.Now()); err != nil {
				t.Fatal(err)
			}
			rd.release()
			if held := rd.buf != nil; held != tc.kept {
				t.Fatalf("buffer held after release: %v, want %v (%d messages)", held, tc.kept, got)
			}
			if tc.kept {
				return
			}
			// The next read takes a buffer again and parses as before.
			if err := rd.feedBytes(whole, time.Now()); err != nil || got == 0 {
				t.Fatalf("after release: %v, %d messages", err, got)
			}
		})
	}
}

// A user's socket dials send the cookies its jar holds, as the dialer's
// own Jar would, made once; a cookie an upgrade response sets (a renewed
// session) goes into the jar and into the following dials.
func TestDialCookies(t *testing.T) {
	up := websocket.Upgrader{}
	seen := make(chan string, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			http.SetCookie(w, &http.Cookie{Name: "sid", Value: "one", Path: "/"})
			http.SetCookie(w, &http.Cookie{Name: "other", Value: "x", Path: "/"})
			return
		}
		seen <- r.Header.Get("Cookie")
		h := http.Header{}
		if c, err := r.Cookie("sid"); err == nil && c.Value == "one" {
			h.Add("Set-Cookie", (&http.Cookie{Name: "sid", Value: "two", Path: "/"}).String())
		}
		ws, err := up.Upgrade(w, r, h)
		if err != nil {
			return
		}
		_ = ws.Close()
	}))
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar}
	res, err := hc.Get(srv.URL + "/login")
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	ck, err := newDialCookies(jar, srv.URL+"/ws")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, want := range []string{"sid=one; other=x", "sid=two; other=x", "sid=two; other=x"} {
		s := &sock{}
		res, err := dialSockHeader(ctx, websocket.Dialer{}, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", ck.get(), nil, s)
		ck.saw(res)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.ws.Close()
		if got := <-seen; got != want {
			t.Errorf("dial %d sent Cookie %q, want %q", i, got, want)
		}
	}
}
