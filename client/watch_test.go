package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/client"
	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/web"
	"taskstream/wire"
)

// transports are the two ways a watch travels.
var transports = []struct {
	name string
	opts []client.WatchOption
}{
	{"socket", nil},
	{"sse", []client.WatchOption{client.ViaSSE()}},
}

// publishN publishes n notifications to group, calling between(i) after
// the i-th (from 1).
func publishN(t *testing.T, log *progress.Log, group string, n int, between func(i int)) {
	t.Helper()
	for i := 1; i <= n; i++ {
		if _, err := log.Publish(context.Background(), group, wire.EventNotification, map[string]any{"title": fmt.Sprint(i)}); err != nil {
			t.Error(err)
			return
		}
		if between != nil {
			between(i)
		}
	}
}

// nextN reads n events, failing on any error, and checks they are seqs
// from+1 … from+n of one epoch.
func nextN(t *testing.T, w *client.Watcher, from int64, n int) []client.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var got []client.Event
	for len(got) < n {
		ev, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("after %d events: %v", len(got), err)
		}
		epoch := ev.Epoch // the first event's epoch is the one every event must share
		if len(got) > 0 {
			epoch = got[0].Epoch
		}
		if want := from + int64(len(got)) + 1; ev.Seq != want || ev.Epoch != epoch {
			t.Fatalf("event %+v, want seq %d of epoch %q", ev.EventFrame, want, epoch)
		}
		got = append(got, ev)
	}
	return got
}

// A watch whose connection is cut again and again while events are
// published delivers every event once, in order, over a socket and over
// SSE; it did reconnect.
func TestWatchResumesAcrossCuts(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{noWorker: true})
		for _, tr := range transports {
			t.Run(tr.name, func(t *testing.T) {
				proxy := newCutter(t, strings.TrimPrefix(s.URL, "http://"))
				c, err := client.New(client.Config{BaseURL: proxy.URL(), Token: adminToken,
					Watch: client.WatchConfig{MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond}})
				if err != nil {
					t.Fatal(err)
				}
				group := wire.UserGroup("cuts-" + tr.name).String()
				w, err := c.Watch(context.Background(), group, client.Position{}, tr.opts...)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				const n = 200
				done := make(chan struct{})
				go func() {
					defer close(done)
					publishN(t, s.log, group, n, func(i int) {
						if i%40 == 0 {
							proxy.cut()
						}
					})
				}()
				nextN(t, w, 0, n)
				<-done
				if proxy.accepted.Load() < 2 {
					t.Fatalf("%d connections: the watch never reconnected", proxy.accepted.Load())
				}
			})
		}
	})
}

