package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"
	"golang.org/x/time/rate"

	"taskstream/progress"
	"taskstream/web/auth"
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

// publish handles a client's publish (socket op or HTTP): only chat rooms
// take messages from clients; everything else is written by the server.
func (s *Server) publish(ctx context.Context, who auth.Principal, group string, data json.RawMessage) error {
	kind, room, _ := strings.Cut(group, ":")
	if kind != "chat" {
		return apiErr(CodeForbidden, "clients may publish to chat rooms only")
	}
	if !chatRoom.MatchString(room) {
		return apiErr(CodeBadRequest, "a chat room name is 1-64 of A-Z a-z 0-9 _ -")
	}
	var in chatInput
	dec := json.NewDecoder(bytes.NewReader(data))
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
	if wait := s.chat.reserve(who.User.ID); wait > 0 {
		return &APIError{Code: CodeRateLimited, Message: "slow down: too many messages", RetryAfter: int(math.Ceil(wait.Seconds()))}
	}
	author, err := s.currentMember(ctx, who)
	if err != nil {
		return err
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	msg := chatMessage{ID: hex.EncodeToString(id[:]), User: author, Text: text}
	_, err = s.log.Publish(ctx, group, "message", msg)
	return err
}

// currentMember is who as chat shows them, with their current name: a
// socket's principal was read when it opened, and the name may have
// changed since (on this tab or another).
func (s *Server) currentMember(ctx context.Context, who auth.Principal) (progress.Member, error) {
	u, err := s.auth.User(ctx, who.User.ID)
	if errors.Is(err, auth.ErrNotFound) {
		return progress.Member{ID: who.User.ID, Name: who.User.Name}, nil
	}
	if err != nil {
		return progress.Member{}, err
	}
	return progress.Member{ID: u.ID, Name: u.Name}, nil
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
	if err := s.publish(r.Context(), principalOf(r), group, body); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"group": group})
}

func (s *Server) handleChatPage(w http.ResponseWriter, r *http.Request) {
	if !chatRoom.MatchString(chi.URLParam(r, "room")) {
		s.writeError(w, r, apiErr(CodeNotFound, "a chat room name is 1-64 of A-Z a-z 0-9 _ -"))
		return
	}
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeFileFS(w, r, assets, "static/chat.html")
}

// limiters keeps one token bucket per user, forgetting idle ones.
type limiters struct {
	mu    sync.Mutex
	r     rate.Limit
	burst int
	m     map[string]*limiterEntry
}

type limiterEntry struct {
	l    *rate.Limiter
	seen time.Time
}

func newLimiters(perSecond float64, burst int) *limiters {
	return &limiters{r: rate.Limit(perSecond), burst: burst, m: map[string]*limiterEntry{}}
}

// reserve takes a token for key, or returns how long until one is free.
func (l *limiters) reserve(key string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.m[key]
	if e == nil {
		e = &limiterEntry{l: rate.NewLimiter(l.r, l.burst)}
		l.m[key] = e
	}
	now := time.Now()
	e.seen = now
	res := e.l.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return d
	}
	return 0
}

// sweep forgets buckets idle long enough to be full again.
func (l *limiters) sweep(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			l.mu.Lock()
			for k, e := range l.m {
				if now.Sub(e.seen) > time.Minute {
					delete(l.m, k)
				}
			}
			l.mu.Unlock()
		}
	}
}
