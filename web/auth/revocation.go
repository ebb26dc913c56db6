package auth

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
)

func (s *Store) revokedChannel() string { return s.key("revoked") }

func (s *Store) announceRevoked(ctx context.Context, credential string) error {
	if err := s.rdb.Publish(ctx, s.revokedChannel(), credential).Err(); err != nil {
		return fmt.Errorf("auth: announce revocation: %w", err)
	}
	return nil
}

// WatchRevocations calls fn with the credential ("s:SESSION", "g:GUEST"
// or "t:TOKEN") of every session, guest or token that ends, on any
// replica, until ctx ends; and with "u:USER" for a user whose sockets and
// streams an admin disconnects (DisconnectUser). go-redis resubscribes
// after a lost connection; sockets also recheck their credential
// periodically (Valid), which covers that gap for revocations (a
// disconnect sent meanwhile is lost: it ends nothing that stays invalid).
func (s *Store) WatchRevocations(ctx context.Context, fn func(credential string)) {
	progress.Watch(ctx, s.rdb, s.revokedChannel(), fn)
}

// Valid reports whether p's credential still works (a periodic recheck
// for long-lived sockets and streams).
func (s *Store) Valid(ctx context.Context, p Principal) (bool, error) {
	switch {
	case p.TokenID == adminTokenID: // from the configuration
		return true, nil
	case p.SessionID != "":
		n, err := s.rdb.Exists(ctx, s.sessionKey(p.SessionID)).Result()
		return n == 1, err
	case p.TokenID != "":
		return s.rdb.HExists(ctx, s.key("tokens", p.User.ID), p.TokenID).Result()
	case p.isGuestCookie():
		v, err := s.rdb.HGet(ctx, s.userKey(p.User.ID), "revoked").Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return false, err
		}
		return v != "1", nil
	}
	return false, nil
}
