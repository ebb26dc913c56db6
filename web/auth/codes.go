package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/mail"
	"strings"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
)

// Sign-in codes: six random digits, mailed, valid for CodeTTL, good for
// one sign-in, ended by CodeAttempts wrong tries. Redis holds only
// HMAC-SHA256(codeKey, email, code), with codeKey derived from the server
// secret: whoever reads Redis cannot test a million candidates offline.
//
// Nothing here is limited per email alone except code mails: a limit on
// wrong tries per email would let anyone lock the owner out from another
// address. Guessing is bounded by the mails instead: at most
// CodesPerEmail codes per CodeTTL, each ending after CodeAttempts wrong
// tries.

// CodeFailure says why a sign-in code was refused.
type CodeFailure int

// Reasons a code is refused.
const (
	CodeWrong        CodeFailure = iota + 1 // not the code; TriesLeft says how many tries remain
	CodeTooManyTries                        // ended by wrong tries earlier
	CodeExpired                             // older than CodeTTL
	CodeUsed                                // already used to sign in
	CodeMissing                             // none was requested for this email (or long ago)
)

// CodeError is a refused sign-in code. errors.Is(err, ErrBadCode) holds.
type CodeError struct {
	Reason    CodeFailure
	TriesLeft int // for CodeWrong: 0 means that was the last try
}

func (e *CodeError) Error() string {
	switch e.Reason {
	case CodeWrong:
		return fmt.Sprintf("auth: wrong code, %d tries left", e.TriesLeft)
	case CodeTooManyTries:
		return "auth: too many wrong tries for this code"
	case CodeExpired:
		return "auth: the code has expired"
	case CodeUsed:
		return "auth: the code was already used"
	}
	return "auth: no code was requested for this email"
}

// Is makes every CodeError an ErrBadCode.
func (e *CodeError) Is(target error) bool { return target == ErrBadCode }

// NormalizeEmail checks an address and returns it lower-cased.
func NormalizeEmail(email string) (string, error) {
	email = strings.ToLower(strings.TrimSpace(email))
	a, err := mail.ParseAddress(email)
	if err != nil || a.Address != email || len(email) > 254 {
		return "", ErrBadEmail
	}
	return email, nil
}

func (s *Store) codeKeyOf(email string) string { return s.key("code", email) }

// codeHash is what Redis holds of a code.
func (s *Store) codeHash(email, code string) string {
	mac := hmac.New(sha256.New, s.codeKey)
	mac.Write([]byte(email))
	mac.Write([]byte{0})
	mac.Write([]byte(code))
	return hex.EncodeToString(mac.Sum(nil))
}

// RequestCode mails a one-time code to email, within the per-IP and
// per-email limits on code mails. A new code replaces an earlier one.
func (s *Store) RequestCode(ctx context.Context, email, ip string) error {
	email, err := NormalizeEmail(email)
	if err != nil {
		return err
	}
	// The IP's budget first: a client over it spends none of the email's.
	if err := s.allowN(ctx, "code-ip:"+ipKey(ip), s.cfg.CodesPerIP, s.cfg.CodeTTL, "code requests from your address"); err != nil {
		return err
	}
	if err := s.allowN(ctx, "code-email:"+email, s.cfg.CodesPerEmail, s.cfg.CodeTTL, "code requests for this email"); err != nil {
		return err
	}
	n, err := rand.Int(rand.Reader, big.NewInt(1_000_000))
	if err != nil {
		return fmt.Errorf("auth: code: %w", err)
	}
	code := fmt.Sprintf("%06d", n.Int64())
	k := s.codeKeyOf(email)
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, k)
		p.HSet(ctx, k, "hash", s.codeHash(email, code), "attempts", 0, "state", "live")
		// Kept for a second CodeTTL after it expires, so a late try is told
		// "expired" rather than "never requested".
		p.PExpire(ctx, k, 2*s.cfg.CodeTTL)
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