// A position the log no longer has is reported by Next as a
// *NotRecoveredError before the retained history, which then comes from
// seq 1; so is a log lost while watching (Redis restarted empty).
func TestWatchNotRecovered(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{noWorker: true})
		c := newClient(t, s, client.Config{Token: adminToken})
		ctx := context.Background()
		for _, tr := range transports {
			t.Run(tr.name, func(t *testing.T) {
				group := wire.UserGroup("lost-" + tr.name).String()
				publishN(t, s.log, group, 3, nil)
				from := client.Position{Seq: 2, Epoch: "an-epoch-long-gone"}
				w, err := c.Watch(ctx, group, from, tr.opts...)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				_, err = w.Next(ctx)
				var lost *client.NotRecoveredError
				if !errors.As(err, &lost) || lost.Group != group || lost.From != from || lost.Epoch == from.Epoch || lost.LastSeq != 3 {
					t.Fatalf("first Next: %v, want a *NotRecoveredError", err)
				}
				nextN(t, w, 0, 3)
			})
		}
		t.Run("log lost while watching", func(t *testing.T) {
			group := wire.UserGroup("restart").String()
			w, err := c.Watch(ctx, group, client.Position{})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			publishN(t, s.log, group, 2, nil)
			before := nextN(t, w, 0, 2)
			srv.Restart(t)
			// Publish until the watch hears of it: the hub notices the
			// new log when its subscription comes back.
			var lost *client.NotRecoveredError
			pubCtx, stop := context.WithCancel(ctx)
			defer stop()
			go func() {
				for pubCtx.Err() == nil {
					_, _ = s.log.Publish(pubCtx, group, wire.EventNotification, map[string]any{"title": "after"})
					time.Sleep(20 * time.Millisecond)
				}
			}()
			for {
				ev, err := w.Next(ctx)
				if errors.As(err, &lost) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if ev.Epoch == before[0].Epoch {
					continue // still the old log's
				}
				t.Fatalf("an event of the new log %+v before a *NotRecoveredError", ev.EventFrame)
			}
			if lost.From != before[1].Position() || lost.Epoch == before[0].Epoch {
				t.Fatalf("%+v", lost)
			}
			// lost.Epoch is the log's when the hub read it: "" if nothing
			// was published to the new log yet.
			if ev, err := w.Next(ctx); err != nil || ev.Seq != 1 || ev.Epoch == before[0].Epoch || (lost.Epoch != "" && ev.Epoch != lost.Epoch) {
				t.Fatalf("after the loss (%+v): %+v %v, want seq 1 of the new epoch", lost, ev.EventFrame, err)
			}
		})
	})
}

// logRecords is a slog.Handler that keeps every record's attributes.
type logRecords struct {
	mu      sync.Mutex
	records []map[string]any
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	m := map[string]any{"msg": r.Message}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.Any(); return true })
	l.mu.Lock()
	l.records = append(l.records, m)
	l.mu.Unlock()
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// find returns the first record for which ok holds.
func (l *logRecords) find(ok func(map[string]any) bool) map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.records {
		if ok(r) {
			return r
		}
	}
	return nil
}

// With Redis frozen, the server answers a subscribe by closing with 1013;
// the watch backs off at least TryAgainBackoff, comes back once Redis
// does, and delivers.
func TestWatchBacksOffOn1013(t *testing.T) {
	srv := progresstest.Real(t)
	s := newServer(t, srv, serverOptions{noWorker: true, hub: progress.HubConfig{AnswerTimeout: 200 * time.Millisecond}})
	records := &logRecords{}
	const tryAgain = 300 * time.Millisecond
	c := newClient(t, s, client.Config{Token: adminToken, Watch: client.WatchConfig{
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, TryAgainBackoff: tryAgain, Logger: slog.New(records)}})
	ctx := context.Background()
	group := wire.UserGroup("frozen").String()
	eventually(t, "ready", func() bool { return c.Ready(ctx) == nil })
	srv.Pause(t)
	w, err := c.Watch(ctx, group, client.Position{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	is1013 := func(r map[string]any) bool {
		err, _ := r["err"].(error)
		var ce *client.CloseError
		return errors.As(err, &ce) && ce.Code == wire.CloseTryAgain
	}
	eventually(t, "a 1013 close", func() bool { return records.find(is1013) != nil })
	srv.Resume()
	publishN(t, s.log, group, 1, nil)
	nextN(t, w, 0, 1)
	if delay, _ := records.find(is1013)["delay"].(time.Duration); delay < tryAgain {
		t.Fatalf("reconnected %v after a 1013, want at least %v", delay, tryAgain)
	}
}

// httpProxy is a reverse proxy in front of target that counts socket
// upgrades and SSE streams; with refuse set it refuses every upgrade with
// that status, as a proxy that does not speak WebSocket does.
type httpProxy struct {
	*httptest.Server
	upgrades, streams atomic.Int64
}

func newProxy(t *testing.T, target string, refuse int) *httpProxy {
	u, _ := url.Parse(target)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1 // pass SSE through as it comes
	rp.ErrorLog = log.New(io.Discard, "", 0)
	p := &httpProxy{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if websocket.IsWebSocketUpgrade(r) {
			p.upgrades.Add(1)
			if refuse != 0 {
				http.Error(w, "this proxy does not pass WebSockets", refuse)
				return
			}
		}
		if strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
			p.streams.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

// Behind a proxy that refuses the upgrade (whatever status it answers),
// a watch falls back to SSE by itself and follows a job to its end.
func TestWatchFallsBackToSSE(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{web: web.Config{JobRate: 1000, JobBurst: 1000}})
		for _, status := range []int{http.StatusBadRequest, http.StatusUpgradeRequired, http.StatusBadGateway} {
			t.Run(fmt.Sprint(status), func(t *testing.T) {
				proxy := newProxy(t, s.URL, status)
				c, err := client.New(client.Config{BaseURL: proxy.URL, Watch: client.WatchConfig{MinBackoff: time.Millisecond}})
				if err != nil {
					t.Fatal(err)
				}
				ctx := context.Background()
				job, err := c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: map[string]any{"steps": 5, "interval_ms": 1}})
				if err != nil {
					t.Fatal(err)
				}
				w, err := c.Watch(ctx, job.Group(), client.Position{})
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				var last client.Event
				for n := int64(1); ; n++ {
					ev, err := w.Next(ctx)
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil || ev.Seq != n {
						t.Fatalf("event %d: %+v %v", n, ev.EventFrame, err)
					}
					last = ev
				}
				if !last.Final() || last.Event != wire.EventResult {
					t.Fatalf("last event %+v", last.EventFrame)
				}
				if proxy.upgrades.Load() != 1 || proxy.streams.Load() < 1 {
					t.Fatalf("%d upgrades refused, %d streams: want 1 refusal and then SSE", proxy.upgrades.Load(), proxy.streams.Load())
				}
			})
		}
	})
}

