package progress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	neturl "net/url"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis deployment modes accepted by OpenRedis.
const (
	ModeSingle   = "single"   // one server: redis://, rediss:// or unix:// URL
	ModeSentinel = "sentinel" // Sentinel: redis://sentinel:26379?master_name=mymaster&addr=other:26379
	ModeCluster  = "cluster"  // Cluster: redis://node:6379?addr=node2:6379
)

// Client defaults OpenRedis applies unless REDIS_URL's query sets them
// (dial_timeout, read_timeout, write_timeout, pool_timeout, max_retries,
// dialer_retries, max_retry_backoff). go-redis's own defaults (5 s
// timeouts, 3 retries, 5 dial attempts each) make a request wait seconds
// on a Redis that is down before it can say so; Redis answers in well
// under a millisecond when it is up, so one second is already a generous
// bound. Commands are not retried by the client: go-redis retries a
// command whose reply timed out, which doubles the wait on a frozen Redis
// and can apply a write twice (an event appended twice); a connection
// Redis dropped is caught by the pool's health check before it is used,
// and every caller that must persist (the hub, the worker, asynq) has its
// own retry loop. The health check looks only at connections idle for
// DefaultHealthCheckIdle (see there).
const (
	DefaultDialTimeout     = time.Second            // connecting to Redis
	DefaultReadTimeout     = time.Second            // one reply (writes follow it)
	DefaultPoolTimeout     = time.Second            // waiting for a free pooled connection
	DefaultMaxRetries      = -1                     // retries of a failed command: none (go-redis's -1)
	DefaultDialerRetries   = 1                      // dial attempts per connection
	DefaultMaxRetryBackoff = 100 * time.Millisecond // the longest pause before a retry, where one is set
)

// OpenRedis connects to the Redis that url names, in mode (ModeSingle when
// empty), with the client defaults above, and checks it answers a PING
// within 5 seconds.
func OpenRedis(ctx context.Context, url, mode string) (redis.UniversalClient, error) {
	rdb, err := NewRedis(url, mode)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("progress: redis at %s does not answer: %w", redactURL(url), err)
	}
	return rdb, nil
}

// NewRedis returns a client for the Redis that url names, in mode
// (ModeSingle when empty), with the client defaults above, without
// connecting: a malformed url or mode is its only error. Errors never
// quote a password.
func NewRedis(url, mode string) (redis.UniversalClient, error) {
	q := urlQuery(url)
	switch strings.ToLower(mode) {
	case "", ModeSingle:
		opt, err := redis.ParseURL(url)
		if err != nil {
			return nil, fmt.Errorf("progress: REDIS_URL %s: %w", redactURL(url), redactErr(err, url))
		}
		tune(q, &opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.PoolTimeout, &opt.MaxRetries, &opt.DialerRetries, &opt.MaxRetryBackoff)
		opt.Dialer = skipRecentChecks(redis.NewDialer(opt))
		return redis.NewClient(opt), nil
	case ModeSentinel:
		opt, err := redis.ParseFailoverURL(url)
		if err != nil {
			return nil, fmt.Errorf("progress: REDIS_URL (sentinel) %s: %w", redactURL(url), redactErr(err, url))
		}
		if opt.MasterName == "" {
			return nil, fmt.Errorf("progress: REDIS_URL (sentinel) %s: sentinel mode needs ?master_name=NAME", redactURL(url))
		}
		tune(q, &opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.PoolTimeout, &opt.MaxRetries, &opt.DialerRetries, &opt.MaxRetryBackoff)
		opt.Dialer = skipRecentChecks(redis.NewDialer(&redis.Options{DialTimeout: opt.DialTimeout, TLSConfig: opt.TLSConfig}))
		return redis.NewFailoverClient(opt), nil
	case ModeCluster:
		opt, err := redis.ParseClusterURL(url)
		if err != nil {
			return nil, fmt.Errorf("progress: REDIS_URL (cluster) %s: %w", redactURL(url), redactErr(err, url))
		}
		tune(q, &opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout, &opt.PoolTimeout, &opt.MaxRetries, &opt.DialerRetries, &opt.MaxRetryBackoff)
		opt.Dialer = skipRecentChecks(redis.NewDialer(&redis.Options{DialTimeout: opt.DialTimeout, TLSConfig: opt.TLSConfig}))
		return redis.NewClusterClient(opt), nil
	}
	return nil, fmt.Errorf("progress: unknown Redis mode %q (want %s, %s or %s)", mode, ModeSingle, ModeSentinel, ModeCluster)
}

