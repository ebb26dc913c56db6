package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Token is a bearer token as shown once to its owner.
type Token struct {
	ID        string    `json:"id"`
	Token     string    `json:"token,omitempty"` // only when created
	CreatedAt time.Time `json:"created_at"`
}

// CreateToken issues a bearer token for a signed-in user. Only its hash is
// stored.
func (s *Store) CreateToken(ctx context.Context, u User) (Token, error) {
	if u.Guest {
		return Token{}, ErrSignInRequired
	}
	t := Token{ID: "t" + randomID(9), Token: "tsk_" + randomID(32), CreatedAt: time.Now().UTC()}
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.key("token", hashSecret(t.Token)), "id", t.ID, "user", u.ID)
		p.HSet(ctx, s.key("tokens", u.ID), t.ID, hashSecret(t.Token)+"|"+strconv.FormatInt(t.CreatedAt.Unix(), 10))
		return nil
	})
	if err != nil {
		return Token{}, fmt.Errorf("auth: create token: %w", err)
	}
	return t, nil
}

// Tokens lists a user's tokens (without their secrets).
func (s *Store) Tokens(ctx context.Context, userID string) ([]Token, error) {
	m, err := s.rdb.HGetAll(ctx, s.key("tokens", userID)).Result()
	if err != nil {
		return nil, fmt.Errorf("auth: list tokens: %w", err)
	}
	out := make([]Token, 0, len(m))
	for id, v := range m {
		_, created, _ := strings.Cut(v, "|")
		sec, _ := strconv.ParseInt(created, 10, 64)
		out = append(out, Token{ID: id, CreatedAt: time.Unix(sec, 0).UTC()})
	}
	return out, nil
}

// RevokeToken deletes a user's token and announces it, so every replica
// closes the sockets that use it.
func (s *Store) RevokeToken(ctx context.Context, userID, tokenID string) error {
	v, err := s.rdb.HGet(ctx, s.key("tokens", userID), tokenID).Result()
	if errors.Is(err, redis.Nil) {
		return ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("auth: revoke token: %w", err)
	}
	hash, _, _ := strings.Cut(v, "|")
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.key("token", hash))
		p.HDel(ctx, s.key("tokens", userID), tokenID)
		return nil
	})
	if err != nil {
		return fmt.Errorf("auth: revoke token: %w", err)
	}
	return s.announceRevoked(ctx, "t:"+tokenID)
}

// AdminUserID is the user id of every admin token's principal: what an
// admin token submits (and the periodic jobs of the schedule file) belongs
// to it, so admin tokens may watch and cancel those jobs.
const AdminUserID = "admin"

// Bearer returns the principal of a bearer token: an admin token from the
// configuration, or a user's token.
func (s *Store) Bearer(ctx context.Context, token string) (Principal, error) {
	for _, a := range s.cfg.AdminTokens {
		if subtle.ConstantTimeCompare([]byte(a), []byte(token)) == 1 {
			return Principal{User: User{ID: AdminUserID, Name: "admin"}, TokenID: "admin", Admin: true, Stored: true}, nil
		}
	}
	m, err := s.rdb.HGetAll(ctx, s.key("token", hashSecret(token))).Result()
	if err != nil {
		return Principal{}, fmt.Errorf("auth: read token: %w", err)
	}
	if len(m) == 0 {
		return Principal{}, ErrBadToken
	}
	u, err := s.User(ctx, m["user"])
	if errors.Is(err, ErrNotFound) {
		return Principal{}, ErrBadToken
	}
	if err != nil {
		return Principal{}, err
	}
	return Principal{User: u, TokenID: m["id"], Stored: true}, nil
}