// A watch of someone else's job ends with the server's *Error, over a
// socket and over SSE alike.
func TestWatchForbidden(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{noWorker: true})
		ctx := context.Background()
		owner := newClient(t, s, client.Config{})
		job, err := owner.Submit(ctx, client.SubmitRequest{Type: "steps", Params: map[string]any{"steps": 1}})
		if err != nil {
			t.Fatal(err)
		}
		other := newClient(t, s, client.Config{})
		for _, tr := range transports {
			t.Run(tr.name, func(t *testing.T) {
				w, err := other.Watch(ctx, job.Group(), client.Position{}, tr.opts...)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				_, err = w.Next(ctx)
				if !client.IsCode(err, wire.CodeForbidden) {
					t.Fatalf("Next: %v, want forbidden", err)
				}
				if _, again := w.Next(ctx); again != err {
					t.Fatalf("Next after the end: %v", again)
				}
			})
		}
		if _, err := other.Watch(ctx, "not a group", client.Position{}); err == nil {
			t.Fatal("a bad group name was accepted")
		}
	})
}

// jobLog is what a WatchMany test saw of one job.
type jobLog struct {
	seqs  []int64
	final bool
}

// One socket watches 500 jobs submitted as fast as the server takes them,
// each added the moment it is submitted: every event of every job
// arrives, in order, with no error at all (no rate_limited, no cap), and
// the watch never reconnected.
func TestWatchManyJobs(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{web: web.Config{JobRate: 100000, JobBurst: 100000}})
		proxy := newProxy(t, s.URL, 0)
		c, err := client.New(client.Config{BaseURL: proxy.URL})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		w := c.WatchMany(ctx)
		defer w.Close()
		// 500 jobs: 1,000 subscribes and unsubscribes, ten times the
		// server's frame burst. The embedded Redis is about ten times
		// slower, so it runs fewer (the same code path).
		n := 500
		if srv.Miniredis() != nil {
			n = 150
		}
		submitted := make(chan error, 1)
		go func() {
			for range n {
				job, err := c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: map[string]any{"steps": 2, "interval_ms": 0}})
				if err != nil {
					submitted <- err
					return
				}
				if err := w.Add(job.Group(), client.Position{}); err != nil {
					submitted <- err
					return
				}
			}
			submitted <- nil
		}()
		jobs := map[string]*jobLog{}
		finished := 0
		for finished < n {
			ev, err := w.Next(ctx)
			if err != nil {
				t.Fatalf("after %d jobs finished: %v", finished, err)
			}
			j := jobs[ev.Group]
			if j == nil {
				j = &jobLog{}
				jobs[ev.Group] = j
			}
			// In order, with no gap but the progress events the server
			// conflated for a socket that fell behind (Skipped).
			prev := int64(0)
			if len(j.seqs) > 0 {
				prev = j.seqs[len(j.seqs)-1]
			}
			if j.final || ev.Seq != prev+1+int64(ev.Skipped) {
				t.Fatalf("%s: seq %d (skipped %d) after %v (final %v)", ev.Group, ev.Seq, ev.Skipped, j.seqs, j.final)
			}
			j.seqs = append(j.seqs, ev.Seq)
			if ev.Final() {
				j.final = true
				finished++
			}
		}
		if err := <-submitted; err != nil {
			t.Fatal(err)
		}
		if len(jobs) != n {
			t.Fatalf("%d jobs seen", len(jobs))
		}
		if got := proxy.upgrades.Load(); got != 1 {
			t.Fatalf("%d sockets opened, want one", got)
		}
	})
}

