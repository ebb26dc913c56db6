//go:build faults

package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/cookiejar"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/wire"
)

// user is one identity: a guest with a session cookie, or a signed-in
// user calling with a bearer token. Each user dials from its own loopback
// address (127.0.0.0/8 is all local), as distinct clients would, so
// per-IP limits see distinct clients.
type user struct {
	name   string
	ip     net.IP
	jar    http.CookieJar // cookie identity; nil for a bearer user
	bearer string         // bearer identity; "" for a cookie user
	client *http.Client
	id     string // from GET /api/me
}

func dialerFrom(ip net.IP) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 2 * time.Second}
}

func newHTTPClient(ip net.IP, jar http.CookieJar) *http.Client {
	tr := &http.Transport{DialContext: dialerFrom(ip).DialContext, MaxIdleConnsPerHost: 4}
	return &http.Client{Transport: tr, Jar: jar, Timeout: 10 * time.Second}
}

// apiError is a non-2xx answer of the API.
type apiError struct {
	status int
	body   string
}

func (e *apiError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.status, e.body) }

// do sends a JSON request as u and decodes a 2xx answer into out.
func (u *user) do(method, url string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if u.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+u.bearer)
	}
	res, err := u.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode/100 != 2 {
		return &apiError{status: res.StatusCode, body: strings.TrimSpace(string(raw))}
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// newUser makes user n: a guest (cookie) or, with bearer, a user signed in
// by email code (read from the API's log) who then works with a token only.
func (c *cluster) newUser(n int, bearer bool) (*user, error) {
	ip := net.IPv4(127, 0, byte(1+n/200), byte(10+n%200))
	jar, _ := cookiejar.New(nil)
	u := &user{name: fmt.Sprintf("u%d", n), ip: ip, jar: jar, client: newHTTPClient(ip, jar)}
	api := n % 2
	base := c.base(api)
	if bearer {
		email := fmt.Sprintf("faults-u%d@example.com", n)
		if err := u.do("POST", base+"/api/auth/code", map[string]string{"email": email}, nil); err != nil {
			return nil, fmt.Errorf("ask a code for %s: %w", email, err)
		}
		code, err := c.signInCode(api, email)
		if err != nil {
			return nil, err
		}
		if err := u.do("POST", base+"/api/auth/login", map[string]string{"email": email, "code": code}, nil); err != nil {
			return nil, fmt.Errorf("sign in %s: %w", email, err)
		}
		var tok struct{ Token string }
		if err := u.do("POST", base+"/api/tokens", nil, &tok); err != nil || tok.Token == "" {
			return nil, fmt.Errorf("create a token for %s: %v %+v", email, err, tok)
		}
		u.name += "-bearer"
		u.bearer, u.jar = tok.Token, nil
		u.client = newHTTPClient(ip, nil)
	}
	var me struct{ ID string }
	if err := u.do("GET", base+"/api/me", nil, &me); err != nil || me.ID == "" {
		return nil, fmt.Errorf("GET /api/me as %s: %v", u.name, err)
	}
	u.id = me.ID
	return u, nil
}

// submitJob submits a steps job through API api and returns its id.
func (c *cluster) submitJob(u *user, api, steps, intervalMS int) (string, error) {
	var job struct{ ID string }
	body := map[string]any{"type": "steps", "params": map[string]int{"steps": steps, "interval_ms": intervalMS}}
	if err := u.do("POST", c.base(api)+"/api/jobs", body, &job); err != nil {
		return "", fmt.Errorf("submit as %s: %w", u.name, err)
	}
	return job.ID, nil
}

// jobView is what GET /api/jobs/ID says, as far as the ledger cares.
type jobView struct {
	ID      string `json:"id"`
	State   string `json:"state"`
	LastSeq int64  `json:"last_seq"`
	Epoch   string `json:"epoch"`
	Attempt int    `json:"attempt"`
}

// frame is any server frame of the socket.
type frame = wire.ServerFrame

// received is one event frame as a watcher got it.
type received struct {
	seq   int64
	epoch string
	name  string
	data  json.RawMessage
	at    time.Time
	conn  int // index into watcher.conns
}

// segment is a run of events of one group that the watcher holds as one
// history: it starts at the first subscribe, or when the server said
// recovered:false (told lost), or when events of a new epoch arrived
// without such a word (untold).
type segment struct {
	epoch    string
	toldLost bool
	untold   bool
	events   []received
	dups     int   // frames whose seq was not above the last one
	gaps     int64 // seqs skipped inside the segment
}

// groupState is a watcher's view of one group.
type groupState struct {
	name     string
	last     int64
	epoch    string
	segs     []*segment
	errors   []string // error frames answering its subscribes
	resubbed int
}

func (g *groupState) current() *segment {
	if len(g.segs) == 0 {
		return nil
	}
	return g.segs[len(g.segs)-1]
}

// connRecord is one socket of a watcher.
type connRecord struct {
	api       int
	opened    time.Time
	closed    time.Time // zero while open
	closeCode int       // websocket close code; 1006 when the TCP connection just ended
	closeErr  string
	byUs      bool // ended because the watcher stopped
}

// watcher is one browser tab: a socket to one API at a time, watching a
// set of groups, keeping each group's last seq and epoch, and resuming
// with after+epoch on another API when its socket ends.
type watcher struct {
	id    int
	u     *user
	c     *cluster
	home  int
	small bool // a tiny receive buffer (the slow reader)

	mu       sync.Mutex
	groups   map[string]*groupState
	order    []string
	conns    []connRecord
	dialErrs int
	ws       *websocket.Conn // current socket, nil between sockets
	wmu      sync.Mutex      // one writer at a time on ws
	refN     int
	paused   chan struct{} // non-nil while the watcher does not read

	cancel context.CancelFunc
	done   chan struct{}
}

func (c *cluster) newWatcher(id int, u *user, home int) *watcher {
	return &watcher{id: id, u: u, c: c, home: home, groups: map[string]*groupState{}}
}

func (w *watcher) String() string { return fmt.Sprintf("w%d(%s)", w.id, w.u.name) }

// start runs the watcher until stop.
func (w *watcher) start() {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel, w.done = cancel, make(chan struct{})
	go func() { defer close(w.done); w.run(ctx) }()
}

// stop ends the watcher and waits for it.
func (w *watcher) stop() {
	if w.cancel == nil {
		return
	}
	w.cancel()
	w.resume()
	<-w.done
}

// watch adds group to the watched set and subscribes it on the current
// socket (later sockets subscribe it when they open).
func (w *watcher) watch(group string) {
	w.mu.Lock()
	if w.groups[group] == nil {
		w.groups[group] = &groupState{name: group}
		w.order = append(w.order, group)
	}
	ws := w.ws
	w.mu.Unlock()
	if ws != nil {
		w.subscribe(ws, group)
	}
}

// subscribe sends a subscribe frame for group on ws: the full history the
// first time, then after its last seq with its epoch.
func (w *watcher) subscribe(ws *websocket.Conn, group string) {
	w.mu.Lock()
	g := w.groups[group]
	w.refN++
	ref, _ := json.Marshal("s" + strconv.Itoa(w.refN) + ":" + group)
	f := wire.ClientFrame{Op: wire.OpSubscribe, Group: group, Ref: ref}
	if g.last > 0 {
		after := g.last
		f.After, f.Epoch = &after, g.epoch
	}
	w.mu.Unlock()
	w.wmu.Lock()
	defer w.wmu.Unlock()
	_ = ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = ws.WriteJSON(f) // a failed write ends the socket; the reconnect subscribes again
}

// pause stops reading the socket (the slow reader); resume reads again.
func (w *watcher) pause() {
	w.mu.Lock()
	if w.paused == nil {
		w.paused = make(chan struct{})
	}
	w.mu.Unlock()
}

func (w *watcher) resume() {
	w.mu.Lock()
	if w.paused != nil {
		close(w.paused)
		w.paused = nil
	}
	w.mu.Unlock()
}

func (w *watcher) dial(ctx context.Context, api int) (*websocket.Conn, error) {
	nd := dialerFrom(w.u.ip)
	if w.small {
		// A receive buffer this small makes the server's writes back up
		// quickly once the watcher stops reading.
		nd.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	d := websocket.Dialer{NetDialContext: nd.DialContext, HandshakeTimeout: 3 * time.Second, Jar: w.u.jar}
	h := http.Header{}
	if w.u.bearer != "" {
		h.Set("Authorization", "Bearer "+w.u.bearer)
	}
	url := "ws" + strings.TrimPrefix(w.c.base(api), "http") + "/ws"
	ws, res, err := d.DialContext(ctx, url, h)
	if res != nil && res.Body != nil {
		res.Body.Close()
	}
	return ws, err
}

// run keeps one socket open at a time: on a close it moves to the other
// API, with a backoff (doubling from 100 ms to 1 s, with jitter) while
// dials fail.
func (w *watcher) run(ctx context.Context) {
	api := w.home
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		ws, err := w.dial(ctx, api)
		if err != nil {
			w.mu.Lock()
			w.dialErrs++
			w.mu.Unlock()
			sleepCtx(ctx, backoff/2+rand.N(backoff/2))
			backoff = min(2*backoff, time.Second)
			api = 1 - api
			continue
		}
		backoff = 100 * time.Millisecond
		w.mu.Lock()
		w.ws = ws
		w.conns = append(w.conns, connRecord{api: api, opened: time.Now()})
		conn := len(w.conns) - 1
		groups := append([]string(nil), w.order...)
		w.mu.Unlock()
		stopClose := context.AfterFunc(ctx, func() { ws.Close() })
		for _, g := range groups {
			w.subscribe(ws, g)
		}
		code, cerr := w.read(ctx, ws, conn)
		stopClose()
		ws.Close()
		w.mu.Lock()
		w.ws = nil
		rec := &w.conns[conn]
		rec.closed, rec.closeCode, rec.closeErr, rec.byUs = time.Now(), code, cerr, ctx.Err() != nil
		w.mu.Unlock()
		api = 1 - api // move to the other replica, as a client after 1001/1013/1006 would
		sleepCtx(ctx, 50*time.Millisecond+rand.N(100*time.Millisecond))
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// read handles frames until the socket ends and returns its close code.
func (w *watcher) read(ctx context.Context, ws *websocket.Conn, conn int) (int, string) {
	for {
		w.mu.Lock()
		paused := w.paused
		w.mu.Unlock()
		if paused != nil {
			select {
			case <-paused:
			case <-ctx.Done():
			}
		}
		_, data, err := ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				return ce.Code, err.Error()
			}
			return websocket.CloseAbnormalClosure, err.Error()
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			continue
		}
		w.handle(ws, conn, f)
	}
}

// handle records one frame in the ledger of its group.
func (w *watcher) handle(ws *websocket.Conn, conn int, f frame) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	switch f.Type {
	case "subscribed":
		g := w.groups[f.Group]
		if g == nil {
			return
		}
		switch {
		case !f.Recovered:
			// The history after our position is gone: start over from
			// what the server replays (the whole retained history).
			g.segs = append(g.segs, &segment{epoch: f.Epoch, toldLost: len(g.segs) > 0 || g.last > 0})
			g.last, g.epoch = 0, f.Epoch
		case len(g.segs) == 0:
			g.segs = append(g.segs, &segment{epoch: f.Epoch})
			g.epoch = f.Epoch
		}
	case "event":
		g := w.groups[f.Group]
		if g == nil {
			return
		}
		s := g.current()
		switch {
		case s == nil:
			s = &segment{epoch: f.Epoch}
			g.segs = append(g.segs, s)
		case s.epoch == "":
			s.epoch = f.Epoch // the group had no log when we subscribed
		case f.Epoch != s.epoch:
			// A new log without recovered:false: the client was not told.
			s = &segment{epoch: f.Epoch, untold: true}
			g.segs = append(g.segs, s)
			g.last = 0
		}
		if f.Seq <= g.last {
			s.dups++
		} else {
			// A history that starts past seq 1 (trimmed) is no gap; the
			// ledger checks where a job's history starts.
			// Progress events a slow socket was told it skipped
			// (conflation, docs/protocol.md) are no gap either.
			if f.Seq > g.last+1 && len(s.events) > 0 {
				s.gaps += max(f.Seq-g.last-1-int64(f.Skipped), 0)
			}
			g.last = f.Seq
		}
		g.epoch = f.Epoch
		s.events = append(s.events, received{seq: f.Seq, epoch: f.Epoch, name: f.Event, data: f.Data, at: now, conn: conn})
	case "error":
		var ref string
		_ = json.Unmarshal(f.Ref, &ref) // our refs are strings; anything else is not ours
		group, ok := strings.CutPrefix(ref, "s")
		if !ok {
			return
		}
		_, group, _ = strings.Cut(group, ":")
		g := w.groups[group]
		if g == nil {
			return
		}
		// A subscribe refused (Redis trouble, a restart): try again on
		// this socket after a moment, or the group would go silent.
		g.errors = append(g.errors, f.Code+": "+f.Message)
		g.resubbed++
		delay := time.Duration(min(g.resubbed, 10)) * 100 * time.Millisecond
		go func() {
			time.Sleep(delay)
			w.mu.Lock()
			same := w.ws == ws
			w.mu.Unlock()
			if same {
				w.subscribe(ws, group)
			}
		}()
	}
}

// snapshot returns a copy of the watcher's view of group.
func (w *watcher) snapshot(group string) *groupState {
	w.mu.Lock()
	defer w.mu.Unlock()
	g := w.groups[group]
	if g == nil {
		return &groupState{name: group}
	}
	cp := *g
	cp.segs = nil
	for _, s := range g.segs {
		sc := *s
		sc.events = append([]received(nil), s.events...)
		cp.segs = append(cp.segs, &sc)
	}
	cp.errors = append([]string(nil), g.errors...)
	return &cp
}

// groupNames returns the watched groups in the order they were added.
func (w *watcher) groupNames() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.order...)
}

func (w *watcher) connections() []connRecord {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]connRecord(nil), w.conns...)
}

// connectedTo reports the API of the open socket, or -1.
func (w *watcher) connectedTo() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ws == nil || len(w.conns) == 0 {
		return -1
	}
	return w.conns[len(w.conns)-1].api
}
