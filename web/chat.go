package web

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"taskstream/progress"
	"taskstream/web/auth"
	"taskstream/wire"
)

// maxChatRunes bounds one chat message.
const maxChatRunes = 2000

type chatInput struct {
	Text string `json:"text"`
}

// chatMessage is the payload of a chat "message" event.
type chatMessage struct {
	ID   string          `json:"id"`
	User progress.Member `json:"user"`
	Text string          `json:"text"`
}

// publish handles a client's publish (socket op or HTTP) of a valid group
// name: only chat rooms take messages from clients; everything else is
// written by the server. It returns who acted: who, stored if it was a
// guest that had not acted before.
func (s *Server) publish(ctx context.Context, who auth.Principal, group string, data json.RawMessage) (auth.Principal, error) {
	if !isChat(group) {
		return who, apiErr(CodeForbidden, "clients may publish to chat rooms only")
	}
	var in chatInput
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return who, apiErr(CodeBadRequest, `chat data must be {"text": "..."}`)
	}
	text := strings.TrimSpace(in.Text)
	switch n := utf8.RuneCountInString(text); {
	case n == 0:
		return who, apiErr(CodeBadRequest, "a message needs text")
	case n > maxChatRunes:
		return who, apiErr(CodeBadRequest, "a message is at most 2000 characters")
	}
	// A message is state: store the guest; then the chat limit, and the
	// author's current name (in one round trip where the Redis allows).
	who, author, err := s.act(ctx, who, "chat:"+who.User.ID, s.cfg.ChatRate, s.cfg.ChatBurst, "slow down: too many messages")
	if err != nil {
		return who, err
	}
	msg := chatMessage{ID: newID(), User: author, Text: text}
	_, err = s.log.Publish(ctx, group, wire.EventMessage, msg)
	return who, err
}

// limit takes one request from key's bucket (shared by all replicas) or
// returns a rate_limited error that says when to retry.
func (s *Server) limit(ctx context.Context, key string, perSecond float64, burst int, msg string) error {
	wait, err := s.auth.Allow(ctx, key, perSecond, burst)
	if err != nil {
		return err
	}
	if wait > 0 {
		return rateLimited(wait, msg)
	}
	return nil
}

// handlePostMessage is the HTTP way to post to a chat room.
func (s *Server) handlePostMessage(w http.ResponseWriter, r *http.Request) {
	group, err := url.PathUnescape(chi.URLParam(r, "group"))
	if err != nil || !progress.ValidGroup(group) {
		s.writeError(w, r, apiErr(CodeBadRequest, "bad group name"))
		return
	}
	var body json.RawMessage
	if err := s.decodeBody(w, r, &body); err != nil {
		s.writeError(w, r, err)
		return
	}
	if _, err := s.publish(r.Context(), principalOf(r), group, body); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"group": group})
}

func (s *Server) handleChatPage(w http.ResponseWriter, r *http.Request) {
	if !wire.ValidRoom(chi.URLParam(r, "room")) {
		s.writeError(w, r, apiErr(CodeNotFound, "a chat room name is 1-64 of A-Z a-z 0-9 _ -"))
		return
	}
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeFileFS(w, r, assets, "static/chat.html")
}
