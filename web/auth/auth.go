// Package auth owns who is who in taskstream: users (guests and signed-in),
// browser sessions in signed cookies, one-time sign-in codes sent by mail,
// bearer tokens for programs, admin tokens, the revocation signal that
// lets every API replica close the sockets of a session or token that
// ended, and the per-user rate limits. Everything lives in Redis, so any
// replica can serve any request and limits hold across replicas.
package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/mail"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
)

// Errors the web layer maps to protocol codes.
var (
	ErrNoSession      = errors.New("auth: no valid session")
	ErrBadToken       = errors.New("auth: invalid or revoked token")
	ErrBadCode        = errors.New("auth: wrong or expired code")
	ErrBadEmail       = errors.New("auth: not an email address")
	ErrBadName        = errors.New("auth: a name is 1-40 printable characters")
	ErrNotFound       = errors.New("auth: not found")
	ErrSignInRequired = errors.New("auth: sign in first")
)

// RateLimitedError says how long to wait before trying again.
type RateLimitedError struct{ RetryAfter time.Duration }

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("auth: too many attempts; retry in %s", e.RetryAfter.Round(time.Second))
}

// Config configures a Store. Zero fields take the documented defaults.
type Config struct {
	// Prefix of every key. Default "ts".
	Prefix string
	// Secret signs session cookies. Required; at least 32 bytes.
	Secret []byte
	// SessionTTL is how long an unused session lives. Default 30 days.
	SessionTTL time.Duration
	// NewGuestTTL is how long a new guest (user and session) lives until
	// its cookie comes back; from then on SessionTTL applies. Clients that
	// keep no cookies (scripts, crawlers) make a guest per request, and
	// this bounds how long those linger. Default 24 hours.
	NewGuestTTL time.Duration
	// CodeTTL is how long a sign-in code is valid. Default 10 minutes.
	CodeTTL time.Duration
	// CodeAttempts is how many wrong codes end a code. Default 5.
	CodeAttempts int
	// CodesPerEmail and CodesPerIP limit code requests in CodeTTL.
	// Defaults 5 and 20.
	CodesPerEmail, CodesPerIP int
	// LoginsPerIP limits login attempts per IP in CodeTTL. Default 30.
	LoginsPerIP int
	// FailedLoginsPerEmail limits wrong codes per email per hour, across
	// all codes and IPs, so guessing cannot be spread over many codes
	// (at most 480 guesses a day at one of a million codes). An hour, not
	// a day, bounds how long an attacker can lock someone out. Default 20.
	FailedLoginsPerEmail int
	// AdminTokens are bearer tokens with admin rights (POST /api/notify).
	AdminTokens []string
	// Mailer sends sign-in codes. Default: LogMailer (the code goes to the log).
	Mailer Mailer
	// Logger for what cannot be returned. Default slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = "ts"
	}
	if c.SessionTTL <= 0 {
		c.SessionTTL = 30 * 24 * time.Hour
	}
	if c.NewGuestTTL <= 0 {
		c.NewGuestTTL = min(24*time.Hour, c.SessionTTL)
	}
	if c.CodeTTL <= 0 {
		c.CodeTTL = 10 * time.Minute
	}
	if c.CodeAttempts <= 0 {
		c.CodeAttempts = 5
	}
	if c.CodesPerEmail <= 0 {
		c.CodesPerEmail = 5
	}
	if c.CodesPerIP <= 0 {
		c.CodesPerIP = 20
	}
	if c.LoginsPerIP <= 0 {
		c.LoginsPerIP = 30
	}
	if c.FailedLoginsPerEmail <= 0 {
		c.FailedLoginsPerEmail = 20
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Mailer == nil {
		c.Mailer = LogMailer{Logger: c.Logger}
	}
	return c
}

// User is a person: a guest until they sign in with an email.
type User struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Email string `json:"email,omitempty"`
	Guest bool   `json:"guest"`
}

// Principal is who made a request and with which credential.
type Principal struct {
	User      User
	SessionID string // set for cookie sessions
	TokenID   string // set for bearer tokens
	Admin     bool   // an admin token
}