// urlQuery returns the query of a Redis URL (empty when it has none or
// does not parse; the parse error is go-redis's to report).
func urlQuery(raw string) neturl.Values {
	u, err := neturl.Parse(raw)
	if err != nil {
		return neturl.Values{}
	}
	return u.Query()
}

// tune applies the client defaults to the settings the URL's query left
// unset. The three option types of go-redis share these fields but no
// interface, hence the pointers.
func tune(q neturl.Values, dial, read, write, pool *time.Duration, retries, dialerRetries *int, maxBackoff *time.Duration) {
	set := q.Has
	if !set("dial_timeout") {
		*dial = DefaultDialTimeout
	}
	if !set("read_timeout") {
		*read = DefaultReadTimeout
	}
	if !set("write_timeout") {
		*write = *read
	}
	if !set("pool_timeout") {
		*pool = DefaultPoolTimeout
	}
	if !set("max_retries") {
		*retries = DefaultMaxRetries
	}
	if !set("dialer_retries") {
		*dialerRetries = DefaultDialerRetries
	}
	if !set("max_retry_backoff") {
		*maxBackoff = DefaultMaxRetryBackoff
	}
}

// ErrUnavailable is wrapped by errors that mean Redis cannot serve right
// now (down, unreachable, too slow, loading its data, failing over): the
// same request may succeed shortly, so callers answer "try again later"
// (HTTP 503, socket close 1013) rather than "internal error".
var ErrUnavailable = errors.New("progress: redis is unavailable")

// IsUnavailable reports whether err means Redis is unavailable for now:
// it wraps ErrUnavailable, or it is one of the errors go-redis returns
// for a Redis it cannot reach or that cannot serve: network errors and
// timeouts, a connection Redis closed, a closed client or pool, a pool
// timeout, and the replies LOADING, BUSY, MASTERDOWN, READONLY (a replica
// promoted under us during a failover), CLUSTERDOWN, TRYAGAIN, NOREPLICAS
// and max clients. A deadline that ran out while waiting counts too. Any
// other error (a wrong type, a bad argument, a script error) is permanent:
// repeating the request cannot help.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrUnavailable) ||
		errors.Is(err, redis.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrPoolExhausted) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	if redis.IsLoadingError(err) || redis.IsMasterDownError(err) || redis.IsReadOnlyError(err) ||
		redis.IsClusterDownError(err) || redis.IsTryAgainError(err) || redis.IsMaxClientsError(err) ||
		redis.IsNoReplicasError(err) || redis.HasErrorPrefix(err, "BUSY ") {
		return true
	}
	return false
}

// unavailable wraps err with ErrUnavailable when it means Redis is
// unavailable, so errors.Is(err, ErrUnavailable) holds for callers.
func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || !IsUnavailable(err) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// Cause is a short, address-free description of why Redis is
// unavailable, for messages shown to clients and probes.
func Cause(err error) string {
	var rerr redis.Error
	var ne net.Error
	switch {
	case err == nil:
		return ""
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.EPIPE):
		return "connection lost"
	case errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrPoolExhausted):
		return "no free connection"
	case errors.Is(err, redis.ErrClosed):
		return "client closed"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	case errors.As(err, &rerr):
		word, _, _ := strings.Cut(rerr.Error(), " ")
		return "redis replied " + word
	case errors.As(err, &ne):
		return "network error"
	}
	return "unavailable"
}

// redactErr rewrites an error that quotes the URL, which go-redis's
// parse errors do, so the password does not reach a log.
func redactErr(err error, url string) error {
	msg := err.Error()
	if !strings.Contains(msg, url) {
		return err
	}
	return errors.New(strings.ReplaceAll(msg, url, redactURL(url)))
}

// redactURL hides a password in a Redis URL before it reaches a log.
func redactURL(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return u
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return u
	}
	return scheme + "://***@" + rest[at+1:]
}
