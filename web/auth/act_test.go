package auth

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

// actBackend is a Redis Act runs against: ForEach's (one script) or a
// Redis Cluster (the steps).
type actBackend struct {
	rdb     redis.UniversalClient
	cluster bool
}

// forEachActBackend runs body against the embedded Redis, a redis-server
// and a 3-master Redis Cluster of redis-servers (skipped without the
// binary, as progresstest.Real is when it is allowed to be).
func forEachActBackend(t *testing.T, body func(t *testing.T, b actBackend)) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		body(t, actBackend{rdb: srv.Client(t)})
	})
	t.Run("cluster", func(t *testing.T) {
		body(t, actBackend{rdb: progresstest.NewCluster(t, 3).Client(t), cluster: true})
	})
}

// countCommands counts the commands a client sends, alone or in
// pipelines, leaving out a new connection's setup (HELLO, CLIENT
// SETINFO): go-redis keeps pipelines' connections in a pool of their
// own, so the first command after progress.LoadScripts (a pipeline) may
// open one.
type countCommands struct{ n atomic.Int64 }

// hook counts c's commands as a go-redis hook.
func (c *countCommands) hook() redis.Hook {
	return progresstest.CommandHook(func(cmds []redis.Cmder) {
		for _, cmd := range cmds {
			if name := cmd.Name(); name != "hello" && name != "client" {
				c.n.Add(1)
			}
		}
	})
}

// loadScripts loads the process's scripts (on every master of a
// cluster), as a process does at start: a count of commands
// then leaves out the first run's NOSCRIPT retries.
func loadScripts(t *testing.T, rdb redis.UniversalClient) {
	t.Helper()
	if _, err := progress.LoadScripts(t.Context(), rdb); err != nil {
		t.Fatal(err)
	}
}

// An action's preparation (store the guest, take one from the action's
// limit, read the current name) is one command on one Redis, whatever
// the principal; on a Redis Cluster it takes the steps, without the
// name's read when the guest's own read was one of them. Each answer has
// the stored guest and the current name.
func TestActRoundTrips(t *testing.T) {
	forEachActBackend(t, func(t *testing.T, b actBackend) {
		s, err := NewStore(b.rdb, Config{Secret: testSecret})
		if err != nil {
			t.Fatal(err)
		}
		if s.cluster != b.cluster {
			t.Fatalf("the store takes the client for a cluster: %v, want %v", s.cluster, b.cluster)
		}
		ctx := t.Context()
		loadScripts(t, b.rdb)
		const ip = "192.0.2.1"
		// storedGuest returns a guest's cookie principal (never stored)
		// and its principal once stored and named name.
		storedGuest := func(name string) (Principal, Principal) {
			p, _ := s.NewGuest()
			sp, err := s.Materialize(ctx, p, ip)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.SetName(ctx, p.User.ID, name); err != nil {
				t.Fatal(err)
			}
			return p, sp
		}
		member := User{ID: "u" + randomID(12), Name: "Cy", Email: "cy@example.com"}
		if err := s.saveUser(ctx, member, 0); err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name     string
			p        func() Principal
			wantName string // "": the guest's default name
			single   int64  // commands on one Redis
			cluster  int64  // commands on a Redis Cluster
		}{
			{"a new guest", func() Principal { p, _ := s.NewGuest(); return p }, "", 1, 4},
			{"a guest stored since its principal was read", func() Principal { p, _ := storedGuest("Ada"); return p }, "Ada", 1, 2},
			{"a stored guest renamed since", func() Principal { _, sp := storedGuest("Bo"); return sp }, "Bo", 1, 2},
			{"a signed-in user", func() Principal { return Principal{User: member, SessionID: "s1", Stored: true} }, "Cy", 1, 2},
			{"an admin token's user, never stored", func() Principal {
				return Principal{User: User{ID: AdminUserID, Name: "admin"}, TokenID: "admin", Admin: true, Stored: true}
			}, "admin", 1, 2},
		}
		count := &countCommands{}
		b.rdb.AddHook(count.hook())
		for _, tc := range cases {
			p := tc.p()
			count.n.Store(0)
			act, err := s.Act(ctx, p, ip, Limit{Key: "test:" + p.User.ID, PerSecond: 1, Burst: 5})
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			want := tc.single
			if b.cluster {
				want = tc.cluster
			}
			if got := count.n.Load(); got != want {
				t.Errorf("%s: %d commands, want %d", tc.name, got, want)
			}
			wantName := tc.wantName
			if wantName == "" {
				wantName = guestUser(p.User.ID).Name
			}
			if act.Wait != 0 || act.Name != wantName || act.Who.User.ID != p.User.ID || !act.Who.Stored {
				t.Errorf("%s: %+v, want the stored user named %q, not limited", tc.name, act, wantName)
			}
			if p.User.Guest {
				if u, err := s.User(ctx, p.User.ID); err != nil || !u.Guest {
					t.Errorf("%s: the guest is not stored: %+v %v", tc.name, u, err)
				}
			}
		}
	})
}