// Credential names the session or token behind p, as revocations do.
func (p Principal) Credential() string {
	switch {
	case p.SessionID != "":
		return "s:" + p.SessionID
	case p.TokenID != "":
		return "t:" + p.TokenID
	}
	return ""
}

// Store keeps users, sessions, codes and tokens in Redis. Safe for
// concurrent use.
type Store struct {
	rdb redis.UniversalClient
	cfg Config
}

// NewStore returns a Store; it fails when the secret is too short.
func NewStore(rdb redis.UniversalClient, cfg Config) (*Store, error) {
	if len(cfg.Secret) < 32 {
		return nil, errors.New("auth: the session secret must be at least 32 bytes")
	}
	return &Store{rdb: rdb, cfg: cfg.withDefaults()}, nil
}

func (s *Store) key(parts ...string) string { return s.cfg.Prefix + ":" + strings.Join(parts, ":") }

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// --- users ---

func (s *Store) saveUser(ctx context.Context, u User, ttl time.Duration) error {
	k := s.key("user", u.ID)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, k, "name", u.Name, "email", u.Email, "guest", boolStr(u.Guest))
		if ttl > 0 {
			p.Expire(ctx, k, ttl)
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

func boolStr(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// User returns user id.
func (s *Store) User(ctx context.Context, id string) (User, error) {
	m, err := s.rdb.HGetAll(ctx, s.key("user", id)).Result()
	if err != nil {
		return User{}, fmt.Errorf("auth: read user: %w", err)
	}
	if len(m) == 0 {
		return User{}, ErrNotFound
	}
	return User{ID: id, Name: m["name"], Email: m["email"], Guest: m["guest"] == "1"}, nil
}

// SetName sets a user's display name.
func (s *Store) SetName(ctx context.Context, id, name string) (User, error) {
	name = strings.TrimSpace(name)
	if n := utf8.RuneCountInString(name); n < 1 || n > 40 || strings.ContainsFunc(name, isControl) {
		return User{}, ErrBadName
	}
	if err := s.rdb.HSet(ctx, s.key("user", id), "name", name).Err(); err != nil {
		return User{}, fmt.Errorf("auth: set name: %w", err)
	}
	return s.User(ctx, id)
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// --- sessions ---

// sign returns the cookie value for session id: the id and its HMAC.
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

// NewGuest creates a guest user with a session and returns the principal
// and the session cookie value.
func (s *Store) NewGuest(ctx context.Context) (Principal, string, error) {
	u := User{ID: "g" + randomID(12), Guest: true}
	u.Name = "guest-" + u.ID[1:6]
	if err := s.saveUser(ctx, u, s.cfg.NewGuestTTL); err != nil {
		return Principal{}, "", err
	}
	return s.newSession(ctx, u, s.cfg.NewGuestTTL)
}

func (s *Store) newSession(ctx context.Context, u User, ttl time.Duration) (Principal, string, error) {
	sid := randomID(24)
	if err := s.rdb.Set(ctx, s.key("session", sid), u.ID, ttl).Err(); err != nil {
		return Principal{}, "", fmt.Errorf("auth: create session: %w", err)
	}
	return Principal{User: u, SessionID: sid}, s.sign(sid), nil
}

// Session returns the principal of a session cookie, extending the
// session (and a guest user) by SessionTTL.
func (s *Store) Session(ctx context.Context, cookie string) (Principal, error) {
	sid, ok := s.verify(cookie)
	if !ok {
		return Principal{}, ErrNoSession
	}
	uid, err := s.rdb.GetEx(ctx, s.key("session", sid), s.cfg.SessionTTL).Result()
	if errors.Is(err, redis.Nil) {
		return Principal{}, ErrNoSession
	}
	if err != nil {
		return Principal{}, fmt.Errorf("auth: read session: %w", err)
	}
	u, err := s.User(ctx, uid)
	if errors.Is(err, ErrNotFound) {
		return Principal{}, ErrNoSession
	}
	if err != nil {
		return Principal{}, err
	}
	if u.Guest {
		_ = s.rdb.Expire(ctx, s.key("user", uid), s.cfg.SessionTTL).Err()
	}
	return Principal{User: u, SessionID: sid}, nil
}

// Logout ends session sid and announces it, so every replica closes the
// sockets that use it.
func (s *Store) Logout(ctx context.Context, sid string) error {
	if err := s.rdb.Del(ctx, s.key("session", sid)).Err(); err != nil {
		return fmt.Errorf("auth: end session: %w", err)
	}
	return s.announceRevoked(ctx, "s:"+sid)
}

// --- sign-in codes ---

// allow counts one attempt against limit in window and reports when the
// limit is exceeded.
func (s *Store) allow(ctx context.Context, key string, limit int, window time.Duration) error {
	k := s.key("rl", key)
	n, err := s.rdb.Incr(ctx, k).Result()
	if err != nil {
		return fmt.Errorf("auth: rate limit: %w", err)
	}
	if n == 1 {
		_ = s.rdb.Expire(ctx, k, window).Err()
	}
	if n > int64(limit) {
		ttl, _ := s.rdb.TTL(ctx, k).Result()
		if ttl <= 0 {
			ttl = window
		}
		return &RateLimitedError{RetryAfter: ttl}
	}
	return nil
}

// NormalizeEmail checks an address and returns it lower-cased.
func NormalizeEmail(email string) (string, error) {
	email = strings.ToLower(strings.TrimSpace(email))
	a, err := mail.ParseAddress(email)
	if err != nil || a.Address != email || len(email) > 254 {
		return "", ErrBadEmail
	}
	return email, nil
}

// RequestCode sends a one-time code to email, within the per-email and
// per-IP limits. A new code replaces an earlier one.
func (s *Store) RequestCode(ctx context.Context, email, ip string) error {
	email, err := NormalizeEmail(email)
	if err != nil {
		return err
	}
	if err := s.allow(ctx, "code-ip:"+ip, s.cfg.CodesPerIP, s.cfg.CodeTTL); err != nil {
		return err
	}
	if err := s.allow(ctx, "code-email:"+email, s.cfg.CodesPerEmail, s.cfg.CodeTTL); err != nil {
		return err
	}
	n, err := rand.Int(rand.Reader, big.NewInt(1_000_000))
	if err != nil {
		return fmt.Errorf("auth: code: %w", err)
	}
	code := fmt.Sprintf("%06d", n.Int64())
	k := s.key("code", email)
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, k)
		p.HSet(ctx, k, "hash", hashSecret(email+":"+code), "attempts", 0)
		p.Expire(ctx, k, s.cfg.CodeTTL)
		return nil
	})
	if err != nil {
		return fmt.Errorf("auth: store code: %w", err)
	}
	body := fmt.Sprintf("Your taskstream sign-in code is %s.\r\nIt expires in %s and works once.\r\n", code, s.cfg.CodeTTL)
	if err := s.cfg.Mailer.Send(ctx, email, "Your taskstream sign-in code: "+code, body); err != nil {
		return fmt.Errorf("auth: send code: %w", err)
	}
	return nil
}

