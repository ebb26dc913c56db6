package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
)

// A guest is an identity in a signed cookie: "g1.ID.ISSUED.MAC", where ID
// is the guest's user id, ISSUED the Unix second the cookie was made and
// MAC the HMAC-SHA256 of the rest under a key derived from the secret.
// Serving a guest that only looks (pages, job types, its empty job list)
// writes nothing to Redis; only Materialize, at the first action that
// needs state, stores the user. A stored guest is the same cookie and the
// same id: what changes is that Redis knows it.
//
// Ending a guest (logout, sign-in) marks its user "revoked" in Redis for
// the rest of the cookie's life, so a copy of the cookie never comes back,
// neither as the stored guest nor as a fresh stateless one.

const (
	guestCookieVersion = "g1"
	guestIDLen         = 17 // "g" and 16 base64url characters (12 random bytes)
	// maxClockSkew tolerates replicas whose clocks disagree a little when
	// one reads a cookie that another issued.
	maxClockSkew = 5 * time.Minute
)

// guestClaim is what a valid guest cookie says.
type guestClaim struct {
	ID     string
	Issued time.Time
}

func (s *Store) guestMAC(payload string) string {
	mac := hmac.New(sha256.New, s.guestKey)
	mac.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func (s *Store) guestCookie(id string, issued time.Time) string {
	payload := guestCookieVersion + "." + id + "." + strconv.FormatInt(issued.Unix(), 10)
	return payload + "." + s.guestMAC(payload)
}

// parseGuestCookie checks a guest cookie's shape, signature and age.
func (s *Store) parseGuestCookie(cookie string, now time.Time) (guestClaim, bool) {
	if len(cookie) > 200 {
		return guestClaim{}, false
	}
	parts := strings.Split(cookie, ".")
	if len(parts) != 4 || parts[0] != guestCookieVersion || !validGuestID(parts[1]) {
		return guestClaim{}, false
	}
	if len(parts[2]) == 0 || len(parts[2]) > 12 || strings.TrimLeft(parts[2], "0123456789") != "" {
		return guestClaim{}, false
	}
	payload := cookie[:len(cookie)-len(parts[3])-1]
	if !hmac.Equal([]byte(s.guestMAC(payload)), []byte(parts[3])) {
		return guestClaim{}, false
	}
	sec, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return guestClaim{}, false
	}
	issued := time.Unix(sec, 0)
	if issued.After(now.Add(maxClockSkew)) || !now.Before(issued.Add(s.cfg.SessionTTL)) {
		return guestClaim{}, false
	}
	return guestClaim{ID: parts[1], Issued: issued}, true
}