// Act keeps every limit: a new guest over its address's budget is
// refused (*RateLimitedError) and takes nothing from the action's limit;
// an action over its limit is refused (Action.Wait) and a guest it stored
// stays stored; a revoked guest is ErrNoSession and takes nothing.
func TestActLimits(t *testing.T) {
	forEachActBackend(t, func(t *testing.T, b actBackend) {
		s, err := NewStore(b.rdb, Config{Secret: testSecret, NewGuestsPerIP: 1})
		if err != nil {
			t.Fatal(err)
		}
		ctx := t.Context()
		limit := func(p Principal) Limit {
			return Limit{Key: "test:" + p.User.ID, PerSecond: 1.0 / 3600, Burst: 1}
		}
		bucketTaken := func(p Principal) bool {
			n, err := b.rdb.Exists(ctx, s.key("bucket", limit(p).Key)).Result()
			if err != nil {
				t.Fatal(err)
			}
			return n == 1
		}
		cases := []struct {
			name string
			ip   string
			// before prepares a guest; check judges Act's answer for it.
			before func(p Principal)
			check  func(p Principal, act Action, err error) string
		}{
			{"a new guest over its address's budget", "192.0.2.10",
				func(Principal) {
					first, _ := s.NewGuest()
					if _, err := s.Act(ctx, first, "192.0.2.10", limit(first)); err != nil {
						t.Fatal(err)
					}
				},
				func(p Principal, act Action, err error) string {
					var rl *RateLimitedError
					if !errors.As(err, &rl) || rl.What != newGuestsWhat || rl.RetryAfter <= 0 {
						return "want a *RateLimitedError for new guests"
					}
					if _, err := s.User(ctx, p.User.ID); !errors.Is(err, ErrNotFound) {
						return "the refused guest was stored"
					}
					if bucketTaken(p) {
						return "the refused guest took from the action's limit"
					}
					return ""
				}},
			{"an action over its limit", "192.0.2.11",
				func(p Principal) {
					if wait, err := s.Allow(ctx, limit(p).Key, limit(p).PerSecond, limit(p).Burst); err != nil || wait != 0 {
						t.Fatalf("the limit's one request: %v %v", wait, err)
					}
				},
				func(p Principal, act Action, err error) string {
					if err != nil || act.Wait <= 0 {
						return "want a refusal with a wait"
					}
					if !act.Who.Stored {
						return "the answer's guest is not stored"
					}
					if _, err := s.User(ctx, p.User.ID); err != nil {
						return "the guest stored before the limit refused is gone"
					}
					return ""
				}},
			{"a revoked guest", "192.0.2.12",
				func(p Principal) {
					if err := s.Logout(ctx, p, "192.0.2.12"); err != nil {
						t.Fatal(err)
					}
				},
				func(p Principal, act Action, err error) string {
					if !errors.Is(err, ErrNoSession) {
						return "want ErrNoSession"
					}
					if bucketTaken(p) {
						return "the revoked guest took from the action's limit"
					}
					return ""
				}},
		}
		for _, tc := range cases {
			p, _ := s.NewGuest()
			tc.before(p)
			act, err := s.Act(ctx, p, tc.ip, limit(p))
			if why := tc.check(p, act, err); why != "" {
				t.Errorf("%s: %s; got %+v, %v", tc.name, why, act, err)
			}
		}
	})
}
