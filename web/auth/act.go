package auth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"taskstream/progress"
)

// Limit is one per-user limit of an action: a token bucket of PerSecond
// with Burst, kept in Redis under Key (as Allow takes them).
type Limit struct {
	Key       string
	PerSecond float64
	Burst     int
}

// Action is what Act found and did.
type Action struct {
	// Who is the principal Act was given, stored if it was a guest that
	// lived in its cookie alone: the principal for the caller's next
	// actions, set even when the limit refused (the guest stays stored).
	Who Principal
	// Name is the user's current display name (it may have changed since
	// the principal was read), or the principal's when nothing is stored.
	Name string
	// Wait, when above zero, is the limit's refusal: nothing was taken
	// from its bucket; try again after Wait.
	Wait time.Duration
}

// Act prepares an action of p that needs state and is limited per user
// (a chat room's join, a chat message): it stores p's guest as
// Materialize does (charged to ip's new-guest limit: *RateLimitedError;
// ErrNoSession for a revoked guest), takes one request from l's bucket
// (Action.Wait when refused), and reads the user's current name.
//
// On one Redis (or a Sentinel's primary) that is one script, one round
// trip, where it was four in a row (a guest's lookup, its address's
// limit, its creation, then the action's limit beside the name's read):
// a join storm's first sockets waited for those one after another. On a
// Redis Cluster the keys lie in different slots, so it takes the steps
// one at a time, sparing the name's read when the guest's was just done.
// The checks come in the same order either way: a refused new guest
// takes nothing from l's bucket, and a guest stored before l refuses
// stays stored.
func (s *Store) Act(ctx context.Context, p Principal, ip string, l Limit) (Action, error) {
	if s.cluster {
		return s.actSteps(ctx, p, ip, l)
	}
	return s.actScript(ctx, p, ip, &l)
}

// actScriptSrc stores a guest, takes one request from an action's
// bucket, and returns the user's fields, in one step.
//
// KEYS[1] the user; KEYS[2] the client address's new-guest bucket;
// KEYS[3], when given, the action's bucket.
// ARGV[1] now (Unix ms); ARGV[2] "1" to store the user as a guest when it
// is not stored (a guest that lives in its cookie alone), "0" to leave it
// as it is; ARGV[3], ARGV[4] the new-guest bucket's interval (ms) and
// burst; ARGV[5] the new guest's name; ARGV[6] its TTL (ms); ARGV[7],
// ARGV[8] the action bucket's interval (ms) and burst.
//
// It returns {status, wait, stored, field, value, ...}: status 0 went
// ahead, -1 the guest was revoked, -2 the new-guest bucket refused, -3
// the action's bucket refused (wait: the milliseconds to wait); stored
// 1 when the guest is stored now (by this call or before it); then the
// user's fields (none when nothing is stored). A refusal writes nothing
// after the step that refused.
var actScript = progress.NewScript(gcraLua + `
local now = tonumber(ARGV[1])
local u = redis.call('HGETALL', KEYS[1])
local stored = 0
if ARGV[2] == '1' then
  if #u > 0 then
    for i = 1, #u, 2 do
      if u[i] == 'revoked' and u[i+1] == '1' then return {-1, 0, 0} end
    end
  else
    local wait = gcra(KEYS[2], now, tonumber(ARGV[3]), tonumber(ARGV[4]))
    if wait > 0 then return {-2, wait, 0} end
    redis.call('HSET', KEYS[1], 'guest', '1', 'name', ARGV[5], 'email', '')
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
    u = {'guest', '1', 'name', ARGV[5], 'email', ''}
  end
  stored = 1
end
local status, wait = 0, 0
if #KEYS > 2 then
  wait = gcra(KEYS[3], now, tonumber(ARGV[7]), tonumber(ARGV[8]))
  if wait > 0 then status = -3 end
end
local out = {status, wait, stored}
for i = 1, #u do out[#out + 1] = u[i] end
return out
`)

// Statuses of actScript.
const (
	actOK           = 0
	actRevoked      = -1
	actNewGuestWait = -2
	actLimitWait    = -3
)