// checkCodeScript tries a code. The code lives while more than ARGV[3]
// milliseconds (CodeTTL) of its key's TTL remain, so expiry is judged by
// Redis's clock alone. It returns {outcome, tries left}; "ok" marks the
// code used, the last wrong try marks it dead.
var checkCodeScript = progress.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'hash', 'state')
if not f[2] then return {'missing', 0} end
if f[2] == 'used' then return {'used', 0} end
if f[2] == 'dead' then return {'tries', 0} end
if redis.call('PTTL', KEYS[1]) <= tonumber(ARGV[3]) then return {'expired', 0} end
if f[1] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'used')
  redis.call('HDEL', KEYS[1], 'hash')
  return {'ok', 0}
end
local left = tonumber(ARGV[2]) - redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if left <= 0 then
  redis.call('HSET', KEYS[1], 'state', 'dead')
  redis.call('HDEL', KEYS[1], 'hash')
  left = 0
end
return {'wrong', left}
`)

// Login checks email's code and signs the caller in: the user with that
// email (created on first sign-in) gets a new session. Attempts are
// limited per client IP and per email and IP; a refused code is a
// *CodeError. from is the caller's current principal: its browser
// credential ends (a guest's cookie is revoked, so a copy of it is
// useless afterwards), and the caller should move a guest's belongings
// (jobs) to the returned user.
func (s *Store) Login(ctx context.Context, email, code, ip string, from Principal) (Principal, string, error) {
	email, err := NormalizeEmail(email)
	if err != nil {
		return Principal{}, "", err
	}
	if err := s.allowN(ctx, "login-ip:"+ipKey(ip), s.cfg.LoginsPerIP, s.cfg.CodeTTL, "sign-in attempts from your address"); err != nil {
		return Principal{}, "", err
	}
	if err := s.allowN(ctx, "login-email-ip:"+email+"|"+ipKey(ip), s.cfg.LoginsPerEmailIP, s.cfg.CodeTTL, "sign-in attempts for this email from your address"); err != nil {
		return Principal{}, "", err
	}
	res, err := checkCodeScript.Run(ctx, s.rdb, []string{s.codeKeyOf(email)},
		s.codeHash(email, strings.TrimSpace(code)), s.cfg.CodeAttempts, s.cfg.CodeTTL.Milliseconds()).Slice()
	if err != nil {
		return Principal{}, "", fmt.Errorf("auth: check code: %w", err)
	}
	outcome, _ := res[0].(string)
	left, _ := res[1].(int64)
	switch outcome {
	case "ok":
	case "wrong":
		return Principal{}, "", &CodeError{Reason: CodeWrong, TriesLeft: int(left)}
	case "tries":
		return Principal{}, "", &CodeError{Reason: CodeTooManyTries}
	case "expired":
		return Principal{}, "", &CodeError{Reason: CodeExpired}
	case "used":
		return Principal{}, "", &CodeError{Reason: CodeUsed}
	default:
		return Principal{}, "", &CodeError{Reason: CodeMissing}
	}
	u, err := s.userByEmail(ctx, email, from)
	if err != nil {
		return Principal{}, "", err
	}
	if err := s.endBrowser(ctx, from); err != nil {
		s.cfg.Logger.Warn("ending the previous session after sign-in failed", "err", err)
	}
	return s.newSession(ctx, u, s.cfg.SessionTTL)
}

// endBrowser ends from's session or guest cookie, if it has one, and
// announces it.
func (s *Store) endBrowser(ctx context.Context, from Principal) error {
	switch {
	case from.SessionID != "":
		if err := s.rdb.Del(ctx, s.sessionKey(from.SessionID)).Err(); err != nil {
			return fmt.Errorf("auth: end session: %w", err)
		}
	case from.isGuestCookie():
		if err := s.revokeGuest(ctx, from.User); err != nil {
			return err
		}
	default:
		return nil
	}
	return s.announceRevoked(ctx, from.Credential())
}
