package progress

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis deployment modes accepted by OpenRedis.
const (
	ModeSingle   = "single"   // one server: redis://, rediss:// or unix:// URL
	ModeSentinel = "sentinel" // Sentinel: redis://sentinel:26379?master_name=mymaster&addr=other:26379
	ModeCluster  = "cluster"  // Cluster: redis://node:6379?addr=node2:6379
)

// OpenRedis connects to the Redis that url names, in mode (ModeSingle when
// empty), and checks it answers a PING within 5 seconds.
func OpenRedis(ctx context.Context, url, mode string) (redis.UniversalClient, error) {
	var rdb redis.UniversalClient
	switch strings.ToLower(mode) {
	case "", ModeSingle:
		opt, err := redis.ParseURL(url)
		if err != nil {
			return nil, fmt.Errorf("progress: REDIS_URL %s: %w", redactURL(url), redactErr(err, url))
		}
		rdb = redis.NewClient(opt)
	case ModeSentinel:
		opt, err := redis.ParseFailoverURL(url)
		if err != nil {
			return nil, fmt.Errorf("progress: REDIS_URL (sentinel) %s: %w", redactURL(url), redactErr(err, url))
		}
		rdb = redis.NewFailoverClient(opt)
	case ModeCluster:
		opt, err := redis.ParseClusterURL(url)
		if err != nil {
			return nil, fmt.Errorf("progress: REDIS_URL (cluster) %s: %w", redactURL(url), redactErr(err, url))
		}
		rdb = redis.NewClusterClient(opt)
	default:
		return nil, fmt.Errorf("progress: unknown Redis mode %q (want %s, %s or %s)", mode, ModeSingle, ModeSentinel, ModeCluster)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("progress: redis at %s does not answer: %w", redactURL(url), err)
	}
	return rdb, nil
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
