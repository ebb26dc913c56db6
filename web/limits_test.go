package web

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/progress/progresstest"
)

// loopback returns the address 127.0.0.n: every one of them reaches the
// test server, and each looks like another client to per-address caps.
func loopback(n int) *net.TCPAddr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(n))} }

// dialFrom opens a TCP connection to the env's server from 127.0.0.n.
func (e *testEnv) dialFrom(n int) net.Conn {
	e.t.Helper()
	d := net.Dialer{LocalAddr: loopback(n)}
	c, err := d.Dial("tcp", e.http.Listener.Addr().String())
	if err != nil {
		e.t.Fatalf("dial from 127.0.0.%d: %v", n, err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	return c
}

// wireAnswer is one HTTP answer read off a raw connection.
type wireAnswer struct {
	status int
	header http.Header
	body   []byte
	err    errorBody
}

func readRaw(t testing.TB, br *bufio.Reader) wireAnswer {
	t.Helper()
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	out := wireAnswer{status: res.StatusCode, header: res.Header, body: body}
	if res.StatusCode >= 400 {
		if err := json.Unmarshal(body, &out.err); err != nil || out.err.Error.Code == "" {
			t.Fatalf("%d answer is not the JSON error body: %q (%v)", res.StatusCode, body, err)
		}
	}
	return out
}

// roundTrip writes a raw request on c and reads the answer.
func roundTrip(t testing.TB, c net.Conn, br *bufio.Reader, req string) wireAnswer {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("write request: %v", err)
	}
	return readRaw(t, br)
}

// waitClosedByServer reads c until the server closes it; the bound only
// catches a server that never does.
func waitClosedByServer(c net.Conn, br *bufio.Reader) error {
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	_, err := io.Copy(io.Discard, br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("still open after a minute")
	}
	return nil // EOF or reset: the server closed it
}

// 500 clients that trickle a body and 500 idle keep-alive connections are
// all cut by the server (BodyTimeout, IdleTimeout), while /healthz
// answers throughout. The clients come from ten loopback addresses, 100
// each, under the default per-address cap.
func TestSlowAndIdleClientsAreCut(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		lim := Limits{ReadHeaderTimeout: time.Second, BodyTimeout: time.Second, IdleTimeout: time.Second, MaxConnsPerIP: 256}
		e := newEnv(t, srv, withoutWorker(), withWebConfig(Config{Limits: lim}))
		const perKind, addrs = 500, 10

		// /healthz from its own address, throughout.
		stop := make(chan struct{})
		var healthOK, healthBad atomic.Int64
		var pollers sync.WaitGroup
		pollers.Add(1)
		go func() {
			defer pollers.Done()
			client := clientFrom(loopback(100).IP.String(), true)
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				res, err := client.Get(e.http.URL + "/healthz")
				if err != nil {
					healthBad.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode == http.StatusOK {
					healthOK.Add(1)
				} else {
					healthBad.Add(1)
				}
			}
		}()

		type client struct {
			c  net.Conn
			br *bufio.Reader
		}
		var trickling, idle []client
		host := e.http.Listener.Addr().String()
		for i := range perKind {
			c := e.dialFrom(2 + i%addrs)
			fmt.Fprintf(c, "POST /api/jobs HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{", host)
			trickling = append(trickling, client{c, bufio.NewReader(c)})
		}
		for i := range perKind {
			c := e.dialFrom(2 + i%addrs)
			br := bufio.NewReader(c)
			if res := roundTrip(t, c, br, "GET /healthz HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); res.status != http.StatusOK {
				t.Fatalf("keep-alive request: %d", res.status)
			}
			idle = append(idle, client{c, br})
		}
		// A byte now and then on every trickling connection, until it fails.
		pollers.Add(1)
		go func() {
			defer pollers.Done()
			open := append([]client(nil), trickling...)
			for len(open) > 0 {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				kept := open[:0]
				for _, cl := range open {
					_ = cl.c.SetWriteDeadline(time.Now().Add(time.Second))
					if _, err := cl.c.Write([]byte(" ")); err == nil {
						kept = append(kept, cl)
					}
				}
				open = kept
			}
		}()

		start := time.Now()
		errs := make(chan error, 2*perKind)
		var readers sync.WaitGroup
		for _, cl := range append(trickling, idle...) {
			readers.Add(1)
			go func() { defer readers.Done(); errs <- waitClosedByServer(cl.c, cl.br) }()
		}
		readers.Wait()
		took := time.Since(start)
		close(stop)
		pollers.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("%s: %d trickling and %d idle connections closed by the server within %v; /healthz answered %d times",
			srv.Kind, perKind, perKind, took.Round(time.Millisecond), healthOK.Load())
		if healthBad.Load() > 0 || healthOK.Load() == 0 {
			t.Fatalf("/healthz failed %d times (answered %d)", healthBad.Load(), healthOK.Load())
		}
	})
}