func validGuestID(id string) bool {
	if len(id) != guestIDLen || id[0] != 'g' {
		return false
	}
	for _, c := range id[1:] {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func guestUser(id string) User { return User{ID: id, Name: "guest-" + id[1:6], Guest: true} }

// renewAfter is the age at which a guest cookie is reissued: often enough
// that an active guest never reaches SessionTTL, rarely enough that most
// answers carry no Set-Cookie.
func (s *Store) renewAfter() time.Duration { return min(24*time.Hour, s.cfg.SessionTTL/2) }

// NewGuest returns a new guest and its cookie value. It writes nothing:
// the guest lives in the cookie until Materialize stores it.
func (s *Store) NewGuest() (Principal, string) {
	id := "g" + randomID(12)
	return Principal{User: guestUser(id)}, s.guestCookie(id, time.Now())
}

// guestSession is Session for a valid guest cookie: one read, plus a TTL
// extension for a guest that is stored.
func (s *Store) guestSession(ctx context.Context, g guestClaim) (Principal, string, error) {
	u, stored, err := s.sessionRead(ctx, g.ID)
	if err != nil {
		return Principal{}, "", err
	}
	var renew string
	if now := time.Now(); now.Sub(g.Issued) > s.renewAfter() {
		renew = s.guestCookie(g.ID, now)
	}
	return Principal{User: u, Stored: stored}, renew, nil
}

// lookupGuestScript returns a guest's stored fields (none when it was
// never stored) and, unless it was revoked, extends its TTL by ARGV[1]
// milliseconds (0: leave it).
var lookupGuestScript = progress.NewScript(`
local u = redis.call('HGETALL', KEYS[1])
if #u == 0 then return u end
for i = 1, #u, 2 do
  if u[i] == 'revoked' and u[i+1] == '1' then return u end
end
if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return u
`)

// lookupGuest reads guest id: ErrNoSession when it was revoked, stored
// false when it lives in its cookie alone.
func (s *Store) lookupGuest(ctx context.Context, id string, extend time.Duration) (User, bool, error) {
	res, err := lookupGuestScript.Run(ctx, s.rdb, []string{s.userKey(id)}, extendMillis(extend)).StringSlice()
	if err != nil {
		return User{}, false, fmt.Errorf("auth: read guest: %w", err)
	}
	return guestFrom(id, res)
}

// extendMillis is lookupGuestScript's ARGV[1] for extend (0: leave the TTL).
func extendMillis(extend time.Duration) int64 {
	if extend > 0 {
		return ttlMillis(extend)
	}
	return 0
}

// guestFrom is lookupGuest's answer from lookupGuestScript's reply res.
func guestFrom(id string, res []string) (User, bool, error) {
	if len(res) == 0 {
		return guestUser(id), false, nil
	}
	m := make(map[string]string, len(res)/2)
	for i := 0; i+1 < len(res); i += 2 {
		m[res[i]] = res[i+1]
	}
	if m["revoked"] == "1" {
		return User{}, false, ErrNoSession
	}
	u := userFrom(id, m)
	u.Guest = true
	if u.Name == "" {
		u.Name = guestUser(id).Name
	}
	return u, true, nil
}

// createGuestScript stores a guest unless it exists or was revoked:
// 1 created, 0 already there, -1 revoked.
var createGuestScript = progress.NewScript(`
if redis.call('HGET', KEYS[1], 'revoked') == '1' then return -1 end
if redis.call('HSETNX', KEYS[1], 'guest', '1') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'email', '')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// Materialize stores p's guest before an action that needs state (a job,
// a chat message or presence, a name), and returns p as stored. Storing a
// new guest counts against ip's new-guest limit (*RateLimitedError).
// Everyone else (signed-in users, tokens, guests already stored) is
// returned as is, with no Redis call. ErrNoSession means the guest was
// revoked meanwhile (logged out in another tab).
func (s *Store) Materialize(ctx context.Context, p Principal, ip string) (Principal, error) {
	if !p.isGuestCookie() || p.Stored {
		return p, nil
	}
	// The first sockets of a browser's tabs arrive together: they share
	// one store, so the guest is charged to the address once, not once
	// per tab (each would otherwise see it unstored and pay). The shared
	// call outlives a caller that gives up: the others still wait on it.
	ch := s.creating.DoChan(p.User.ID, func() (any, error) {
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), materializeTimeout)
		defer cancel()
		return s.materialize(c, p, ip)
	})
	select {
	case r := <-ch:
		return r.Val.(Principal), r.Err
	case <-ctx.Done():
		return p, fmt.Errorf("auth: store guest: %w", ctx.Err())
	}
}

// materializeTimeout bounds a shared Materialize whose callers all left.
const materializeTimeout = 10 * time.Second

// materialize stores p's guest: on one Redis in one script (actScript:
// one round trip, and no charge twice however requests race), on a Redis
// Cluster, where the guest's key and its address's bucket lie in
// different slots, in steps.
func (s *Store) materialize(ctx context.Context, p Principal, ip string) (Principal, error) {
	if !s.cluster {
		act, err := s.actScript(ctx, p, ip, nil)
		return act.Who, err
	}
	// The guest may have been stored since p was read (another request of
	// the same browser, or a socket that was opened before): no charge.
	u, stored, err := s.lookupGuest(ctx, p.User.ID, 0)
	if err != nil {
		return p, err
	}
	if stored {
		return Principal{User: u, Stored: true}, nil
	}
	if err := s.allowNewGuest(ctx, ip); err != nil {
		return p, err
	}
	u = guestUser(p.User.ID)
	res, err := createGuestScript.Run(ctx, s.rdb, []string{s.userKey(u.ID)}, u.Name, ttlMillis(s.cfg.NewGuestTTL)).Int()
	if err != nil {
		return p, fmt.Errorf("auth: store guest: %w", err)
	}
	switch res {
	case -1:
		return p, ErrNoSession
	case 0: // stored concurrently
		if u, _, err = s.lookupGuest(ctx, u.ID, 0); err != nil {
			return p, err
		}
	}
	return Principal{User: u, Stored: true}, nil
}

// The new-guest limit: Config.NewGuestsPerIP per newGuestWindow, per
// client address (newGuestBucket), refused as too many newGuestsWhat.
const (
	newGuestWindow = time.Hour
	newGuestsWhat  = "new guests from your address"
)

// newGuestBucket is the limit key of ip's new guests.
func newGuestBucket(ip string) string { return "guest-ip:" + ipKey(ip) }

// allowNewGuest takes one new guest from ip's budget.
func (s *Store) allowNewGuest(ctx context.Context, ip string) error {
	return s.allowN(ctx, newGuestBucket(ip), s.cfg.NewGuestsPerIP, newGuestWindow, newGuestsWhat)
}

// revokeGuestScript marks a guest revoked for ARGV[2] milliseconds: the
// longest a cookie issued before now can stay valid.
var revokeGuestScript = progress.NewScript(`
redis.call('HSET', KEYS[1], 'revoked', '1')
redis.call('HSETNX', KEYS[1], 'guest', '1')
redis.call('HSETNX', KEYS[1], 'name', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

func (s *Store) revokeGuest(ctx context.Context, u User) error {
	name := u.Name
	if name == "" {
		name = guestUser(u.ID).Name
	}
	err := revokeGuestScript.Run(ctx, s.rdb, []string{s.userKey(u.ID)}, name, ttlMillis(s.cfg.SessionTTL+maxClockSkew)).Err()
	if err != nil {
		return fmt.Errorf("auth: end guest: %w", err)
	}
	return nil
}

// guestReadSlots bounds the guest session reads in flight at once: the
// pipelines of guestReads, each holding one of the Redis client's pooled
// connections (20 on 2 cores) while it waits for its answer. Under a
// burst (every socket of a replica reconnecting after a restart, 20 per
// user) the others wait here, not in the pool, and leave together, up to
// guestReadBatch in one pipeline: 4 pipelines carry 512 reads per round
// trip, and leave the pool to the rest of a join (storing guests, rate
// limits, the hub's reads of the log), which 16 single reads at once had
// starved.
const guestReadSlots = 4

// guestReadBatch bounds the reads one pipeline takes along.
const guestReadBatch = 128

// guestReads batches the session reads of guests: a read that gets a
// slot takes along every read still waiting for one (up to
// guestReadBatch, those of other guests too) in one pipeline, and every
// request for a guest whose read is waiting joins that read, so they all
// get one answer from one round trip. A burst of N handshakes then waits
// for about N / (guestReadBatch × guestReadSlots) round trips in a row,
// not N / guestReadSlots: on a busy machine, where a round trip waits for
// two processes to be scheduled, those were what a join storm waited for
// (two thirds of the api's blocked time in a trace of one). Only
// reads not sent yet are joined or taken, so every answer comes from a
// read that started after its request arrived: a logout or revocation
// that finished before a request is always seen by it, as with a read of
// its own. Nothing is cached.
type guestReads struct {
	slots   chan struct{}
	mu      sync.Mutex
	waiting map[string]*guestRead // by guest id: the reads not sent yet
	order   []*guestRead          // the same reads, oldest first (sent ones removed lazily)
}

type guestRead struct {
	id     string
	joins  int           // requests that joined it (guarded by guestReads.mu)
	sent   bool          // taken by a pipeline, or abandoned: no longer waiting (guarded by guestReads.mu)
	done   chan struct{} // closed when the fields below are set
	u      User
	stored bool
	err    error
}

// sessionRead is lookupGuest(ctx, id, SessionTTL) through s.reads.
func (s *Store) sessionRead(ctx context.Context, id string) (User, bool, error) {
	g := &s.reads
	g.mu.Lock()
	r, joined := g.waiting[id]
	if joined {
		r.joins++
	} else {
		r = &guestRead{id: id, done: make(chan struct{})}
		g.waiting[id] = r
		g.order = append(g.order, r)
	}
	g.mu.Unlock()
	if !joined {
		select {
		case g.slots <- struct{}{}:
			// Older reads go first: send until this one went too.
			for !s.sendReads(ctx, r) {
			}
			<-g.slots
		case <-r.done: // another request's pipeline took it along
		case <-ctx.Done():
			g.mu.Lock()
			if !r.sent {
				// Nobody will send it: the requests that joined it
				// read on their own.
				g.drop(r)
				r.err = errLeaderGone
				close(r.done)
			}
			g.mu.Unlock()
			return User{}, false, fmt.Errorf("auth: read guest: %w", ctx.Err())
		}
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		return User{}, false, fmt.Errorf("auth: read guest: %w", ctx.Err())
	}
	if errors.Is(r.err, errLeaderGone) || errors.Is(r.err, context.Canceled) || errors.Is(r.err, context.DeadlineExceeded) {
		// The read was never sent, or ended with the request that sent
		// it: not an answer for this one.
		return s.lookupGuest(ctx, id, s.cfg.SessionTTL)
	}
	return r.u, r.stored, r.err
}

// drop removes r from the waiting reads. Called with g.mu held.
func (g *guestReads) drop(r *guestRead) {
	if g.waiting[r.id] == r {
		delete(g.waiting, r.id)
	}
	r.sent = true // not waiting any more: nobody takes it along
}

// sendReads sends the oldest waiting reads, up to guestReadBatch of them,
// in one pipeline with ctx, and answers them; it reports whether mine was
// among them or sent before. The caller holds a slot.
func (s *Store) sendReads(ctx context.Context, mine *guestRead) bool {
	g := &s.reads
	g.mu.Lock()
	var batch []*guestRead
	n := 0
	for ; n < len(g.order) && len(batch) < guestReadBatch; n++ {
		if r := g.order[n]; !r.sent {
			g.drop(r)
			batch = append(batch, r)
		}
	}
	g.order = append(g.order[:0], g.order[n:]...)
	took := mine.sent
	g.mu.Unlock()
	if len(batch) == 0 {
		return took
	}
	ms := extendMillis(s.cfg.SessionTTL)
	cmds := make([]*redis.Cmd, len(batch))
	// A failed pipeline sets its error on every command it did not get an
	// answer for: each read is answered from its own command.
	send := func() {
		_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, r := range batch {
				if cmds[i] == nil || progress.IsNoScript(cmds[i].Err()) {
					cmds[i] = lookupGuestScript.EvalSha(ctx, p, []string{s.userKey(r.id)}, ms)
				}
			}
			return nil
		})
	}
	send()
	if slices.ContainsFunc(cmds, func(c *redis.Cmd) bool { return progress.IsNoScript(c.Err()) }) {
		// A new or flushed Redis has not the script yet (every pipeline of
		// a storm after an api's first start): load it once and send
		// those reads again together, rather than each on its own below
		// (two round trips each, one after another, while the rest of the
		// batch waits).
		if lookupGuestScript.Load(ctx, s.rdb).Err() == nil {
			send()
		}
	}
	for i, r := range batch {
		cerr := cmds[i].Err()
		if cerr == nil {
			var res []string
			if res, cerr = cmds[i].StringSlice(); cerr == nil {
				r.u, r.stored, r.err = guestFrom(r.id, res)
			}
		}
		switch {
		case progress.IsNoScript(cerr):
			// The script is not loaded yet (a new or flushed Redis): Run
			// sends it.
			r.u, r.stored, r.err = s.lookupGuest(ctx, r.id, s.cfg.SessionTTL)
		case cerr != nil:
			r.err = fmt.Errorf("auth: read guest: %w", cerr)
		}
		close(r.done)
	}
	return took
}

// errLeaderGone tells the requests that joined a read that it was never
// sent (the request that would send it went away): each reads on its own.
var errLeaderGone = errors.New("auth: the shared read was abandoned")
