// Package auth owns who is who in taskstream, and nothing else:
//
//   - users (users.go): guests and signed-in users, their display names;
//   - browser credentials (sessions.go, guests.go): a signed-in user's
//     session, kept in Redis behind a signed cookie, and a guest's
//     identity, which lives in its signed cookie alone until the guest
//     does something that needs state (Store.Materialize);
//   - one-time sign-in codes sent by mail (codes.go, mail.go);
//   - bearer tokens for programs and admin tokens (tokens.go);
//   - revocation (revocation.go): the signal that lets every API replica
//     close the sockets of a session, guest or token that ended;
//   - rate limits (limits.go): one Redis GCRA limiter for every limit,
//     the sign-in ones here and the per-user ones of the web layer.
//
// Everything that has state lives in Redis, so any replica can serve any
// request and limits hold across replicas. Every key this package writes
// has a TTL, except signed-in users, their email index and their tokens.
package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"
)

// Errors the web layer maps to protocol codes. Wrong sign-in codes are
// *CodeError and limits *RateLimitedError; both say more.
var (
	ErrNoSession      = errors.New("auth: no valid session")
	ErrBadToken       = errors.New("auth: invalid or revoked token")
	ErrBadCode        = errors.New("auth: wrong or expired code")
	ErrBadEmail       = errors.New("auth: not an email address")
	ErrBadName        = errors.New("auth: a name is 1-40 printable characters")
	ErrNotFound       = errors.New("auth: not found")
	ErrSignInRequired = errors.New("auth: sign in first")
)

// Config configures a Store. Zero fields take the documented defaults.
type Config struct {
	// Prefix of every key. Default "ts".
	Prefix string
	// Secret signs session and guest cookies, and keys the HMAC of stored
	// sign-in codes (through keys derived from it with distinct labels).
	// Required; at least 32 bytes.
	Secret []byte
	// SessionTTL is how long an unused session, or guest cookie, lives.
	// Default 30 days.
	SessionTTL time.Duration
	// NewGuestTTL is how long a newly stored guest (see Materialize) lives
	// until its cookie comes back; from then on SessionTTL applies. A
	// client that keeps no cookies and submits a job stores a guest that
	// is never seen again; this bounds how long it lingers. Default 24
	// hours (at most SessionTTL).
	NewGuestTTL time.Duration
	// NewGuestsPerIP limits how many guests one client IP (an IPv6 /64)
	// may store per hour: a token bucket with that burst, refilled at that
	// rate. Guests that only look cost nothing and are not counted.
	// Default 60.
	NewGuestsPerIP int
	// CodeTTL is how long a sign-in code is valid, and the window of the
	// sign-in limits below. Default 10 minutes.
	CodeTTL time.Duration
	// CodeAttempts is how many wrong tries end a code. Default 5.
	CodeAttempts int
	// CodesPerEmail and CodesPerIP limit code mails per CodeTTL, per
	// address and per client IP. Defaults 5 and 20.
	CodesPerEmail, CodesPerIP int
	// LoginsPerIP limits login attempts per client IP per CodeTTL.
	// Default 30.
	LoginsPerIP int
	// LoginsPerEmailIP limits login attempts for one email from one client
	// IP per CodeTTL. There is deliberately no limit per email alone: it
	// would let anyone lock the owner out. Default 10.
	LoginsPerEmailIP int
	// AdminTokens are bearer tokens with admin rights: notify, the server
	// API (publish, disconnect) and minting scoped tokens.
	// Default none.
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
		c.NewGuestTTL = 24 * time.Hour
	}
	c.NewGuestTTL = min(c.NewGuestTTL, c.SessionTTL)
	if c.NewGuestsPerIP <= 0 {
		c.NewGuestsPerIP = 60
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
	if c.LoginsPerEmailIP <= 0 {
		c.LoginsPerEmailIP = 10
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Mailer == nil {
		c.Mailer = LogMailer{Logger: c.Logger}
	}
	return c
}

// Store keeps users, sessions, codes, tokens and limits in Redis. Safe for
// concurrent use.
type Store struct {
	rdb redis.UniversalClient
	cfg Config
	// guestKey signs guest cookies and codeKey keys the HMAC of stored
	// sign-in codes: both derived from the secret with their own label,
	// so no value made for one purpose is valid for another.
	guestKey, codeKey []byte
	// reads coalesces the session reads of one guest that wait together.
	reads guestReads
	// creating shares one Materialize among the concurrent requests of a
	// guest, by guest id.
	creating singleflight.Group
	// cluster is set on a Redis Cluster, where the keys of one user's
	// action (the user, its address's and its action's limits) lie in
	// different slots: such steps go one at a time there, not in one
	// script (act.go).
	cluster bool
}

// NewStore returns a Store; it fails when the secret is too short.
func NewStore(rdb redis.UniversalClient, cfg Config) (*Store, error) {
	if len(cfg.Secret) < 32 {
		return nil, errors.New("auth: the session secret must be at least 32 bytes")
	}
	cfg = cfg.withDefaults()
	_, cluster := rdb.(*redis.ClusterClient)
	return &Store{
		rdb: rdb, cfg: cfg, cluster: cluster,
		guestKey: deriveKey(cfg.Secret, "taskstream guest cookie v1"),
		codeKey:  deriveKey(cfg.Secret, "taskstream sign-in code v1"),
		reads:    guestReads{slots: make(chan struct{}, guestReadSlots), waiting: map[string]*guestRead{}},
	}, nil
}

// deriveKey is HMAC-SHA256(secret, label): a key of its own per purpose.
func deriveKey(secret []byte, label string) []byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(label))
	return mac.Sum(nil)
}

func (s *Store) key(parts ...string) string { return s.cfg.Prefix + ":" + strings.Join(parts, ":") }

func randomID(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

// hashSecret is the stored form of a bearer token: 32 random bytes need
// no key or salt to be safe behind SHA-256.
func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

func boolStr(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// ttlMillis is d for PEXPIRE and PX arguments.
func ttlMillis(d time.Duration) int64 { return max(d.Milliseconds(), 1) }