// checkCodeScript consumes a code: 1 when it matches (and deletes it), 0
// when it does not (counting the attempt, deleting the code after too
// many), -1 when there is none.
var checkCodeScript = redis.NewScript(`
local h = redis.call('HGET', KEYS[1], 'hash')
if not h then return -1 end
if h == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if n >= tonumber(ARGV[2]) then redis.call('DEL', KEYS[1]) end
return 0
`)

// Login checks email's code and signs the caller in: the user with that
// email (created on first sign-in) gets a new session. from is the
// caller's current principal; when it is a guest, its session ends (a new
// one replaces it, so a stolen guest cookie is useless afterwards) and the
// caller should move the guest's belongings (jobs) to the returned user.
func (s *Store) Login(ctx context.Context, email, code, ip string, from Principal) (Principal, string, error) {
	email, err := NormalizeEmail(email)
	if err != nil {
		return Principal{}, "", err
	}
	if err := s.allow(ctx, "login-ip:"+ip, s.cfg.LoginsPerIP, s.cfg.CodeTTL); err != nil {
		return Principal{}, "", err
	}
	failedKey := s.key("rl", "login-fail:"+email)
	if n, err := s.rdb.Get(ctx, failedKey).Int(); err == nil && n >= s.cfg.FailedLoginsPerEmail {
		ttl, _ := s.rdb.TTL(ctx, failedKey).Result()
		return Principal{}, "", &RateLimitedError{RetryAfter: max(ttl, time.Minute)}
	}
	code = strings.TrimSpace(code)
	res, err := checkCodeScript.Run(ctx, s.rdb, []string{s.key("code", email)}, hashSecret(email+":"+code), s.cfg.CodeAttempts).Int()
	if err != nil {
		return Principal{}, "", fmt.Errorf("auth: check code: %w", err)
	}
	if res == 0 { // a wrong guess at a live code
		if n, err := s.rdb.Incr(ctx, failedKey).Result(); err == nil && n == 1 {
			_ = s.rdb.Expire(ctx, failedKey, time.Hour).Err()
		}
	}
	if res != 1 {
		return Principal{}, "", ErrBadCode
	}
	u, err := s.userByEmail(ctx, email, from)
	if err != nil {
		return Principal{}, "", err
	}
	if from.SessionID != "" {
		if err := s.Logout(ctx, from.SessionID); err != nil {
			s.cfg.Logger.Warn("ending the guest session after sign-in failed", "err", err)
		}
	}
	return s.newSession(ctx, u, s.cfg.SessionTTL)
}

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