// Sockets, SSE and long-poll outlive BodyTimeout, IdleTimeout and
// ReadHeaderTimeout: they have deadlines of their own. A keep-alive
// connection that posted a body serves its next request too.
func TestStreamsOutliveRequestTimeouts(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		const short = 200 * time.Millisecond
		lim := Limits{ReadHeaderTimeout: short, BodyTimeout: short, IdleTimeout: short}
		e := newEnv(t, srv, withoutWorker(), withWebConfig(Config{Limits: lim}))
		client, group := e.privateGroup()

		ws := e.dialAs(client)
		ws.send(map[string]any{"op": "subscribe", "group": group})
		if f := ws.read(); f.Type != "subscribed" {
			t.Fatalf("got %+v", f)
		}

		req, _ := http.NewRequest("GET", e.http.URL+"/api/groups/"+group+"/events", nil)
		req.Header.Set("Accept", "text/event-stream")
		sse, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer sse.Body.Close()
		lines := bufio.NewReader(sse.Body)

		type polled struct {
			status int
			events int
			err    error
		}
		poll := make(chan polled, 1)
		go func() {
			res, err := client.Get(e.http.URL + "/api/groups/" + group + "/events?after=0&wait=30")
			if err != nil {
				poll <- polled{err: err}
				return
			}
			defer res.Body.Close()
			var body struct{ Events []json.RawMessage }
			err = json.NewDecoder(res.Body).Decode(&body)
			poll <- polled{status: res.StatusCode, events: len(body.Events), err: err}
		}()

		time.Sleep(5 * short) // every request timeout has passed several times over
		if _, err := e.log.Publish(context.Background(), group, "notification", map[string]string{"title": "still here"}); err != nil {
			t.Fatal(err)
		}
		f := ws.readUntil(func(f frame) bool { return f.Type == "event" })
		if f[len(f)-1].Event != "notification" {
			t.Fatalf("socket got %+v", f)
		}
		for {
			line, err := lines.ReadString('\n')
			if err != nil {
				t.Fatalf("SSE stream ended: %v", err)
			}
			if strings.HasPrefix(line, "event: notification") {
				break
			}
		}
		if p := <-poll; p.err != nil || p.status != http.StatusOK || p.events != 1 {
			t.Fatalf("long-poll: %+v", p)
		}

		// A body that arrives in time is read, and the connection serves
		// the next request after it (its deadline was lifted).
		c := e.dialFrom(1)
		br := bufio.NewReader(c)
		host := e.http.Listener.Addr().String()
		for range 2 {
			res := roundTrip(t, c, br, "POST /api/me HTTP/1.1\r\nHost: "+host+"\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"name\":\"Ada\"}")
			if res.status != http.StatusOK {
				t.Fatalf("POST /api/me: %d %s", res.status, res.body)
			}
		}
	})
}

