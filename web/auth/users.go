package auth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
)

// User is a person: a guest until they sign in with an email.
type User struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Email string `json:"email,omitempty"`
	Guest bool   `json:"guest"`
}

func (s *Store) userKey(id string) string { return s.key("user", id) }

// saveUser writes u; ttl 0 keeps it for good (signed-in users).
func (s *Store) saveUser(ctx context.Context, u User, ttl time.Duration) error {
	k := s.userKey(u.ID)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, k, "name", u.Name, "email", u.Email, "guest", boolStr(u.Guest))
		if ttl > 0 {
			p.PExpire(ctx, k, ttl)
		} else {
			p.Persist(ctx, k)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("auth: save user: %w", err)
	}
	return nil
}

func userFrom(id string, m map[string]string) User {
	return User{ID: id, Name: m["name"], Email: m["email"], Guest: m["guest"] == "1"}
}

// User returns the stored user id: ErrNotFound for an unknown id, and for
// a guest that lives in its cookie alone (it has never been stored).
func (s *Store) User(ctx context.Context, id string) (User, error) {
	m, err := s.rdb.HGetAll(ctx, s.userKey(id)).Result()
	if err != nil {
		return User{}, fmt.Errorf("auth: read user: %w", err)
	}
	if len(m) == 0 {
		return User{}, ErrNotFound
	}
	return userFrom(id, m), nil
}

// SetName sets a stored user's display name (Materialize a guest first).
func (s *Store) SetName(ctx context.Context, id, name string) (User, error) {
	name = strings.TrimSpace(name)
	if n := utf8.RuneCountInString(name); n < 1 || n > 40 || strings.ContainsFunc(name, isControl) {
		return User{}, ErrBadName
	}
	// HSET only on an existing user: a name must never create a user
	// without a TTL.
	ok, err := setNameScript.Run(ctx, s.rdb, []string{s.userKey(id)}, name).Bool()
	if err != nil && !errors.Is(err, redis.Nil) {
		return User{}, fmt.Errorf("auth: set name: %w", err)
	}
	if !ok {
		return User{}, ErrNotFound
	}
	return s.User(ctx, id)
}

var setNameScript = progress.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'name', ARGV[1])
return 1
`)

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// userByEmail returns the user with email, creating it on first sign-in.
func (s *Store) userByEmail(ctx context.Context, email string, from Principal) (User, error) {
	k := s.key("email", email)
	id, err := s.rdb.Get(ctx, k).Result()
	if err == nil {
		return s.User(ctx, id)
	}
	if !errors.Is(err, redis.Nil) {
		return User{}, fmt.Errorf("auth: look up email: %w", err)
	}
	u := User{ID: "u" + randomID(12), Email: email, Name: strings.SplitN(email, "@", 2)[0]}
	if from.User.Guest && from.User.Name != "" && !strings.HasPrefix(from.User.Name, "guest-") {
		u.Name = from.User.Name // a name the guest chose carries over
	}
	ok, err := s.rdb.SetNX(ctx, k, u.ID, 0).Result()
	if err != nil {
		return User{}, fmt.Errorf("auth: create user: %w", err)
	}
	if !ok { // created concurrently by another sign-in
		return s.userByEmail(ctx, email, from)
	}
	return u, s.saveUser(ctx, u, 0)
}
