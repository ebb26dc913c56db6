package progress

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
)

// LeaderConfig configures RunAsLeader. The zero value of every field but
// Key is usable.
type LeaderConfig struct {
	// Key is the Redis key of the lease; every process that competes for
	// the same role uses the same key. Required.
	Key string
	// TTL is how long the lease outlives its holder's last renewal: when
	// the leader dies, another process takes over within TTL plus one
	// Retry. Default 5s.
	TTL time.Duration
	// Renew is how often the leader extends its lease. It must be well
	// under TTL so one slow round trip does not lose the lease.
	// Default TTL/3.
	Renew time.Duration
	// Retry is how often a process that is not the leader tries to take
	// the lease. Default TTL/5.
	Retry time.Duration
	// Owner names this process in the lease's value (for operators who
	// look at the key). Default "HOST:PID:RANDOM"; a random part is always
	// appended, so two holders never share a value.
	Owner string
	// Logger receives one line when leadership is won and one when it is
	// lost. Default slog.Default().
	Logger *slog.Logger
}

func (c LeaderConfig) withDefaults() LeaderConfig {
	if c.TTL <= 0 {
		c.TTL = 5 * time.Second
	}
	if c.Renew <= 0 {
		c.Renew = c.TTL / 3
	}
	if c.Retry <= 0 {
		c.Retry = c.TTL / 5
	}
	if c.Owner == "" {
		host, _ := os.Hostname()
		c.Owner = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	c.Owner += ":" + hex.EncodeToString(b[:])
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// The lease is renewed or released only by its holder: a process whose
// lease expired and was taken by another must not extend or delete the
// new holder's.
var (
	renewLease = NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0`)
	releaseLease = NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
	return redis.call("DEL", KEYS[1])
end
return 0`)
)

// RunAsLeader competes for the lease at cfg.Key and runs lead while this
// process holds it, so that across all processes at most one runs lead at
// a time (as far as the clocks of the processes agree within TTL). lead's
// context is canceled when the lease is lost: another process took it,
// or renewals failed for long enough that another may have. lead is run
// again each time the lease is won back. RunAsLeader returns when ctx is
// done, after lead has returned and the lease was released, so a
// successor takes over at once on a graceful shutdown.
func RunAsLeader(ctx context.Context, rdb redis.UniversalClient, cfg LeaderConfig, lead func(ctx context.Context)) error {
	if cfg.Key == "" {
		return errors.New("progress: RunAsLeader: empty key")
	}
	cfg = cfg.withDefaults()
	for {
		ok, err := rdb.SetNX(ctx, cfg.Key, cfg.Owner, cfg.TTL).Result()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			cfg.Logger.Debug("leader: lease attempt failed", "key", cfg.Key, "err", err)
		}
		if ok {
			leadWhileHeld(ctx, rdb, cfg, lead)
			if ctx.Err() != nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(cfg.Retry):
		}
	}
}

// leadWhileHeld runs lead and renews the lease until ctx is done or the
// lease is lost, then waits for lead to return and releases the lease.
func leadWhileHeld(ctx context.Context, rdb redis.UniversalClient, cfg LeaderConfig, lead func(ctx context.Context)) {
	cfg.Logger.Info("leader: lease won", "key", cfg.Key, "owner", cfg.Owner)
	leadCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		lead(leadCtx)
	}()

	// The lease surely holds until TTL after the last renewal that Redis
	// acknowledged; a leader that cannot renew steps down one Renew period
	// before that, so two leaders never overlap while clocks agree.
	lastRenewed := time.Now()
	reason := "shutdown"
	tick := time.NewTicker(cfg.Renew)
renew:
	for {
		select {
		case <-ctx.Done():
			break renew
		case <-done:
			reason = "leader function returned"
			break renew
		case <-tick.C:
		}
		// A renewal that hangs must not keep a leader leading past its
		// lease: each try gets half a period.
		renewCtx, cancelRenew := context.WithTimeout(ctx, cfg.Renew/2)
		n, err := renewLease.Run(renewCtx, rdb, []string{cfg.Key}, cfg.Owner, cfg.TTL.Milliseconds()).Int()
		cancelRenew()
		switch {
		case err == nil && n == 1:
			lastRenewed = time.Now()
		case err == nil:
			reason = "lease taken by another process"
			break renew
		case ctx.Err() != nil:
			break renew
		case time.Since(lastRenewed) > cfg.TTL-cfg.Renew:
			reason = fmt.Sprintf("lease not renewed: %v", err)
			break renew
		}
	}
	tick.Stop()
	stop()
	<-done
	// Released with a fresh context: on shutdown ctx is already done, and
	// releasing lets a successor take over without waiting for the TTL.
	relCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if err := releaseLease.Run(relCtx, rdb, []string{cfg.Key}, cfg.Owner).Err(); err != nil {
		cfg.Logger.Debug("leader: lease release failed", "key", cfg.Key, "err", err)
	}
	cfg.Logger.Info("leader: lease given up", "key", cfg.Key, "owner", cfg.Owner, "reason", reason)
}
