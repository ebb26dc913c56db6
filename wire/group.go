package wire

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Group kinds.
const (
	KindJob       = "job"       // job:ID, a job's lifecycle and progress (its owner only)
	KindChat      = "chat"      // chat:ROOM, a chat room (any identity)
	KindUser      = "user"      // user:ID, a user's notifications (that user only)
	KindDashboard = "dashboard" // dashboard, operations statistics (signed-in users); has no id
)

// Group is a parsed group name: a kind, and an id for every kind but
// dashboard. Its String form is the name used on the wire ("job:ID").
type Group struct {
	Kind string
	ID   string
}

// Constructors for the groups the server knows.
func JobGroup(id string) Group    { return Group{Kind: KindJob, ID: id} }
func ChatGroup(room string) Group { return Group{Kind: KindChat, ID: room} }
func UserGroup(id string) Group   { return Group{Kind: KindUser, ID: id} }
func DashboardGroup() Group       { return Group{Kind: KindDashboard} }

// String formats g as its wire name: "kind:id", or "kind" without an id.
func (g Group) String() string {
	if g.ID == "" {
		return g.Kind
	}
	return g.Kind + ":" + g.ID
}

var (
	kindPattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)
	idPattern   = regexp.MustCompile(`^[A-Za-z0-9_.@-]{1,128}$`)
	roomPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

// ErrBadGroup is wrapped by ParseGroup's errors.
var ErrBadGroup = errors.New("bad group name")

// ParseGroup parses a wire group name: a kind of 1–32 of [a-z0-9_-]
// starting with a letter, optionally followed by ":" and an id of 1–128 of
// [A-Za-z0-9_.@-]. Kinds it does not know parse too (the server decides
// which groups a caller may watch); a chat room must also be a valid room
// name (ValidRoom), and dashboard has no id.
func ParseGroup(name string) (Group, error) {
	kind, id, hasID := strings.Cut(name, ":")
	if !kindPattern.MatchString(kind) || (hasID && !idPattern.MatchString(id)) {
		return Group{}, fmt.Errorf("%w %q: want kind:id, e.g. job:ID or chat:lobby", ErrBadGroup, name)
	}
	g := Group{Kind: kind, ID: id}
	switch {
	case kind == KindDashboard && hasID:
		return Group{}, fmt.Errorf("%w %q: the dashboard group is %q", ErrBadGroup, name, KindDashboard)
	case (kind == KindJob || kind == KindUser || kind == KindChat) && !hasID:
		return Group{}, fmt.Errorf("%w %q: a %s group needs an id", ErrBadGroup, name, kind)
	case kind == KindChat && !ValidRoom(id):
		return Group{}, fmt.Errorf("%w %q: a chat room name is 1-64 of A-Z a-z 0-9 _ -", ErrBadGroup, name)
	}
	return g, nil
}

// KindOf returns the kind of a group name that is already known to be
// valid ("job" of "job:42"), without parsing it again.
func KindOf(name string) string {
	kind, _, _ := strings.Cut(name, ":")
	return kind
}

// KnownKind reports whether kind is one of the group kinds the server
// serves: job, chat, user, dashboard.
func KnownKind(kind string) bool {
	switch kind {
	case KindJob, KindChat, KindUser, KindDashboard:
		return true
	}
	return false
}

// ValidGroup reports whether name parses as a group.
func ValidGroup(name string) bool {
	_, err := ParseGroup(name)
	return err == nil
}

// ValidRoom reports whether room is a chat room name: 1–64 of
// A-Z a-z 0-9 _ -.
func ValidRoom(room string) bool { return roomPattern.MatchString(room) }