// WatchMany reports a group it may not watch as an *Error with that
// group, and goes on with the others.
func TestWatchManyRefusesPerGroup(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c := newClient(t, s, client.Config{})
		other := newClient(t, s, client.Config{})
		theirs, err := other.Submit(ctx, client.SubmitRequest{Type: "steps", Params: map[string]any{"steps": 1}})
		if err != nil {
			t.Fatal(err)
		}
		mine, err := c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: map[string]any{"steps": 1, "interval_ms": 0}})
		if err != nil {
			t.Fatal(err)
		}
		w := c.WatchMany(ctx)
		defer w.Close()
		for _, g := range []string{theirs.Group(), mine.Group(), wire.UserGroup("someone-else").String()} {
			if err := w.Add(g, client.Position{}); err != nil {
				t.Fatal(err)
			}
		}
		want := map[string]string{theirs.Group(): wire.CodeForbidden, "user:someone-else": wire.CodeForbidden}
		// The refusals and mine's events come in no set order across
		// groups (mine's job may be over, its final event in the replay,
		// before the last refusal is sent): read until all are in.
		refused := map[string]string{}
		for final := false; !final || len(refused) < len(want); {
			ev, err := w.Next(ctx)
			var e *client.Error
			if errors.As(err, &e) && e.Group != "" {
				refused[e.Group] = e.Code
				continue
			}
			if err != nil {
				t.Fatalf("%v (refused so far: %v)", err, refused)
			}
			if ev.Group != mine.Group() {
				t.Fatalf("an event of %s", ev.Group)
			}
			final = final || ev.Final()
		}
		for g, code := range want {
			if refused[g] != code {
				t.Errorf("%s: %q, want %s (all: %v)", g, refused[g], code, refused)
			}
		}
	})
}

