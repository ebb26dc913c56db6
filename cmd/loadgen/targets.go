package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/client"
	"taskstream/cmd/internal/inproc"
	"taskstream/progress"
	"taskstream/wire"
)

// Targets of the scenarios.
const (
	targetTaskstream = "taskstream"
	targetGorilla    = "gorilla"
	targetBoth       = "both"
)

// The packages built when no binary is given.
const (
	apiPackage     = "taskstream/cmd/api"
	gorillaPackage = "github.com/gorilla/websocket/examples/chat"
)

// target is a server the scenarios drive: taskstream's cmd/api or the
// reference, gorilla/websocket's chat example. Each scenario starts a
// fresh process, so memory and rooms never carry over.
type target interface {
	Name() string
	// Start starts a fresh server process and waits until it serves.
	Start(ctx context.Context) error
	// Stop ends the process (SIGTERM, then SIGKILL after 15 s).
	Stop()
	// PID is the running process's id.
	PID() int
	// Framing is how the target's messages split into frames.
	Framing() framing
	// Prepare makes the sessions of users simulated users (before the
	// memory baseline is read).
	Prepare(ctx context.Context, users int) error
	// Dial opens socket s for user u and, for taskstream, subscribes it
	// to the room: a fresh subscribe, or a resume from s's position.
	Dial(ctx context.Context, s *sock, u int, resume bool) error
	// Sender returns publisher i (its own socket, or an HTTP client).
	Sender(ctx context.Context, i int) (sender, error)
	// Protocol reports whether the target speaks taskstream's protocol
	// (subscribed frames, seqs, resume).
	Protocol() bool
}

// sender publishes one message text to the room.
type sender interface {
	send(ctx context.Context, text []byte) error
	close()
}

// proc is a server process loadgen started.
type proc struct {
	bin  string
	args []string
	env  []string
	log  string // the process's stdout and stderr go to this file
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done is closed
}

func (p *proc) start() error {
	out, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close() // the child has its own copy
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.bin, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return nil
}

// stop sends sig and waits up to grace for the exit, then kills. It
// returns how long the process took to exit and whether it was killed.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) (took time.Duration, killed bool) {
	if p.cmd == nil {
		return 0, false
	}
	t0 := time.Now()
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		killed = true
	}
	p.cmd = nil
	return time.Since(t0), killed
}

