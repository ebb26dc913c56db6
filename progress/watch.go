package progress

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// Watch calls fn with the payload of every message published on a plain
// Redis channel, until ctx ends. It is for control signals (a job was
// canceled, a session ended) that need no history: go-redis resubscribes
// after a lost connection, and messages published meanwhile are lost, so
// callers keep a periodic recheck as the backstop.
func Watch(ctx context.Context, rdb redis.UniversalClient, channel string, fn func(payload string)) {
	ps := rdb.Subscribe(ctx, channel)
	defer ps.Close()
	ch := ps.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			fn(m.Payload)
		}
	}
}