// actScript runs actScript for p: with l nil it only stores p's guest
// (Materialize's step on one Redis).
func (s *Store) actScript(ctx context.Context, p Principal, ip string, l *Limit) (Action, error) {
	store := p.isGuestCookie() && !p.Stored
	var name string // a new guest's (only a guest's id makes one)
	if store {
		name = guestUser(p.User.ID).Name
	}
	keys := []string{s.userKey(p.User.ID), s.key("bucket", newGuestBucket(ip))}
	args := []any{time.Now().UnixMilli(), boolStr(store), gcraInterval(float64(s.cfg.NewGuestsPerIP) / newGuestWindow.Seconds()), s.cfg.NewGuestsPerIP,
		name, ttlMillis(s.cfg.NewGuestTTL), 0, 0}
	if l != nil {
		keys = append(keys, s.key("bucket", l.Key))
		args[6], args[7] = gcraInterval(l.PerSecond), l.Burst
	}
	res, err := actScript.Run(ctx, s.rdb, keys, args...).Slice()
	if err != nil {
		return Action{Who: p}, fmt.Errorf("auth: act: %w", err)
	}
	if len(res) < 3 {
		return Action{Who: p}, fmt.Errorf("auth: act: a reply of %d values", len(res))
	}
	status, _ := res[0].(int64)
	wait, _ := res[1].(int64)
	switch status {
	case actRevoked:
		return Action{Who: p}, ErrNoSession
	case actNewGuestWait:
		return Action{Who: p}, &RateLimitedError{What: newGuestsWhat, RetryAfter: time.Duration(wait) * time.Millisecond}
	}
	fields := make([]string, 0, len(res)-3)
	for _, v := range res[3:] {
		f, ok := v.(string)
		if !ok {
			return Action{Who: p}, fmt.Errorf("auth: act: a field of type %T", v)
		}
		fields = append(fields, f)
	}
	act := Action{Who: p, Name: p.User.Name}
	if stored, _ := res[2].(int64); stored == 1 {
		u, _, err := guestFrom(p.User.ID, fields)
		if err != nil { // not after the script's own check: defensive
			return Action{Who: p}, err
		}
		act.Who = Principal{User: u, Stored: true}
	}
	if len(fields) > 0 {
		act.Name = userFrom(p.User.ID, pairs(fields)).Name
	}
	if status == actLimitWait {
		act.Wait = time.Duration(wait) * time.Millisecond
	}
	return act, nil
}

// actSteps is Act on a Redis Cluster: Materialize, then the limit beside
// the name's read (which a guest stored or found just now does not need:
// that step read it).
func (s *Store) actSteps(ctx context.Context, p Principal, ip string, l Limit) (Action, error) {
	who, err := s.Materialize(ctx, p, ip)
	if err != nil {
		return Action{Who: p}, err
	}
	act := Action{Who: who, Name: who.User.Name}
	fresh := p.isGuestCookie() && !p.Stored
	type named struct {
		name string
		err  error
	}
	var name chan named
	if !fresh {
		// Two round trips that do not depend on each other go at once. The
		// read ends by itself (ctx bounds it) when the limit fails.
		name = make(chan named, 1)
		go func() {
			u, err := s.User(ctx, p.User.ID)
			switch {
			case err == nil:
				name <- named{u.Name, nil}
			case errors.Is(err, ErrNotFound):
				name <- named{p.User.Name, nil}
			default:
				name <- named{"", err}
			}
		}()
	}
	if act.Wait, err = s.Allow(ctx, l.Key, l.PerSecond, l.Burst); err != nil {
		return act, err
	}
	if name != nil {
		n := <-name
		if n.err != nil {
			return act, n.err
		}
		act.Name = n.name
	}
	return act, nil
}

// pairs makes a map of HGETALL's flat reply.
func pairs(fields []string) map[string]string {
	m := make(map[string]string, len(fields)/2)
	for i := 0; i+1 < len(fields); i += 2 {
		m[fields[i]] = fields[i+1]
	}
	return m
}
