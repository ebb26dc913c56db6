package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// The admin identity: the user of admin tokens from the configuration,
// the owner of the tokens an admin mints and of what admin tokens submit
// (the periodic jobs of the schedule file too), so admin tokens may watch
// and cancel those jobs. Signed-in users' ids start
// with "u" and guests' with "g", so no person can have it.
const (
	AdminUserID  = "admin"
	adminTokenID = "admin" // the TokenID of a configured admin token
)

// Errors of CreateToken beyond the package's general ones.
var (
	// ErrAdminScope: only an admin may mint publish or admin scopes.
	ErrAdminScope = errors.New("auth: only an admin may give publish or admin scopes")
	// ErrScopesRequired: an admin's tokens need scopes; a token with
	// every right is the admin:* scope, said explicitly.
	ErrScopesRequired = errors.New("auth: an admin's token needs scopes (admin:* for every right)")
	// ErrBadTokenName: a token's name is at most 64 printable characters.
	ErrBadTokenName = errors.New("auth: a token name is at most 64 printable characters")
)

func adminUser() User { return User{ID: AdminUserID, Name: AdminUserID} }

// Token is a bearer token as its owner sees it; the secret only when it
// is created.
type Token struct {
	ID        string    `json:"id"`
	Token     string    `json:"token,omitempty"` // only when created
	Name      string    `json:"name,omitempty"`
	Scopes    []string  `json:"scopes"` // empty: the token acts as its owner
	CreatedAt time.Time `json:"created_at"`
}

// TokenRequest is what a new token should be: an optional name (a label
// for its owner) and optional scopes (ParseScope's grammar).
type TokenRequest struct {
	Name   string   `json:"name"`
	Scopes []string `json:"scopes"`
}

// CreateToken issues a bearer token for owner, a signed-in user or an
// admin. Only its hash is stored. A token without scopes acts as its
// owner; with scopes it may do only what they say, and a user's token
// never more than the user (scopes narrow it). Only an admin may give
// publish or admin scopes (ErrAdminScope); an admin's token is owned by
// AdminUserID and needs scopes (ErrScopesRequired). Bad scopes wrap
// ErrBadScope.
func (s *Store) CreateToken(ctx context.Context, owner Principal, req TokenRequest) (Token, error) {
	if owner.User.Guest {
		return Token{}, ErrSignInRequired
	}
	name := strings.TrimSpace(req.Name)
	if utf8.RuneCountInString(name) > 64 || strings.ContainsFunc(name, isControl) || !utf8.ValidString(name) {
		return Token{}, ErrBadTokenName
	}
	scopes, err := ParseScopes(req.Scopes)
	if err != nil {
		return Token{}, err
	}
	if scopes.adminOnly() && !owner.Admin {
		return Token{}, ErrAdminScope
	}
	userID := owner.User.ID
	if owner.Admin {
		if len(scopes) == 0 {
			return Token{}, ErrScopesRequired
		}
		userID = AdminUserID
	}
	t := Token{ID: "t" + randomID(9), Token: "tsk_" + randomID(32), Name: name, Scopes: scopes.Strings(), CreatedAt: time.Now().UTC()}
	hash := hashSecret(t.Token)
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.key("token", hash), "id", t.ID, "user", userID, "scopes", encodeScopes(scopes), "admin", boolStr(owner.Admin))
		// hash|created (Unix ms)|scopes|name: the name last, as it may
		// hold "|".
		p.HSet(ctx, s.key("tokens", userID), t.ID, hash+"|"+strconv.FormatInt(t.CreatedAt.UnixMilli(), 10)+"|"+encodeScopes(scopes)+"|"+name)
		return nil
	})
	if err != nil {
		return Token{}, fmt.Errorf("auth: create token: %w", err)
	}
	return t, nil
}

// Tokens lists a user's tokens (without their secrets), oldest first;
// AdminUserID's are the admins' tokens.
func (s *Store) Tokens(ctx context.Context, userID string) ([]Token, error) {
	m, err := s.rdb.HGetAll(ctx, s.key("tokens", userID)).Result()
	if err != nil {
		return nil, fmt.Errorf("auth: list tokens: %w", err)
	}
	out := make([]Token, 0, len(m))
	for id, v := range m {
		// Tokens made before scopes existed are "hash|created (Unix s)".
		parts := strings.SplitN(v, "|", 4)
		t := Token{ID: id, Scopes: []string{}}
		if len(parts) > 1 {
			n, _ := strconv.ParseInt(parts[1], 10, 64)
			t.CreatedAt = time.Unix(n, 0).UTC()
			if len(parts) > 2 {
				t.CreatedAt = time.UnixMilli(n).UTC()
			}
		}
		if len(parts) > 2 {
			t.Scopes = append(t.Scopes, strings.Fields(parts[2])...)
		}
		if len(parts) > 3 {
			t.Name = parts[3]
		}
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b Token) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
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

// Bearer returns the principal of a bearer token: an admin token from the
// configuration, or a stored token with its scopes (an admin's stored
// token has admin rights only with the admin scope).
func (s *Store) Bearer(ctx context.Context, token string) (Principal, error) {
	for _, a := range s.cfg.AdminTokens {
		if subtle.ConstantTimeCompare([]byte(a), []byte(token)) == 1 {
			return Principal{User: adminUser(), TokenID: adminTokenID, Admin: true, Stored: true}, nil
		}
	}
	m, err := s.rdb.HGetAll(ctx, s.key("token", hashSecret(token))).Result()
	if err != nil {
		return Principal{}, fmt.Errorf("auth: read token: %w", err)
	}
	if len(m) == 0 {
		return Principal{}, ErrBadToken
	}
	scopes, ok := decodeScopes(m["scopes"])
	if !ok {
		s.cfg.Logger.Warn("refusing a token whose stored scopes no longer parse", "token", m["id"], "scopes", m["scopes"])
		return Principal{}, ErrBadToken
	}
	if m["admin"] == "1" {
		if len(scopes) == 0 { // never minted so (ErrScopesRequired): grant nothing
			return Principal{}, ErrBadToken
		}
		return Principal{User: adminUser(), TokenID: m["id"], Scopes: scopes, AdminOwned: true,
			Admin: scopes.Has(ActionAdmin), Stored: true}, nil
	}
	u, err := s.User(ctx, m["user"])
	if errors.Is(err, ErrNotFound) {
		return Principal{}, ErrBadToken
	}
	if err != nil {
		return Principal{}, err
	}
	return Principal{User: u, TokenID: m["id"], Scopes: scopes, Stored: true}, nil
}

// DisconnectUser closes every socket and stream of user id on every
// replica (through the revocation channel, as "u:ID"). Its credentials
// stay valid: it may connect again.
func (s *Store) DisconnectUser(ctx context.Context, id string) error {
	return s.announceRevoked(ctx, "u:"+id)
}
