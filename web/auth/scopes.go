package auth

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"taskstream/wire"
)

// Scope actions: what a scoped bearer token may do, on which groups.
const (
	ActionPublish  = "publish"  // POST /api/publish and /api/publish/batch
	ActionHistory  = "history"  // GET /api/groups/{group}/history
	ActionPresence = "presence" // GET /api/groups/{group}/presence (chat rooms)
	ActionAdmin    = "admin"    // everything an admin token may do; only "admin:*"
)

// MaxScopes bounds the scopes of one token.
const MaxScopes = 32

// ErrBadScope is wrapped by ParseScope's errors.
var ErrBadScope = errors.New("bad scope")

// Scope is one right of a bearer token: an action on the groups a pattern
// matches. Its string form is "ACTION:PATTERN", where PATTERN is "*"
// (every group), "KIND:*" (every group of a kind: job, chat or user) or
// one exact group name ("chat:lobby", "dashboard"). Examples:
// "publish:chat:*", "history:*", "presence:chat:lobby", "admin:*".
type Scope struct {
	Action  string
	Pattern string
}

// String formats s as "ACTION:PATTERN".
func (s Scope) String() string { return s.Action + ":" + s.Pattern }

// kindsWithIDs are the group kinds a "KIND:*" pattern may name.
var kindsWithIDs = []string{wire.KindJob, wire.KindChat, wire.KindUser}

// ParseScope parses "ACTION:PATTERN" (see Scope). Presence is kept for
// chat rooms only, so a presence pattern must be "*", "chat:*" or a room;
// the admin action takes "*" only.
func ParseScope(str string) (Scope, error) {
	action, pattern, ok := strings.Cut(str, ":")
	if !ok || pattern == "" {
		return Scope{}, fmt.Errorf("%w %q: want ACTION:PATTERN, e.g. publish:chat:* or history:*", ErrBadScope, str)
	}
	s := Scope{Action: action, Pattern: pattern}
	switch action {
	case ActionPublish, ActionHistory, ActionPresence:
	case ActionAdmin:
		if pattern != "*" {
			return Scope{}, fmt.Errorf("%w %q: the admin scope is admin:*", ErrBadScope, str)
		}
		return s, nil
	default:
		return Scope{}, fmt.Errorf("%w %q: the action is one of publish, history, presence, admin", ErrBadScope, str)
	}
	kind := ""
	switch k, rest, _ := strings.Cut(pattern, ":"); {
	case pattern == "*":
	case rest == "*":
		if !slices.Contains(kindsWithIDs, k) {
			return Scope{}, fmt.Errorf("%w %q: KIND:* takes job, chat or user", ErrBadScope, str)
		}
		kind = k
	default:
		g, err := wire.ParseGroup(pattern)
		if err != nil || !wire.KnownKind(g.Kind) {
			return Scope{}, fmt.Errorf("%w %q: the pattern is *, KIND:* or a group name such as chat:lobby", ErrBadScope, str)
		}
		kind = g.Kind
	}
	if action == ActionPresence && kind != "" && kind != wire.KindChat {
		return Scope{}, fmt.Errorf("%w %q: presence is kept for chat rooms only", ErrBadScope, str)
	}
	return s, nil
}

// Allows reports whether s lets its holder do action on group g.
func (s Scope) Allows(action string, g wire.Group) bool {
	if s.Action != action {
		return false
	}
	if s.Pattern == "*" {
		return true
	}
	if kind, ok := strings.CutSuffix(s.Pattern, ":*"); ok {
		return g.Kind == kind
	}
	return g.String() == s.Pattern
}

// Scopes are a token's rights. A token without scopes acts as its owner.
type Scopes []Scope

// ParseScopes parses each of strs (ParseScope), dropping duplicates; at
// most MaxScopes.
func ParseScopes(strs []string) (Scopes, error) {
	if len(strs) > MaxScopes {
		return nil, fmt.Errorf("%w: at most %d scopes", ErrBadScope, MaxScopes)
	}
	var out Scopes
	for _, str := range strs {
		s, err := ParseScope(str)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out, nil
}

// Allow reports whether any of ss lets its holder do action on g.
func (ss Scopes) Allow(action string, g wire.Group) bool {
	return slices.ContainsFunc(ss, func(s Scope) bool { return s.Allows(action, g) })
}

// Has reports whether ss holds a scope of action (on any pattern).
func (ss Scopes) Has(action string) bool {
	return slices.ContainsFunc(ss, func(s Scope) bool { return s.Action == action })
}

// Strings returns the scopes' string forms, in order (never nil, so a
// token without scopes lists "scopes": []).
func (ss Scopes) Strings() []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.String()
	}
	return out
}

// adminOnly reports whether minting ss needs an admin: publishing and
// admin rights are never a signed-in user's to give.
func (ss Scopes) adminOnly() bool { return ss.Has(ActionPublish) || ss.Has(ActionAdmin) }

// encodeScopes is the stored form of ss: their strings joined by spaces
// (a scope never holds a space or "|").
func encodeScopes(ss Scopes) string { return strings.Join(ss.Strings(), " ") }

// decodeScopes reads encodeScopes's form. ok is false when a stored
// scope no longer parses (a grammar that got stricter): the caller must
// then refuse the token, since dropping the scope could leave a token
// without scopes, which would act as its owner.
func decodeScopes(str string) (ss Scopes, ok bool) {
	for _, f := range strings.Fields(str) {
		s, err := ParseScope(f)
		if err != nil {
			return nil, false
		}
		ss = append(ss, s)
	}
	return ss, true
}