// Connections over the per-address or the total cap get 429 rate_limited
// with the reason and are closed; closing one makes room again.
func TestConnectionCaps(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker(), withWebConfig(Config{Limits: Limits{MaxConnsPerIP: 2, MaxConns: 4}}))
	host := e.http.Listener.Addr().String()
	get := "GET /healthz HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
	open := func(n int) (net.Conn, *bufio.Reader, wireAnswer) {
		c := e.dialFrom(n)
		br := bufio.NewReader(c)
		return c, br, roundTrip(t, c, br, get)
	}
	wantRejected := func(res wireAnswer, c net.Conn, br *bufio.Reader, mention string) {
		t.Helper()
		if res.status != http.StatusTooManyRequests || res.err.Error.Code != CodeRateLimited ||
			!strings.Contains(res.err.Error.Message, mention) || res.header.Get("Retry-After") == "" {
			t.Fatalf("over the cap: %d %s %v, want 429 rate_limited mentioning %q with Retry-After", res.status, res.body, res.header, mention)
		}
		if err := waitClosedByServer(c, br); err != nil {
			t.Fatalf("a rejected connection stays open: %v", err)
		}
	}
	a1, _, res := open(2)
	if res.status != http.StatusOK {
		t.Fatalf("first connection: %d", res.status)
	}
	if _, _, res := open(2); res.status != http.StatusOK {
		t.Fatalf("second connection: %d", res.status)
	}
	c, br, res := open(2)
	wantRejected(res, c, br, "from your address")
	for range 2 {
		if _, _, res := open(3); res.status != http.StatusOK {
			t.Fatalf("another address: %d", res.status)
		}
	}
	c, br, res = open(4)
	wantRejected(res, c, br, "too many open connections")

	_ = a1.Close()
	eventually(t, "a closed connection to free its slot", func() bool {
		c := e.dialFrom(2)
		defer c.Close()
		br := bufio.NewReader(c)
		return roundTrip(t, c, br, get).status == http.StatusOK
	})
}

// A trusted proxy carries many clients: its connections count towards the
// total only, not towards the per-address cap.
func TestTrustedProxyIsNotCappedPerAddress(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker(), withWebConfig(Config{
		Limits:         Limits{MaxConnsPerIP: 1},
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.5/32")},
	}))
	host := e.http.Listener.Addr().String()
	for range 3 {
		c := e.dialFrom(5)
		if res := roundTrip(t, c, bufio.NewReader(c), "GET /healthz HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); res.status != http.StatusOK {
			t.Fatalf("proxy connection: %d %s", res.status, res.body)
		}
	}
}

// More sockets than MaxSocketsPerIP from one address: the extra one is
// closed with 1008 and the reason; other addresses are not affected, and
// a closed socket frees its slot.
func TestSocketsPerAddressCap(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker(), withWebConfig(Config{Limits: Limits{MaxSocketsPerIP: 2}}))
		url := "ws" + strings.TrimPrefix(e.http.URL, "http") + "/ws"
		dial := func(n int) *websocket.Conn {
			t.Helper()
			d := *websocket.DefaultDialer
			d.NetDialContext = (&net.Dialer{LocalAddr: loopback(n)}).DialContext
			ws, _, err := d.Dial(url, nil)
			if err != nil {
				t.Fatalf("dial from 127.0.0.%d: %v", n, err)
			}
			t.Cleanup(func() { _ = ws.Close() })
			return ws
		}
		// ping answers pong on a working socket, or returns the close error.
		ping := func(ws *websocket.Conn) error {
			_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			if err := ws.WriteJSON(map[string]string{"op": "ping"}); err != nil {
				return err
			}
			var f frame
			if err := ws.ReadJSON(&f); err != nil {
				return err
			}
			if f.Type != "pong" {
				return fmt.Errorf("got %+v, want pong", f)
			}
			return nil
		}
		first := dial(6)
		for _, ws := range []*websocket.Conn{first, dial(6), dial(7)} {
			if err := ping(ws); err != nil {
				t.Fatalf("socket under the cap: %v", err)
			}
		}
		err := ping(dial(6))
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "too many sockets") {
			t.Fatalf("third socket from one address: %v, want close 1008 naming too many sockets", err)
		}
		eventually(t, "the refused socket counted as a 1008 close", func() bool {
			return e.scrape().value(t, "taskstream_socket_closes_total", "code", "1008") == 1
		})
		_ = first.Close()
		eventually(t, "a closed socket to free its slot", func() bool { return ping(dial(6)) == nil })
	})
}