// --- tokens ---

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

// Bearer returns the principal of a bearer token: an admin token from the
// configuration, or a user's token.
func (s *Store) Bearer(ctx context.Context, token string) (Principal, error) {
	for _, a := range s.cfg.AdminTokens {
		if subtle.ConstantTimeCompare([]byte(a), []byte(token)) == 1 {
			return Principal{User: User{ID: "admin", Name: "admin"}, TokenID: "admin", Admin: true}, nil
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
	return Principal{User: u, TokenID: m["id"]}, nil
}

// --- revocation ---

func (s *Store) revokedChannel() string { return s.key("revoked") }

func (s *Store) announceRevoked(ctx context.Context, credential string) error {
	if err := s.rdb.Publish(ctx, s.revokedChannel(), credential).Err(); err != nil {
		return fmt.Errorf("auth: announce revocation: %w", err)
	}
	return nil
}

// WatchRevocations calls fn with the credential ("s:SESSION" or "t:TOKEN")
// of every session or token that ends, on any replica, until ctx ends.
// go-redis resubscribes after a lost connection; sockets also recheck
// their credential periodically (see web), which covers that gap.
func (s *Store) WatchRevocations(ctx context.Context, fn func(credential string)) {
	progress.Watch(ctx, s.rdb, s.revokedChannel(), fn)
}

// Valid reports whether p's credential still works (a periodic recheck
// for long-lived sockets).
func (s *Store) Valid(ctx context.Context, p Principal) (bool, error) {
	switch {
	case p.Admin:
		return true, nil
	case p.SessionID != "":
		n, err := s.rdb.Exists(ctx, s.key("session", p.SessionID)).Result()
		return n == 1, err
	case p.TokenID != "":
		n, err := s.rdb.HExists(ctx, s.key("tokens", p.User.ID), p.TokenID).Result()
		return n, err
	}
	return false, nil
}

// --- rate limits shared by all replicas ---

// gcraScript is a generic cell rate limiter: one key per caller holding the
// theoretical arrival time. It returns 0 when the request may go ahead,
// or the milliseconds to wait.
var gcraScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local wait = new_tat - now - burst * interval
if wait > 0 then return math.ceil(wait) end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(burst * interval) + 1000)
return 0
`)

// Allow takes one request of key from a token bucket of perSecond with
// burst, kept in Redis so every replica shares it. It returns 0 when the
// request may go ahead, or how long to wait.
func (s *Store) Allow(ctx context.Context, key string, perSecond float64, burst int) (time.Duration, error) {
	interval := 1000 / perSecond
	wait, err := gcraScript.Run(ctx, s.rdb, []string{s.key("bucket", key)},
		time.Now().UnixMilli(), interval, burst).Int64()
	if err != nil {
		return 0, fmt.Errorf("auth: rate limit %s: %w", key, err)
	}
	return time.Duration(wait) * time.Millisecond, nil
}
