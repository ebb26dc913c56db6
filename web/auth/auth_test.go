package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
	"taskstream/web/auth/authtest"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef-auth-test")

func newTestStore(t *testing.T, srv *progresstest.Server, cfg Config) *Store {
	t.Helper()
	if cfg.Secret == nil {
		cfg.Secret = testSecret
	}
	s, err := NewStore(srv.Client(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestIPKey(t *testing.T) {
	cases := []struct{ in, want string }{
		{"203.0.113.9", "203.0.113.9"},
		{"::ffff:203.0.113.9", "203.0.113.9"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"not-an-ip", "not-an-ip"},
	}
	for _, tc := range cases {
		if got := ipKey(tc.in); got != tc.want {
			t.Errorf("ipKey(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Guest cookies: only what the store signed, within its lifetime, passes.
func TestGuestCookie(t *testing.T) {
	s, _ := NewStore(nil, Config{Secret: testSecret, SessionTTL: time.Hour})
	other, _ := NewStore(nil, Config{Secret: []byte(strings.Repeat("x", 32)), SessionTTL: time.Hour})
	now := time.Now()
	id := "g" + randomID(12)
	good := s.guestCookie(id, now)
	flip := []byte(good)
	flip[len(flip)-1] ^= 1
	cases := []struct {
		name   string
		cookie string
		ok     bool
	}{
		{"as issued", good, true},
		{"issued a little in the future (clock skew)", s.guestCookie(id, now.Add(time.Minute)), true},
		{"tampered signature", string(flip), false},
		{"another secret", other.guestCookie(id, now), false},
		{"other id, same signature", strings.Replace(good, id, "g"+randomID(12), 1), false},
		{"older than the session TTL", s.guestCookie(id, now.Add(-time.Hour-time.Second)), false},
		{"far in the future", s.guestCookie(id, now.Add(time.Hour)), false},
		{"a session cookie", s.sign(randomID(24)), false},
		{"bad id", s.guestCookie("g!!!!!!!!!!!!!!!!", now), false},
		{"empty", "", false},
	}
	for _, tc := range cases {
		g, ok := s.parseGuestCookie(tc.cookie, now)
		if ok != tc.ok {
			t.Errorf("%s: ok = %v, want %v", tc.name, ok, tc.ok)
		}
		if ok && g.ID != id {
			t.Errorf("%s: id %q, want %q", tc.name, g.ID, id)
		}
	}
}

// FuzzGuestCookie: any cookie value, read as a guest or a session cookie,
// is refused or is exactly what the store would issue for what it claims;
// parsing never panics.
func FuzzGuestCookie(f *testing.F) {
	s, _ := NewStore(nil, Config{Secret: testSecret})
	now := time.Unix(1_800_000_000, 0)
	f.Add(s.guestCookie("gAAAAAAAAAAAAAAAA", now))
	f.Add("g1.gAAAAAAAAAAAAAAAA.1800000000.xyz")
	f.Add("g1...")
	f.Add("abc.def")
	f.Add("g1.gAAAAAAAAAAAAAAAA.-1." + strings.Repeat("A", 43))
	f.Add(s.sign("sessionid"))
	f.Fuzz(func(t *testing.T, cookie string) {
		if sid, ok := s.verify(cookie); ok && s.sign(sid) != cookie {
			t.Fatalf("accepted session cookie %q, which the store would not issue", cookie)
		}
		g, ok := s.parseGuestCookie(cookie, now)
		if !ok {
			return
		}
		if s.guestCookie(g.ID, g.Issued) != cookie {
			t.Fatalf("accepted %q, which the store would not issue", cookie)
		}
	})
}

// Codes are stored as an HMAC keyed by the server secret: not a bare hash
// that a reader of Redis could reverse in a million tries.
func TestCodesStoredAsKeyedHMAC(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		smtp := authtest.NewSMTPServer(t)
		s := newTestStore(t, srv, Config{Mailer: SMTPMailer{Host: smtp.Host, Port: smtp.Port, From: "t@test", TLS: "none"}})
		const email = "hmac@example.com"
		if err := s.RequestCode(t.Context(), email, "127.0.0.1"); err != nil {
			t.Fatal(err)
		}
		code := authtest.Code(t, smtp.Next(t))
		stored, err := s.rdb.HGet(t.Context(), "ts:code:"+email, "hash").Result()
		if err != nil {
			t.Fatal(err)
		}
		bare := func(v string) string { sum := sha256.Sum256([]byte(v)); return hex.EncodeToString(sum[:]) }
		for _, v := range []string{code, email + ":" + code, email + "\x00" + code} {
			if stored == bare(v) {
				t.Fatalf("the stored code is the bare SHA-256 of %q", v)
			}
		}
		if stored != s.codeHash(email, code) {
			t.Fatal("the stored code is not the store's HMAC")
		}
		other, _ := NewStore(nil, Config{Secret: []byte(strings.Repeat("y", 32))})
		if other.codeHash(email, code) == stored {
			t.Fatal("another secret gives the same stored value: the HMAC is not keyed by the secret")
		}
		if strings.Contains(stored, code) {
			t.Fatal("the code appears in what is stored")
		}
	})
}

// The first requests of one new guest that arrive together (a browser
// opening many tabs) store it once and charge its address once: a second
// new guest from the address still fits a budget of two.
func TestMaterializeConcurrentChargesOnce(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newTestStore(t, srv, Config{NewGuestsPerIP: 2})
		p, _ := s.NewGuest()
		const tabs = 20
		var wg sync.WaitGroup
		errs := make(chan error, tabs)
		start := make(chan struct{})
		for range tabs {
			wg.Go(func() {
				<-start
				got, err := s.Materialize(t.Context(), p, "192.0.2.1")
				if err == nil && (!got.Stored || got.User.ID != p.User.ID) {
					err = fmt.Errorf("got %+v", got)
				}
				errs <- err
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("a tab: %v", err)
			}
		}
		q, _ := s.NewGuest()
		if _, err := s.Materialize(t.Context(), q, "192.0.2.1"); err != nil {
			t.Fatalf("the address's second new guest: %v (the first was charged more than once)", err)
		}
	})
}

// Materialize charges the client IP once per new guest, and not again for
// a guest already stored (another tab, or a socket opened before).
func TestMaterializeChargesOncePerGuest(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newTestStore(t, srv, Config{NewGuestsPerIP: 1})
		ctx := t.Context()
		p, _ := s.NewGuest()
		stored, err := s.Materialize(ctx, p, "192.0.2.1")
		if err != nil || !stored.Stored || stored.User.ID != p.User.ID {
			t.Fatalf("first: %+v %v", stored, err)
		}
		for range 3 { // the stale, unstored principal again
			if again, err := s.Materialize(ctx, p, "192.0.2.1"); err != nil || !again.Stored {
				t.Fatalf("again: %+v %v", again, err)
			}
		}
		q, _ := s.NewGuest()
		var rl *RateLimitedError
		if _, err := s.Materialize(ctx, q, "192.0.2.1"); !errors.As(err, &rl) || rl.RetryAfter <= 0 {
			t.Fatalf("a second new guest from the IP: %v", err)
		}
		if _, err := s.Materialize(ctx, q, "192.0.2.2"); err != nil {
			t.Fatalf("from another IP: %v", err)
		}
		if err := s.Logout(ctx, stored, "192.0.2.1"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Materialize(ctx, p, "192.0.2.3"); !errors.Is(err, ErrNoSession) {
			t.Fatalf("materializing a logged-out guest: %v, want ErrNoSession", err)
		}
		if ok, err := s.Valid(ctx, p); err != nil || ok {
			t.Fatalf("a logged-out guest is valid: %v %v", ok, err)
		}
	})
}

// Every key the store writes has a TTL, except signed-in users, their
// email index and their tokens; limiter keys always do.
func TestEveryKeyHasTTL(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		smtp := authtest.NewSMTPServer(t)
		s := newTestStore(t, srv, Config{Mailer: SMTPMailer{Host: smtp.Host, Port: smtp.Port, From: "t@test", TLS: "none"}})
		ctx := t.Context()
		ip := "198.51.100.7"
		g, _ := s.NewGuest()
		g, err := s.Materialize(ctx, g, ip)
		if err != nil {
			t.Fatal(err)
		}
		loose, _ := s.NewGuest()
		if err := s.Logout(ctx, loose, ip); err != nil {
			t.Fatal(err)
		}
		for _, email := range []string{"a@example.com", "b@example.com"} {
			if err := s.RequestCode(ctx, email, ip); err != nil {
				t.Fatal(err)
			}
		}
		codeA := authtest.Code(t, smtp.Next(t))
		smtp.Next(t)
		if _, _, err := s.Login(ctx, "b@example.com", "x", ip, Principal{}); !errors.Is(err, ErrBadCode) {
			t.Fatalf("wrong code: %v", err)
		}
		user, _, err := s.Login(ctx, "a@example.com", codeA, ip, g)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateToken(ctx, user, TokenRequest{}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Allow(ctx, "chat:"+user.User.ID, 1, 5); err != nil {
			t.Fatal(err)
		}
		permanent := []string{"ts:user:u", "ts:email:", "ts:token:", "ts:tokens:"}
		keys, err := s.rdb.Keys(ctx, "*").Result()
		if err != nil {
			t.Fatal(err)
		}
		var buckets int
		for _, k := range keys {
			if strings.HasPrefix(k, "ts:bucket:") {
				buckets++
			}
			keep := false
			for _, p := range permanent {
				keep = keep || strings.HasPrefix(k, p)
			}
			ttl, err := s.rdb.PTTL(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			if keep != (ttl < 0) {
				t.Errorf("key %s: TTL %v", k, ttl)
			}
		}
		if buckets < 6 {
			t.Fatalf("only %d limiter keys among %v", buckets, keys)
		}
	})
}

// The limiter refuses over the burst, says how long to wait, and a
// refused request writes nothing (the key's TTL does not move).
func TestAllow(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newTestStore(t, srv, Config{})
		ctx := context.Background()
		for i := range 3 {
			if wait, err := s.Allow(ctx, "k", 0.01, 3); err != nil || wait != 0 {
				t.Fatalf("request %d within the burst: %v %v", i, wait, err)
			}
		}
		ttl, _ := s.rdb.PTTL(ctx, "ts:bucket:k").Result()
		wait, err := s.Allow(ctx, "k", 0.01, 3)
		if err != nil || wait <= 0 || wait > 100*time.Second {
			t.Fatalf("over the burst: %v %v, want a wait of at most one interval", wait, err)
		}
		if after, _ := s.rdb.PTTL(ctx, "ts:bucket:k").Result(); after > ttl || after <= 0 {
			t.Fatalf("a refused request changed the TTL from %v to %v", ttl, after)
		}
	})
}

// LimitStep hands out as many keys and args as LimitKeys and LimitArgs
// say: jobs.PrepareAdmission makes the submit admission's scripts in
// advance from those counts, and a script made for other counts would be
// made again at the first submit, after the start's load.
func TestLimitStepCounts(t *testing.T) {
	s, _ := NewStore(nil, Config{Secret: testSecret})
	keys, args := s.LimitStep("k", 1, 10)
	if len(keys) != LimitKeys || len(args) != LimitArgs {
		t.Fatalf("LimitStep gives %d keys and %d args, LimitKeys and LimitArgs say %d and %d", len(keys), len(args), LimitKeys, LimitArgs)
	}
}

// An active guest's cookie is reissued about once a day, with the same id,
// so it never reaches its end while in use; a recent one is left alone.
func TestGuestCookieRenewal(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newTestStore(t, srv, Config{})
		id := "g" + randomID(12)
		cases := []struct {
			name  string
			age   time.Duration
			renew bool
		}{
			{"an hour old", time.Hour, false},
			{"two days old", 48 * time.Hour, true},
			{"29 days old", 29 * 24 * time.Hour, true},
		}
		for _, tc := range cases {
			p, renew, err := s.Session(t.Context(), s.guestCookie(id, time.Now().Add(-tc.age)))
			if err != nil || p.User.ID != id || p.Stored {
				t.Fatalf("%s: %+v %v", tc.name, p, err)
			}
			if (renew != "") != tc.renew {
				t.Fatalf("%s: renew %q, want renewal %v", tc.name, renew, tc.renew)
			}
			if renew != "" {
				g, ok := s.parseGuestCookie(renew, time.Now())
				if !ok || g.ID != id || time.Since(g.Issued) > time.Minute {
					t.Fatalf("%s: the renewed cookie %q says %+v", tc.name, renew, g)
				}
			}
		}
	})
}

