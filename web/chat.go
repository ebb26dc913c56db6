package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"unicode/utf8"
)

// maxChatRunes bounds one chat message.
const maxChatRunes = 2000

type chatInput struct {
	Text string `json:"text"`
}

// chatMessage is the payload of a chat "message" event.
type chatMessage struct {
	ID   string `json:"id"`
	User string `json:"user"`
	Text string `json:"text"`
}

// publish handles a client's publish: only chat rooms take messages from
// clients; everything else is written by the server side.
func (s *Server) publish(ctx context.Context, f clientFrame) error {
	kind, room, _ := strings.Cut(f.Group, ":")
	if kind != "chat" {
		return apiErr(CodeForbidden, "clients may publish to chat rooms only")
	}
	if !chatRoom.MatchString(room) {
		return apiErr(CodeBadRequest, "a chat room name is 1-64 of A-Z a-z 0-9 _ -")
	}
	var in chatInput
	dec := json.NewDecoder(bytes.NewReader(f.Data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return apiErr(CodeBadRequest, `chat data must be {"text": "..."}`)
	}
	text := strings.TrimSpace(in.Text)
	switch n := utf8.RuneCountInString(text); {
	case n == 0:
		return apiErr(CodeBadRequest, "a message needs text")
	case n > maxChatRunes:
		return apiErr(CodeBadRequest, "a message is at most 2000 characters")
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	_, err := s.log.Publish(ctx, f.Group, "message", chatMessage{ID: hex.EncodeToString(id[:]), User: "guest", Text: text})
	return err
}