func (p *proc) pid() int {
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// tail is the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// waitServing polls until ok says the server serves, the process exits
// or 30 s pass.
func (p *proc) waitServing(ctx context.Context, ok func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for !ok() {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v): %s", filepath.Base(p.bin), p.err, p.tail())
		case <-ctx.Done():
			return fmt.Errorf("%s not serving: %w: %s", filepath.Base(p.bin), ctx.Err(), p.tail())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// buildBinary builds pkg (of this module or its dependencies) into dir
// with the go command; the working directory must be inside the module.
func buildBinary(ctx context.Context, pkg, dir string) (string, error) {
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s (run loadgen inside the taskstream module, or pass the binary): %w: %s", pkg, err, b)
	}
	return out, nil
}

// tsTarget is taskstream's cmd/api, started by loadgen with the given
// Redis, a fixed session secret (sessions survive a restart) and an admin
// token to publish with.
type tsTarget struct {
	bin, redisURL, prefix string
	extraEnv              []string
	subprotocol           string
	via                   string // publish path: viaAPI or viaRedis
	logDir                string

	addr, token, secret string
	ipBase              byte   // second byte of the users' loopback addresses, per Start
	group               string // the room of the current scenario
	p                   *proc
	users               []*client.Client
	cookies             []*dialCookies // users[i]'s Cookie header for socket dials
	pubHTTP             *http.Client
	rdb                 interface{ Close() error }
	log                 *progress.Log
}

func (t *tsTarget) Name() string   { return targetTaskstream }
func (t *tsTarget) Protocol() bool { return true }
func (t *tsTarget) PID() int       { return t.p.pid() }

func (t *tsTarget) Framing() framing {
	if t.subprotocol != "" {
		return lineFrames
	}
	return oneFrame
}

func (t *tsTarget) env() []string {
	env := []string{
		"ADDR=" + t.addr, "REDIS_URL=" + t.redisURL, "KEY_PREFIX=" + t.prefix,
		"SESSION_SECRET=" + t.secret, "ADMIN_TOKENS=" + t.token, "LOG_LEVEL=warn",
		// Every socket comes from 127.0.0.1: lift the per-address caps.
		"MAX_CONNS=19500", "MAX_CONNS_PER_IP=19500", "MAX_SOCKETS_PER_IP=19500",
	}
	return append(env, t.extraEnv...)
}

func (t *tsTarget) Start(ctx context.Context) error {
	addr, err := inproc.FreeAddr()
	if err != nil {
		return err
	}
	t.addr, t.token, t.secret = addr, randomToken(), randomToken()+randomToken()
	t.group = freshRoom()
	t.users, t.cookies = nil, nil
	t.ipBase = byte(1 + rand.IntN(254))
	t.p = &proc{bin: t.bin, log: filepath.Join(t.logDir, "api.log")}
	if err := t.start(ctx); err != nil {
		t.p.stop(syscall.SIGKILL, 5*time.Second)
		return err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	t.pubHTTP = &http.Client{Transport: tr}
	if t.via == viaRedis {
		rdb, err := progress.OpenRedis(ctx, t.redisURL, progress.ModeSingle)
		if err != nil {
			t.Stop()
			return err
		}
		t.rdb, t.log = rdb, progress.NewLog(rdb, progress.LogConfig{Prefix: t.prefix})
	}
	return nil
}

// start (re)starts the process on t.addr with the same settings.
func (t *tsTarget) start(ctx context.Context) error {
	t.p.env = t.env()
	if err := t.p.start(); err != nil {
		return err
	}
	hc := &http.Client{Timeout: time.Second}
	return t.p.waitServing(ctx, func() bool {
		res, err := hc.Get("http://" + t.addr + "/healthz")
		if err != nil {
			return false
		}
		_ = res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
}

// Restart stops the process with SIGTERM (it closes every socket with
// 1001; it is killed if it has not exited after 15 s) and starts it again
// on the same address; it returns when the new one serves, with what the
// old one did.
func (t *tsTarget) Restart(ctx context.Context) (string, error) {
	took, killed := t.p.stop(syscall.SIGTERM, 15*time.Second)
	what := fmt.Sprintf("the old process exited %s after SIGTERM", took.Round(time.Millisecond))
	if killed {
		what = fmt.Sprintf("the old process had not exited %s after SIGTERM and was killed (its log ends: %q)", took.Round(time.Millisecond), lastLine(t.p.tail()))
	}
	return what, t.start(ctx)
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func (t *tsTarget) Stop() {
	if t.p != nil {
		t.p.stop(syscall.SIGTERM, 15*time.Second)
	}
	if t.rdb != nil {
		_ = t.rdb.Close()
		t.rdb, t.log = nil, nil
	}
	if t.pubHTTP != nil {
		t.pubHTTP.CloseIdleConnections()
	}
	for _, u := range t.users {
		u.HTTPClient().CloseIdleConnections()
	}
}

func (t *tsTarget) Prepare(ctx context.Context, users int) error {
	t.users = make([]*client.Client, users)
	t.cookies = make([]*dialCookies, users)
	for i := range t.users {
		jar, _ := cookiejar.New(nil) // never fails without options
		u, err := client.New(client.Config{BaseURL: "http://" + t.addr, HTTPClient: &http.Client{Jar: jar}})
		if err != nil {
			return err
		}
		if _, err := u.Me(ctx); err != nil {
			return fmt.Errorf("a session for user %d: %w", i, err)
		}
		t.users[i] = u
		// The jar keeps cookies by http(s) URL: the dialer, too, asks it
		// for the socket's URL with the scheme made http.
		if t.cookies[i], err = newDialCookies(jar, "http://"+t.addr+"/ws"); err != nil {
			return err
		}
	}
	return nil
}

func (t *tsTarget) socketURL() string { return "ws://" + t.addr + "/ws" }

func (t *tsTarget) Dial(ctx context.Context, s *sock, u int, resume bool) error {
	d := websocket.Dialer{HandshakeTimeout: 15 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 512}
	if t.subprotocol != "" {
		d.Subprotocols = []string{t.subprotocol}
	}
	ck := t.cookies[u%len(t.cookies)]
	res, err := dialSockHeader(ctx, d, t.socketURL(), ck.get(), t.userIP(u), s)
	ck.saw(res)
	if err != nil {
		return err
	}
	// A fresh subscribe asks from seq 0 (the room's retained history, as
	// the chat page does); a resume from the last seq seen, in its epoch.
	var after int64
	f := wire.ClientFrame{Op: wire.OpSubscribe, Group: t.group, After: &after, Ref: json.RawMessage(`"1"`)}
	if resume {
		after, f.Epoch = s.lastSeq, s.epoch
	}
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	s.subscribed = false
	return s.ws.WriteMessage(websocket.TextMessage, b)
}

// userIP is the loopback address user u's sockets come from. Each user
// has its own, as real users do: the server charges new guests to their
// address (60 an hour by default, kept in Redis across runs), so the
// addresses differ from run to run too (127.B.x.y, B random per Start).
func (t *tsTarget) userIP(u int) net.IP {
	return net.IPv4(127, t.ipBase, byte(u/250), byte(1+u%250))
}

func (t *tsTarget) Sender(ctx context.Context, i int) (sender, error) {
	if t.via == viaRedis {
		return logSender{t.log, t.group}, nil
	}
	c, err := client.New(client.Config{BaseURL: "http://" + t.addr, Token: t.token, HTTPClient: t.pubHTTP})
	if err != nil {
		return nil, err
	}
	return apiSender{c, t.group}, nil
}

// apiSender publishes with POST /api/publish and the admin token.
type apiSender struct {
	c     *client.Client
	group string
}

func (a apiSender) send(ctx context.Context, text []byte) error {
	_, err := a.c.Publish(ctx, client.PublishEvent{Group: a.group, Event: wire.EventMessage, Data: textData(text)})
	return err
}
func (apiSender) close() {}

// logSender appends to the room's log in Redis, as workers do.
type logSender struct {
	log   *progress.Log
	group string
}

func (l logSender) send(ctx context.Context, text []byte) error {
	_, err := l.log.Publish(ctx, l.group, wire.EventMessage, textData(text))
	return err
}
func (logSender) close() {}

// textData is a chat message's data, {"text": "..."}; the stamped text
// needs no escaping.
func textData(text []byte) json.RawMessage {
	b := make([]byte, 0, len(text)+12)
	b = append(b, `{"text":"`...)
	b = append(b, text...)
	return append(b, `"}`...)
}

// gorillaTarget is gorilla/websocket's examples/chat: every text message
// a client sends goes to every client; queued messages leave merged into
// one message, separated by '\n'.
type gorillaTarget struct {
	bin, logDir string
	addr        string
	p           *proc
}

func (g *gorillaTarget) Name() string                       { return targetGorilla }
func (g *gorillaTarget) Protocol() bool                     { return false }
func (g *gorillaTarget) PID() int                           { return g.p.pid() }
func (g *gorillaTarget) Framing() framing                   { return lineFrames }
func (g *gorillaTarget) Prepare(context.Context, int) error { return nil }
func (g *gorillaTarget) Stop()                              { g.p.stop(syscall.SIGTERM, 15*time.Second) }
func (g *gorillaTarget) url() string                        { return "ws://" + g.addr + "/ws" }
func (g *gorillaTarget) dialer() websocket.Dialer {
	return websocket.Dialer{HandshakeTimeout: 15 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 1024}
}
func (g *gorillaTarget) Dial(ctx context.Context, s *sock, _ int, _ bool) error {
	return dialSock(ctx, g.dialer(), g.url(), nil, s)
}

func (g *gorillaTarget) Start(ctx context.Context) error {
	addr, err := inproc.FreeAddr()
	if err != nil {
		return err
	}
	g.addr = addr
	g.p = &proc{bin: g.bin, args: []string{"-addr", addr}, log: filepath.Join(g.logDir, "gorilla.log")}
	if err := g.p.start(); err != nil {
		return err
	}
	err = g.p.waitServing(ctx, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	})
	if err != nil {
		g.p.stop(syscall.SIGKILL, 5*time.Second)
	}
	return err
}

// Sender is a socket of its own; the example echoes every message to it
// too, so a goroutine reads and drops what arrives (an unread socket
// would be dropped by the example once 256 messages queue).
func (g *gorillaTarget) Sender(ctx context.Context, _ int) (sender, error) {
	s := &sock{id: -1}
	if err := dialSock(ctx, g.dialer(), g.url(), nil, s); err != nil {
		return nil, err
	}
	ws := &wsSender{ws: s.ws, done: make(chan struct{})}
	go func() {
		defer close(ws.done)
		for {
			if _, _, err := s.ws.NextReader(); err != nil {
				return
			}
		}
	}()
	return ws, nil
}

// wsSender publishes by sending on its socket.
type wsSender struct {
	ws   *websocket.Conn
	done chan struct{} // closed when its drain reader ended
}

func (w *wsSender) send(_ context.Context, text []byte) error {
	return w.ws.WriteMessage(websocket.TextMessage, text)
}

func (w *wsSender) close() {
	_ = w.ws.Close()
	<-w.done
}

// freshRoom is a room nobody used: no history from an earlier run.
func freshRoom() string {
	return wire.ChatGroup("load-" + randomToken()[:8]).String()
}

// rssOf is a process's VmRSS in bytes.
func rssOf(pid int) (int64, error) {
	if pid == 0 {
		return 0, errors.New("no server process")
	}
	m, err := readMemory(pid)
	return m.RSS, err
}