// countGuestReads counts the guest lookups a client sends (n), alone or
// in pipelines, and the round trips that carried them (trips).
type countGuestReads struct{ n, trips atomic.Int64 }

func isScript(cmd redis.Cmder) bool {
	name := cmd.Name()
	return name == "evalsha" || name == "eval"
}

func (c *countGuestReads) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *countGuestReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if isScript(cmd) {
			c.n.Add(1)
			c.trips.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (c *countGuestReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		k := 0
		for _, cmd := range cmds {
			if isScript(cmd) {
				k++
			}
		}
		if k > 0 {
			c.n.Add(int64(k))
			c.trips.Add(1)
		}
		return next(ctx, cmds)
	}
}

// Session reads of one guest that wait for a slot together are one Redis
// read, and a request that arrives after a logout finished sees it even
// when it joins a read that was already waiting.
func TestGuestSessionReadsCoalesce(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		for _, tc := range []struct {
			name   string
			logout bool // log the guest out while the read waits, before the last request
		}{
			{"one read for all", false},
			{"a logout before a request is seen", true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				rdb := srv.Client(t)
				reads := &countGuestReads{}
				s, err := NewStore(rdb, Config{Secret: testSecret})
				if err != nil {
					t.Fatal(err)
				}
				ctx := t.Context()
				p, _ := s.NewGuest()
				stored, err := s.Materialize(ctx, p, "192.0.2.1")
				if err != nil {
					t.Fatal(err)
				}
				// The pipeline's script is loaded, as it is once the
				// server has read any guest: one read is one command.
				if err := lookupGuestScript.Load(ctx, rdb).Err(); err != nil {
					t.Fatal(err)
				}
				rdb.AddHook(reads)
				for range guestReadSlots { // every slot busy: reads wait
					s.reads.slots <- struct{}{}
				}
				const n = 10
				type answer struct {
					u   User
					err error
				}
				answers := make(chan answer, n)
				ask := func() {
					u, _, err := s.sessionRead(ctx, p.User.ID)
					answers <- answer{u, err}
				}
				joined := func(k int) func() bool {
					return func() bool {
						s.reads.mu.Lock()
						defer s.reads.mu.Unlock()
						r := s.reads.waiting[p.User.ID]
						return r != nil && r.joins == k
					}
				}
				go ask() // the read that waits
				eventually(t, "the read to wait", joined(0))
				for k := 1; k < n; k++ {
					if k == n-1 && tc.logout {
						if err := s.Logout(ctx, stored, "192.0.2.1"); err != nil {
							t.Fatal(err)
						}
						reads.n.Store(0) // Logout's own scripts
					}
					go ask()
					eventually(t, "the requests to join it", joined(k))
				}
				for range guestReadSlots {
					<-s.reads.slots
				}
				for range n {
					a := <-answers
					switch {
					case tc.logout && !errors.Is(a.err, ErrNoSession):
						t.Fatalf("after the logout: %v %v, want ErrNoSession", a.u, a.err)
					case !tc.logout && (a.err != nil || a.u.ID != p.User.ID):
						t.Fatalf("answer %v %v", a.u, a.err)
					}
				}
				if got := reads.n.Load(); got != 1 {
					t.Fatalf("%d guest reads for %d requests, want 1", got, n)
				}
			})
		}
	})
}

