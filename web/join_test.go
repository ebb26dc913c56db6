package web

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
	"taskstream/web/auth"
	"taskstream/wire"
)

// userTrips counts the round trips of a Redis client that carry a
// command about one user: one naming the user's id among its arguments
// (the user's key, its limits' keys).
type userTrips struct {
	mu sync.Mutex
	id string
	n  int
}

// watch starts counting from zero for user id.
func (h *userTrips) watch(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.id, h.n = id, 0
}

func (h *userTrips) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

func (h *userTrips) saw(cmds []redis.Cmder) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.id == "" {
		return
	}
	for _, cmd := range cmds {
		for _, a := range cmd.Args() {
			if s, ok := a.(string); ok && strings.Contains(s, h.id) {
				h.n++
				return
			}
		}
	}
}

// hook records h's round trips as a go-redis hook.
func (h *userTrips) hook() redis.Hook { return progresstest.CommandHook(h.saw) }

// subscribeOK subscribes ws to group and reads until its subscribed frame.
func subscribeOK(t *testing.T, ws *wsClient, group string) {
	t.Helper()
	ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: group, Ref: json.RawMessage(`"s"`)})
	for {
		f := ws.read()
		if f.Type == wire.TypeError {
			t.Fatalf("subscribe %s: %+v", group, f)
		}
		if f.Type == wire.TypeSubscribed && f.Group == group {
			return
		}
	}
}

// A guest's first socket in a chat room waits for two Redis round trips
// of the auth store: its upgrade's session read, and its join's (store
// the guest, the join limit and the current name, in one script, where
// they were four round trips in a row). The user's other sockets make
// none for the join, the first socket's join of another room one, and a
// chat message one (the chat limit and the author's name).
func TestFirstJoinRoundTrips(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		trips := &userTrips{}
		// No credential recheck during the test: it would read the user.
		e := newEnv(t, srv, withoutWorker(), withAuthHook(trips.hook()), withWebConfig(Config{CredentialRecheck: time.Hour}))
		room, other := wire.ChatGroup("trips").String(), wire.ChatGroup("trips-2").String()
		// Another user joins first: the server's scripts are loaded, as
		// on a server that has served a moment.
		warm := e.newBrowser()
		e.me(warm)
		subscribeOK(t, e.dialAs(warm), room)

		c := e.newBrowser()
		trips.watch(e.me(c)) // a guest in its cookie alone: nothing stored yet
		var first *wsClient
		cases := []struct {
			name string
			do   func()
			want int
		}{
			{"the user's first socket in the room", func() {
				first = e.dialAs(c)
				subscribeOK(t, first, room)
			}, 2},
			{"the user's second socket in the room", func() { subscribeOK(t, e.dialAs(c), room) }, 1},
			{"the first socket's join of another room", func() { subscribeOK(t, first, other) }, 1},
			{"a chat message", func() {
				first.send(wire.ClientFrame{Op: wire.OpPublish, Group: room, Data: json.RawMessage(`{"text":"hi"}`), Ref: json.RawMessage(`"p"`)})
				first.readUntil(func(f frame) bool {
					if f.Type == wire.TypeError {
						t.Fatalf("publish: %+v", f)
					}
					return f.Type == wire.TypePublished
				})
			}, 1},
		}
		for _, tc := range cases {
			trips.watch(trips.id)
			tc.do()
			if got := trips.count(); got != tc.want {
				t.Errorf("%s: %d round trips of the auth store, want %d", tc.name, got, tc.want)
			}
		}
	})
}

// A first join still keeps every limit: a new guest over its address's
// budget, and a user over the join limit, get an error frame rate_limited
// for the group with the subscribe's ref, and the socket stays open.
func TestFirstJoinLimits(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		room := wire.ChatGroup("limits").String()
		cases := []struct {
			name string
			// refused returns a socket whose join of room is refused.
			refused func(t *testing.T, e *testEnv) *wsClient
			message string // in the error frame's message
		}{
			{"a new guest over its address's budget", func(t *testing.T, e *testEnv) *wsClient {
				for range 2 { // the address's budget: cookieless sockets, each a new guest
					subscribeOK(t, e.dialAs(e.newBrowser()), room)
				}
				return e.dialAs(e.newBrowser())
			}, "new guests"},
			{"a user over the join limit", func(t *testing.T, e *testEnv) *wsClient {
				c := e.newBrowser()
				id := e.me(c)
				// The user's join bucket, taken far ahead: the join limit
				// (1 a second, burst 20) refuses until then.
				if wait, err := e.auth.Allow(t.Context(), "join:"+id, 1.0/7200, 1); err != nil || wait != 0 {
					t.Fatalf("taking the join bucket: %v %v", wait, err)
				}
				return e.dialAs(c)
			}, "joining rooms too often"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				if err := srv.Client(t).FlushAll(t.Context()).Err(); err != nil {
					t.Fatal(err)
				}
				e := newEnv(t, srv, withoutWorker(), withAuthConfig(func(c *auth.Config) { c.NewGuestsPerIP = 2 }))
				ws := tc.refused(t, e)
				ws.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: room, Ref: json.RawMessage(`"r"`)})
				f := ws.read()
				if f.Type != wire.TypeError || f.Code != CodeRateLimited || f.Group != room || string(f.Ref) != `"r"` || !strings.Contains(f.Message, tc.message) {
					t.Fatalf("the refused join's answer: %+v, want an error frame rate_limited about %q", f, tc.message)
				}
				ws.send(wire.ClientFrame{Op: wire.OpPing, Ref: json.RawMessage(`"x"`)})
				if f := ws.read(); f.Type != wire.TypePong {
					t.Fatalf("after the refusal: %+v, want the socket open (pong)", f)
				}
			})
		}
	})
}
