package auth

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"taskstream/progress"
)

// RateLimitedError says which limit was hit and how long to wait.
type RateLimitedError struct {
	What       string // what there were too many of, e.g. "code requests for this email"
	RetryAfter time.Duration
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("auth: too many %s; retry in %s", e.What, e.RetryAfter.Round(time.Second))
}

// gcraLua is a generic cell rate limiter (GCRA, the token bucket without
// a refill process) as a Lua function for scripts: one key per caller
// holding the theoretical arrival time, always written with a TTL, so no
// key outlives its use and none can lose its expiry (unlike INCR then
// EXPIRE). gcra returns 0 when the request may go ahead, or the
// milliseconds to wait; a refused request writes nothing. now and
// interval are milliseconds.
const gcraLua = `
local function gcra(key, now, interval, burst)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local wait = new_tat - now - burst * interval
  if wait > 0 then return math.ceil(wait) end
  redis.call('SET', key, tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
  return 0
end
`

// gcraScript takes one request from KEYS[1]'s bucket: ARGV[1] now (Unix
// ms), ARGV[2] the interval (ms), ARGV[3] the burst.
var gcraScript = progress.NewScript(gcraLua + `
return gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
`)

// LimitLua is the body of a Lua function of (keys, args) that takes one
// request from keys[1]'s bucket with gcra: args are now (ms), the
// interval between requests (ms) and the burst. It returns what gcra
// does. LimitStep hands it, with its keys and args, to a caller that runs
// it inside a script of its own (a job's submit: the limit and the job's
// record in one step).
const LimitLua = gcraLua + `
return gcra(keys[1], tonumber(args[1]), tonumber(args[2]), tonumber(args[3]))
`

// LimitKeys and LimitArgs are the numbers of keys and args LimitStep
// returns, for a caller that makes its script in advance
// (jobs.PrepareAdmission).
const (
	LimitKeys = 1
	LimitArgs = 3
)

// LimitStep returns what Allow(key, perSecond, burst) runs, for a caller
// that runs LimitLua in a script of its own: its keys and args as of now.
// Its reply means what Allow's does (in milliseconds).
func (s *Store) LimitStep(key string, perSecond float64, burst int) ([]string, []any) {
	return []string{s.key("bucket", key)}, []any{time.Now().UnixMilli(), gcraInterval(perSecond), burst}
}

// gcraInterval is the milliseconds between requests of a bucket of
// perSecond: gcra's interval.
func gcraInterval(perSecond float64) float64 { return 1000 / perSecond }

// Allow takes one request of key from a token bucket of perSecond with
// burst, kept in Redis so every replica shares it. It returns 0 when the
// request may go ahead, or how long to wait. It is the one limiter of
// taskstream: the sign-in limits below and the web layer's per-user
// limits (jobs, chat, joins, renames) all use it.
func (s *Store) Allow(ctx context.Context, key string, perSecond float64, burst int) (time.Duration, error) {
	keys, args := s.LimitStep(key, perSecond, burst)
	wait, err := gcraScript.Run(ctx, s.rdb, keys, args...).Int64()
	if err != nil {
		return 0, fmt.Errorf("auth: rate limit %s: %w", key, err)
	}
	return time.Duration(wait) * time.Millisecond, nil
}

// allowN allows n requests of key per window (a burst of n, refilled
// evenly over the window), or returns a *RateLimitedError about what.
func (s *Store) allowN(ctx context.Context, key string, n int, window time.Duration, what string) error {
	wait, err := s.Allow(ctx, key, float64(n)/window.Seconds(), n)
	if err != nil {
		return err
	}
	if wait > 0 {
		return &RateLimitedError{What: what, RetryAfter: wait}
	}
	return nil
}

// ipKey is the part of a limit key that names a client address: the
// address itself for IPv4, its /64 for IPv6, since one subscriber
// usually holds a whole /64 and could otherwise rotate through it.
func ipKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.String()
	}
	return a.String()
}