// eventually waits until cond holds, failing the test after 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Session reads of different guests that wait for a slot together leave
// in pipelines of at most guestReadBatch, in the order they came, and each
// request gets its own guest's answer: the stored guest with its name, the
// cookie-only guest as such, the logged-out one ErrNoSession. A request
// whose read was abandoned (its request gave up while it waited) reads on
// its own.
func TestGuestSessionReadsBatch(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		for _, tc := range []struct {
			name    string
			guests  int  // distinct guests, each asked for twice
			flush   bool // SCRIPT FLUSH before the reads: the batch finds no script
			abandon bool // the first request gives up while it waits
			trips   int64
		}{
			{name: "one pipeline", guests: 9, trips: 1},
			{name: "more than one batch", guests: 2*guestReadBatch + 3, trips: 3},
			// The failed pipeline, then the reads again in one.
			{name: "script not loaded", guests: 5, flush: true, trips: 2},
			{name: "an abandoned read", guests: 4, abandon: true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				rdb := srv.Client(t)
				s, err := NewStore(rdb, Config{Secret: testSecret, NewGuestsPerIP: 1000})
				if err != nil {
					t.Fatal(err)
				}
				ctx := t.Context()
				type guest struct {
					p      Principal
					stored bool
					gone   bool
					name   string
				}
				guests := make([]guest, tc.guests)
				for i := range guests {
					p, _ := s.NewGuest()
					g := guest{p: p, name: p.User.Name}
					switch i % 3 {
					case 1: // stored, renamed
						sp, err := s.Materialize(ctx, p, "192.0.2.1")
						if err != nil {
							t.Fatal(err)
						}
						g.name = fmt.Sprintf("guest %d", i)
						if err := rdb.HSet(ctx, s.userKey(sp.User.ID), "name", g.name).Err(); err != nil {
							t.Fatal(err)
						}
						g.stored = true
					case 2: // logged out
						if err := s.Logout(ctx, p, "192.0.2.1"); err != nil {
							t.Fatal(err)
						}
						g.gone = true
					}
					guests[i] = g
				}
				if _, _, err := s.sessionRead(ctx, guests[0].p.User.ID); err != nil { // loads the script
					t.Fatal(err)
				}
				if tc.flush {
					if err := rdb.ScriptFlush(ctx).Err(); err != nil {
						t.Fatal(err)
					}
				}
				reads := &countGuestReads{}
				rdb.AddHook(reads)
				for range guestReadSlots { // every slot busy: reads wait
					s.reads.slots <- struct{}{}
				}
				waiting := func(k int) func() bool {
					return func() bool {
						s.reads.mu.Lock()
						defer s.reads.mu.Unlock()
						n := 0
						for _, r := range s.reads.waiting {
							n += 1 + r.joins
						}
						return n == k
					}
				}
				type answer struct {
					i      int
					u      User
					stored bool
					err    error
				}
				answers := make(chan answer, 2*len(guests))
				askInto := func(ctx context.Context, to chan<- answer, i int) {
					u, stored, err := s.sessionRead(ctx, guests[i].p.User.ID)
					to <- answer{i, u, stored, err}
				}
				ask := func(ctx context.Context, i int) { askInto(ctx, answers, i) }
				asked := 0
				if tc.abandon {
					// The first guest's read: its first request leaves, the
					// second (joined) reads on its own. Each answers on a
					// channel of its own: which answers first is up to the
					// scheduler (the one that joined may read Redis before
					// the one that left has returned).
					left, joined := make(chan answer, 1), make(chan answer, 1)
					c, cancel := context.WithCancel(ctx)
					go askInto(c, left, 0)
					eventually(t, "the first read to wait", waiting(1))
					go askInto(ctx, joined, 0)
					eventually(t, "the second request to join it", waiting(2))
					cancel()
					a := <-left
					if !errors.Is(a.err, context.Canceled) {
						t.Fatalf("the request that gave up: %v %v", a.u, a.err)
					}
					eventually(t, "the abandoned read to go", waiting(0))
					a = <-joined
					if a.err != nil || a.u.ID != guests[0].p.User.ID {
						t.Fatalf("the request that joined the abandoned read: %v %v", a.u, a.err)
					}
				}
				for i := range guests {
					for range 2 {
						go ask(ctx, i)
						asked++
						eventually(t, "the requests to wait", waiting(asked))
					}
				}
				n0, trips0 := reads.n.Load(), reads.trips.Load()
				for range guestReadSlots {
					<-s.reads.slots
				}
				for range asked {
					a := <-answers
					g := guests[a.i]
					switch {
					case g.gone:
						if !errors.Is(a.err, ErrNoSession) {
							t.Fatalf("logged-out guest %d: %v %v, want ErrNoSession", a.i, a.u, a.err)
						}
					case a.err != nil || a.u.ID != g.p.User.ID || a.u.Name != g.name || a.stored != g.stored || !a.u.Guest:
						t.Fatalf("guest %d: %+v stored %v, %v; want %s named %q, stored %v", a.i, a.u, a.stored, a.err, g.p.User.ID, g.name, g.stored)
					}
				}
				if n := reads.n.Load() - n0; !tc.flush && n != int64(len(guests)) {
					t.Fatalf("%d guest reads for %d guests", n, len(guests))
				}
				if trips := reads.trips.Load() - trips0; tc.trips > 0 && trips != tc.trips {
					t.Fatalf("%d round trips for %d guests, want %d", trips, len(guests), tc.trips)
				}
				s.reads.mu.Lock()
				defer s.reads.mu.Unlock()
				if len(s.reads.waiting) != 0 || len(s.reads.order) != 0 {
					t.Fatalf("left waiting: %d reads, %d in order", len(s.reads.waiting), len(s.reads.order))
				}
			})
		}
	})
}