// Close ends a watch: Next returns ErrClosed.
func TestWatchClose(t *testing.T) {
	s := newServer(t, progresstest.Embedded(t), serverOptions{noWorker: true})
	c := newClient(t, s, client.Config{Token: adminToken})
	var subscribed atomic.Int64
	w, err := c.Watch(context.Background(), "user:x", client.Position{}, client.OnSubscribed(func(f wire.SubscribedFrame) {
		if f.Group == "user:x" {
			subscribed.Add(1)
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "subscribed", func() bool { return subscribed.Load() == 1 })
	_ = w.Close()
	if _, err := w.Next(context.Background()); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
	eventually(t, "the socket closed", func() bool { return s.web.ConnCount() == 0 })
}

// An SSE stream that goes silent (a proxy holding it open, no heartbeat
// coming through) is given up after ReadTimeout, and the watch resumes
// on a new one.
func TestWatchSSEGivesUpASilentStream(t *testing.T) {
	s := newServer(t, progresstest.Embedded(t), serverOptions{noWorker: true})
	target, _ := url.Parse(s.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	var streams atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Accept"), "text/event-stream") && streams.Add(1) == 1 {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-r.Context().Done() // the first stream never says a word
			return
		}
		rp.ServeHTTP(w, r)
	}))
	defer proxy.Close()
	c, err := client.New(client.Config{BaseURL: proxy.URL, Token: adminToken,
		Watch: client.WatchConfig{ReadTimeout: 200 * time.Millisecond, MinBackoff: time.Millisecond, SSE: true}})
	if err != nil {
		t.Fatal(err)
	}
	group := wire.UserGroup("silent").String()
	publishN(t, s.log, group, 2, nil)
	w, err := c.Watch(context.Background(), group, client.Position{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	nextN(t, w, 0, 2)
	if streams.Load() < 2 {
		t.Fatalf("%d streams", streams.Load())
	}
}

// WatchMany subscribes at most MaxGroups groups at once: the others wait,
// in the order added, until a slot frees (here by Remove).
func TestWatchManyWaitsForASlot(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{noWorker: true})
		c := newClient(t, s, client.Config{Token: adminToken, Watch: client.WatchConfig{MaxGroups: 3, SubscribeInterval: time.Millisecond}})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		groups := make([]string, 6)
		for i := range groups {
			groups[i] = wire.UserGroup(fmt.Sprintf("slot%d", i)).String()
			publishN(t, s.log, groups[i], 1, nil)
		}
		var subscribed atomic.Int64
		w := c.WatchMany(ctx, client.OnSubscribed(func(wire.SubscribedFrame) { subscribed.Add(1) }))
		defer w.Close()
		for _, g := range groups {
			if err := w.Add(g, client.Position{}); err != nil {
				t.Fatal(err)
			}
		}
		seen := map[string]bool{}
		for len(seen) < 3 {
			ev, err := w.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			seen[ev.Group] = true
		}
		for _, g := range groups[:3] {
			if !seen[g] {
				t.Fatalf("the first three groups should be watched first; saw %v", seen)
			}
		}
		if n := subscribed.Load(); n != 3 {
			t.Fatalf("%d groups subscribed with 3 slots", n)
		}
		w.Remove(groups[1])
		if ev, err := w.Next(ctx); err != nil || ev.Group != groups[3] {
			t.Fatalf("after a slot freed: %+v %v, want %s's event", ev.EventFrame, err, groups[3])
		}
		if n := subscribed.Load(); n != 4 {
			t.Fatalf("%d groups subscribed after one slot freed", n)
		}
	})
}

// A chat room's subscribed answer carries who is in the room: a watch
// that joins after another user finds them in OnSubscribed's Users.
func TestWatchChatSubscribedUsers(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{noWorker: true})
		ada := newClient(t, s, client.Config{})
		if _, err := ada.SetName(t.Context(), "ada"); err != nil {
			t.Fatal(err)
		}
		conn, err := ada.Dial(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		if _, err := conn.Join(wire.ChatGroup("users").String(), client.Position{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "ada in the room", func() bool {
			list, err := ada.Presence(t.Context(), "users")
			return err == nil && len(list) == 1
		})
		bob := newClient(t, s, client.Config{})
		users := make(chan []client.Member, 1)
		w, err := bob.Watch(t.Context(), wire.ChatGroup("users").String(), client.Position{}, client.OnSubscribed(func(f wire.SubscribedFrame) {
			select {
			case users <- f.Users:
			default:
			}
		}))
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		select {
		case got := <-users:
			if len(got) != 1 || got[0].Name != "ada" {
				t.Fatalf("subscribed users %v, want ada", got)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no subscribed answer")
		}
	})
}
