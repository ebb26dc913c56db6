package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The meter counts exactly the bytes on the connection: a raw server sees
// the request the client wrote, and the client reads the raw response.
func TestMeterCountsHTTPBytesExactly(t *testing.T) {
	const response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	gotRequest := make(chan int, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		n := 0
		for { // headers end with an empty line; a GET has no body
			line, err := br.ReadString('\n')
			n += len(line)
			if err != nil || line == "\r\n" {
				break
			}
		}
		gotRequest <- n
		_, _ = io.WriteString(c, response)
	}()
	var m Meter
	client := m.HTTPClient(nil)
	defer CloseIdle(client)
	req, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/api/jobs/x", nil)
	req.Header.Set("Accept", "application/json")
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(body) != "hello" {
		t.Fatalf("body %q", body)
	}
	tr := m.Traffic()
	if want := int64(<-gotRequest); tr.Written != want {
		t.Errorf("written %d, the server read %d", tr.Written, want)
	}
	if tr.Read != int64(len(response)) {
		t.Errorf("read %d, the server wrote %d", tr.Read, len(response))
	}
	if tr.Conns != 1 || tr.Requests != 1 || tr.Total() != tr.Read+tr.Written {
		t.Errorf("traffic %+v", tr)
	}
}

// Over a WebSocket (handshake, masked client frames, server frames and
// the close handshake) the client's count matches the server's count of
// the same connection, byte for byte.
func TestMeterMatchesServerSideOfWebSocket(t *testing.T) {
	var srvRead, srvWritten atomic.Int64
	done := make(chan struct{})
	up := websocket.Upgrader{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, data, err := c.ReadMessage()
			if err != nil {
				return
			}
			_ = c.WriteMessage(typ, append(data, strings.Repeat("!", 300)...))
		}
	}))
	srv.Listener = &serverCounting{Listener: srv.Listener, read: &srvRead, written: &srvWritten}
	srv.Start()
	defer srv.Close()

	var m Meter
	d := websocket.Dialer{NetDialContext: m.DialContext}
	c, _, err := d.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := c.WriteMessage(websocket.TextMessage, []byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.ReadMessage(); err != nil {
			t.Fatal(err)
		}
	}
	closeSocket(c)
	_ = c.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server did not end")
	}
	tr := m.Traffic()
	// The server may still be flushing its close frame when its handler
	// returns; wait for the counts to settle.
	deadline := time.Now().Add(2 * time.Second)
	for (srvWritten.Load() != tr.Read || srvRead.Load() != tr.Written) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		tr = m.Traffic()
	}
	if srvWritten.Load() != tr.Read || srvRead.Load() != tr.Written {
		t.Fatalf("client read %d written %d; server wrote %d read %d", tr.Read, tr.Written, srvWritten.Load(), srvRead.Load())
	}
	if tr.Read < 3*300 || tr.Written < 3*(4+6) {
		t.Fatalf("implausibly small counts %+v", tr)
	}
}

type serverCounting struct {
	net.Listener
	read, written *atomic.Int64
}

func (l *serverCounting) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &srvConn{Conn: c, l: l}, nil
}

type srvConn struct {
	net.Conn
	l *serverCounting
}

func (c *srvConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.l.read.Add(int64(n))
	return n, err
}

func (c *srvConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.l.written.Add(int64(n))
	return n, err
}

// closeSocket does the close handshake, so its bytes are counted too.
func closeSocket(conn *websocket.Conn) {
	deadline := time.Now().Add(2 * time.Second)
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), deadline)
	_ = conn.SetReadDeadline(deadline)
	for {
		if _, _, err := conn.NextReader(); err != nil {
			return
		}
	}
}
