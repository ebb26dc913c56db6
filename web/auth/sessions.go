package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Principal is who made a request and with which credential.
type Principal struct {
	User      User
	SessionID string // set for stored browser sessions (signed-in users)
	TokenID   string // set for bearer tokens
	// Admin is true for admin rights: an admin token from the
	// configuration, or an admin's stored token with the admin scope.
	Admin bool
	// Scopes of a bearer token; none means it acts as its user.
	Scopes Scopes
	// AdminOwned marks a token an admin minted: its scopes are its rights
	// (they are not a narrowing of some user's).
	AdminOwned bool
	// Stored is false only for a guest that lives in its cookie alone:
	// nothing of it is in Redis until Materialize stores it.
	Stored bool
}

// Credential names the session, guest cookie or token behind p, as
// revocations do: "s:SESSION", "g:GUEST" or "t:TOKEN".
func (p Principal) Credential() string {
	switch {
	case p.SessionID != "":
		return "s:" + p.SessionID
	case p.TokenID != "":
		return "t:" + p.TokenID
	case p.User.Guest && p.User.ID != "":
		return "g:" + p.User.ID
	}
	return ""
}

// isGuestCookie reports whether p is a guest identified by its guest
// cookie (stored or not), as opposed to a stored session or a token.
func (p Principal) isGuestCookie() bool {
	return p.User.Guest && p.SessionID == "" && p.TokenID == ""
}

// sign returns the cookie value of session sid: the id and its HMAC. It
// keys with the secret itself, as sessions always have, so cookies
// issued before guest cookies existed stay valid; guest cookies use a
// derived key and have another shape, so neither passes for the other.
func (s *Store) sign(sid string) string {
	mac := hmac.New(sha256.New, s.cfg.Secret)
	mac.Write([]byte(sid))
	return sid + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func (s *Store) verify(cookie string) (string, bool) {
	sid, _, ok := strings.Cut(cookie, ".")
	if !ok || sid == "" {
		return "", false
	}
	return sid, hmac.Equal([]byte(s.sign(sid)), []byte(cookie))
}

func (s *Store) sessionKey(sid string) string { return s.key("session", sid) }

func (s *Store) newSession(ctx context.Context, u User, ttl time.Duration) (Principal, string, error) {
	sid := randomID(24)
	if err := s.rdb.Set(ctx, s.sessionKey(sid), u.ID, ttl).Err(); err != nil {
		return Principal{}, "", fmt.Errorf("auth: create session: %w", err)
	}
	return Principal{User: u, SessionID: sid, Stored: true}, s.sign(sid), nil
}

// Session returns the principal of a browser cookie: a stored session
// (extended by SessionTTL) or a guest cookie (see guests.go). renew, when
// not empty, is a fresh cookie value the caller should set: guest cookies
// carry their issue time and are reissued about once a day, so an active
// guest keeps its identity without a write to Redis. ErrNoSession means
// the cookie is not valid (forged, expired, logged out, revoked): the
// caller starts a new guest.
func (s *Store) Session(ctx context.Context, cookie string) (p Principal, renew string, err error) {
	if g, ok := s.parseGuestCookie(cookie, time.Now()); ok {
		return s.guestSession(ctx, g)
	}
	sid, ok := s.verify(cookie)
	if !ok {
		return Principal{}, "", ErrNoSession
	}
	uid, err := s.rdb.GetEx(ctx, s.sessionKey(sid), s.cfg.SessionTTL).Result()
	if errors.Is(err, redis.Nil) {
		return Principal{}, "", ErrNoSession
	}
	if err != nil {
		return Principal{}, "", fmt.Errorf("auth: read session: %w", err)
	}
	u, err := s.User(ctx, uid)
	if errors.Is(err, ErrNotFound) {
		return Principal{}, "", ErrNoSession
	}
	if err != nil {
		return Principal{}, "", err
	}
	if u.Guest { // a guest session from before guests lived in cookies
		_ = s.rdb.PExpire(ctx, s.userKey(uid), s.cfg.SessionTTL).Err()
	}
	return Principal{User: u, SessionID: sid, Stored: true}, "", nil
}

// Logout ends p's browser credential and announces it, so every replica
// closes the sockets that use it. A guest cookie is revoked for the rest
// of its lifetime (it must not come back as a new, empty guest); for a
// guest that was never stored that is its first write, so it counts
// against ip's new-guest limit like Materialize. Tokens are revoked with
// RevokeToken instead (ErrNoSession here).
func (s *Store) Logout(ctx context.Context, p Principal, ip string) error {
	switch {
	case p.SessionID != "":
	case p.isGuestCookie():
		if !p.Stored {
			if err := s.allowNewGuest(ctx, ip); err != nil {
				return err
			}
		}
	default:
		return ErrNoSession
	}
	return s.endBrowser(ctx, p)
}
