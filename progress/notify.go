package progress

import (
	"context"
	"fmt"

	"taskstream/wire"
)

// Notification is the payload of a "notification" event: a short message
// for a person, shown on every tab they have open.
type Notification struct {
	Title string `json:"title"`
	Body  string `json:"body,omitempty"`
	Link  string `json:"link,omitempty"`
}

// UserGroup is the group that reaches every open tab of user id.
func UserGroup(id string) string { return wire.UserGroup(id).String() }

// Notify pushes n to group (a user's group from UserGroup, or any other)
// from any Go process that shares the Redis: the same fan-out as
// everything else, so every replica's sockets in that group get it, in
// order, and a tab that reconnects catches up on what it missed.
func Notify(ctx context.Context, log *Log, group string, n Notification) (*Event, error) {
	if n.Title == "" {
		return nil, fmt.Errorf("%w: a notification needs a title", ErrInvalid)
	}
	return log.Publish(ctx, group, wire.EventNotification, n)
}
