package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"taskstream/progress"
	"taskstream/web/auth"
	"taskstream/wire"
)

// The server API for backends (docs/protocol.md, "The server API"):
// publish into groups, read a group's history and a room's presence,
// disconnect a user everywhere. Callers are bearer tokens whose scopes
// (web/auth/scopes.go) say what they may do, admin tokens, and for
// history and presence anyone who may watch the group.

const (
	// historyDefault and historyMax bound one page of GET .../history.
	historyDefault = 100
	historyMax     = 1000
)

// refuseScoped answers 403 to a scoped token (one that is not an
// admin's) on the routes it wraps: a scoped token may use the server API
// and GET /api/me only, so a token made to publish cannot also submit
// jobs or open sockets as its owner.
func (s *Server) refuseScoped(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := principalOf(r); len(p.Scopes) > 0 && !p.Admin {
			s.writeError(w, r, apiErr(CodeForbidden, fmt.Sprintf(
				"this token is limited to its scopes (%s): it may use the server API (publish, history, presence) only",
				strings.Join(p.Scopes.Strings(), " "))))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// mayDo decides whether who may do action (auth.ActionPublish, History or
// Presence) on group g. Admins may do everything. A scoped token needs a
// scope for it; an admin's token then may, a user's token only what its
// user may besides. Without scopes, history and presence are for whoever
// may watch the group (authorizeGroup), and publishing is refused.
func (s *Server) mayDo(ctx context.Context, who auth.Principal, action string, g wire.Group) error {
	if who.Admin {
		return nil
	}
	if len(who.Scopes) > 0 && !who.Scopes.Allow(action, g) {
		return apiErr(CodeForbidden, fmt.Sprintf("this token's scopes (%s) do not allow %s on %s",
			strings.Join(who.Scopes.Strings(), " "), action, g))
	}
	if who.AdminOwned && len(who.Scopes) > 0 {
		return nil // its scopes are its rights
	}
	if action == auth.ActionPublish {
		return apiErr(CodeForbidden, "publishing needs an admin token or a token with a publish scope (minted by an admin)")
	}
	return s.authorizeGroup(ctx, who, g.String())
}

// servedGroup parses a group name the server serves (a known kind).
func servedGroup(name string) (wire.Group, *APIError) {
	g, err := wire.ParseGroup(name)
	if err != nil {
		return g, apiErr(CodeBadRequest, err.Error())
	}
	if wire.KnownKind(g.Kind) {
		return g, nil
	}
	return g, apiErr(CodeBadRequest, "unknown group kind "+strconv.Quote(g.Kind)+": job, chat, user or dashboard")
}

// groupParam is the {group} of the URL (URL-encoded: chat%3Alobby).
func groupParam(r *http.Request) (wire.Group, *APIError) {
	name, err := url.PathUnescape(chi.URLParam(r, "group"))
	if err != nil {
		return wire.Group{}, apiErr(CodeBadRequest, "the group in the path is not URL-encoded properly")
	}
	return servedGroup(name)
}

// publishRequest is one event to publish: the body of POST /api/publish
// and each item of a batch.
type publishRequest struct {
	Group string          `json:"group"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`

	group wire.Group // Group, parsed
}

// publishResult is where a published event landed in its group's log.
type publishResult struct {
	Group string `json:"group"`
	Seq   int64  `json:"seq"`
	Epoch string `json:"epoch"`
}

// decodePublish parses and checks one event to publish: a JSON object
// with exactly group, event and data (any JSON value, null included, of
// at most maxData bytes as sent). It does not authorize (see
// checkPublish).
func decodePublish(b []byte, maxData int) (publishRequest, *APIError) {
	var p publishRequest
	if t := bytes.TrimSpace(b); len(t) == 0 || t[0] != '{' {
		return p, apiErr(CodeBadRequest, `an event is a JSON object {"group", "event", "data"}`)
	}
	if aerr := decodeStrict(b, &p); aerr != nil {
		return publishRequest{}, aerr
	}
	if p.Group == "" {
		return p, apiErr(CodeBadRequest, `"group" is required`)
	}
	g, aerr := servedGroup(p.Group)
	if aerr != nil {
		return p, aerr
	}
	p.group = g
	switch {
	case p.Event == "":
		return p, apiErr(CodeBadRequest, `"event" is required`)
	case !progress.ValidEventName(p.Event):
		return p, apiErr(CodeBadRequest, fmt.Sprintf("bad event name %q: 1-64 of a-z 0-9 _ . - starting with a letter", p.Event))
	case len(p.Data) == 0:
		return p, apiErr(CodeBadRequest, `"data" is required (null for none)`)
	case len(p.Data) > maxData:
		return p, apiErr(CodeTooLarge, fmt.Sprintf("an event's data is at most %d bytes", maxData))
	}
	return p, nil
}

// decodePublishBatch parses the body of POST /api/publish/batch,
// {"events": [...]} with 1 to max events, into the raw events, each to be
// decoded on its own (decodePublish) so one bad event fails alone.
func decodePublishBatch(b []byte, max int) ([]json.RawMessage, *APIError) {
	var batch struct {
		Events []json.RawMessage `json:"events"`
	}
	if t := bytes.TrimSpace(b); len(t) == 0 || t[0] != '{' {
		return nil, apiErr(CodeBadRequest, `a batch is a JSON object {"events": [...]}`)
	}
	if aerr := decodeStrict(b, &batch); aerr != nil {
		return nil, aerr
	}
	switch n := len(batch.Events); {
	case n == 0:
		return nil, apiErr(CodeBadRequest, fmt.Sprintf(`"events" must hold 1 to %d events`, max))
	case n > max:
		return nil, apiErr(CodeTooLarge, fmt.Sprintf("a batch holds at most %d events, not %d", max, n))
	}
	return batch.Events, nil
}

// checkPublish applies the group rules to p for who: events the server
// itself writes (wire.Reserved: a job's lifecycle, a room's presence) are
// refused to everyone, and who needs the right to publish to the group.
// No chat rate limit applies: publishers are trusted programs, and this
// is the benchmarks' publish path.
func (s *Server) checkPublish(ctx context.Context, who auth.Principal, p publishRequest) error {
	if wire.Reserved(p.group.Kind, p.Event) {
		return apiErr(CodeForbidden, fmt.Sprintf("%q events in %s groups are the server's own", p.Event, p.group.Kind))
	}
	return s.mayDo(ctx, who, auth.ActionPublish, p.group)
}

// publishError maps an error of the log's publish: an argument it refuses
// is the caller's (400); anything else goes on (503 or 500).
func publishError(err error) error {
	if errors.Is(err, progress.ErrInvalid) {
		return apiErr(CodeBadRequest, err.Error())
	}
	return err
}

func (s *Server) handlePublish(w http.ResponseWriter, r *http.Request) {
	body, err := s.readBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	p, aerr := decodePublish(body, int(s.cfg.MaxFrameBytes))
	if aerr != nil {
		s.writeError(w, r, aerr)
		return
	}
	if err := s.checkPublish(r.Context(), principalOf(r), p); err != nil {
		s.writeError(w, r, err)
		return
	}
	ev, err := s.log.Publish(r.Context(), p.Group, p.Event, p.Data)
	if err != nil {
		s.writeError(w, r, publishError(err))
		return
	}
	writeJSON(w, http.StatusOK, publishResult{Group: ev.Group, Seq: ev.Seq, Epoch: ev.Epoch})
}

// handlePublishBatch publishes the events of a batch that pass their
// checks in one round trip to Redis (progress.Log.PublishMany), and
// answers each event with its result or its own error, in order. Each
// event is its own step, not the batch one atomic step: a batch saves
// round trips, and one bad event fails alone. When Redis is unavailable
// the answer carries Retry-After.
func (s *Server) handlePublishBatch(w http.ResponseWriter, r *http.Request) {
	body, err := s.readBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	events, aerr := decodePublishBatch(body, s.cfg.PublishBatch)
	if aerr != nil {
		s.writeError(w, r, aerr)
		return
	}
	who := principalOf(r)
	results := make([]any, len(events))
	fail := func(i int, err error) {
		ae := s.toAPIError(err, "method", r.Method, "path", r.URL.Path, "item", i)
		if ae.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(ae.RetryAfter))
		}
		results[i] = wire.NewErrorBody(ae.Code, ae.Message)
	}
	posts := make([]progress.Post, 0, len(events))
	at := make([]int, 0, len(events)) // the index in events of each post
	for i, raw := range events {
		p, aerr := decodePublish(raw, int(s.cfg.MaxFrameBytes))
		if aerr != nil {
			fail(i, aerr)
			continue
		}
		if err := s.checkPublish(r.Context(), who, p); err != nil {
			fail(i, err)
			continue
		}
		posts = append(posts, progress.Post{Group: p.Group, Name: p.Event, Data: p.Data})
		at = append(at, i)
	}
	evs, errs := s.log.PublishMany(r.Context(), posts)
	for j, i := range at {
		if errs[j] != nil {
			fail(i, publishError(errs[j]))
			continue
		}
		results[i] = publishResult{Group: evs[j].Group, Seq: evs[j].Seq, Epoch: evs[j].Epoch}
	}
	writeJSON(w, http.StatusOK, map[string]any{"results": results})
}

// historyAnswer is a page of a group's log.
type historyAnswer struct {
	Group     string            `json:"group"`
	Epoch     string            `json:"epoch"`
	LastSeq   int64             `json:"last_seq"`
	Recovered bool              `json:"recovered"`
	Events    []json.RawMessage `json:"events"` // wire.EventFrame each
}

// handleHistory answers up to limit events of the group's log after seq
// after, with the socket's resume rules: recovered is false when the
// position could not be resumed (epoch changed, trimmed past, beyond the
// last seq), and the page then starts at the oldest retained event.
func (s *Server) handleHistory(w http.ResponseWriter, r *http.Request) {
	g, aerr := groupParam(r)
	if aerr != nil {
		s.writeError(w, r, aerr)
		return
	}
	if err := s.mayDo(r.Context(), principalOf(r), auth.ActionHistory, g); err != nil {
		s.writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	var after int64
	if v := q.Get("after"); v != "" {
		if after, aerr = parseSeq(v); aerr != nil {
			s.writeError(w, r, aerr)
			return
		}
	}
	limit := historyDefault
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > historyMax {
			s.writeError(w, r, apiErr(CodeBadRequest, fmt.Sprintf("limit must be an integer from 1 to %d", historyMax)))
			return
		}
		limit = n
	}
	epoch, group := q.Get("epoch"), g.String()
	snap, err := s.log.ReadN(r.Context(), group, after, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	recovered := true
	switch {
	case (epoch != "" && epoch != snap.Epoch) || after > snap.LastSeq:
		// The history the caller knows is gone: start it over.
		recovered = false
		if after > 0 {
			if snap, err = s.log.ReadN(r.Context(), group, 0, limit); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
	case len(snap.Events) > 0 && snap.Events[0].Seq != after+1, len(snap.Events) == 0 && snap.LastSeq > after:
		recovered = false // trimmed past the caller's position
	}
	ans := historyAnswer{Group: group, Epoch: snap.Epoch, LastSeq: snap.LastSeq, Recovered: recovered, Events: make([]json.RawMessage, len(snap.Events))}
	for i, ev := range snap.Events {
		ans.Events[i] = ev.Frame()
	}
	writeJSON(w, http.StatusOK, ans)
}

// handlePresence answers who is in a chat room: {"group", "users"}.
func (s *Server) handlePresence(w http.ResponseWriter, r *http.Request) {
	g, aerr := groupParam(r)
	if aerr != nil {
		s.writeError(w, r, aerr)
		return
	}
	if g.Kind != wire.KindChat {
		s.writeError(w, r, apiErr(CodeBadRequest, "presence is kept for chat rooms only (chat:ROOM)"))
		return
	}
	if err := s.mayDo(r.Context(), principalOf(r), auth.ActionPresence, g); err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.pres == nil {
		s.writeError(w, r, apiErr(CodeNotFound, "this server keeps no presence"))
		return
	}
	users, err := s.pres.List(r.Context(), g.String())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"group": g.String(), "users": users})
}

// handleDisconnect closes every socket and stream of a user on every
// replica (1008, "disconnected by an administrator"); admins only. It
// answers once the signal is sent: each replica closes its own.
func (s *Server) handleDisconnect(w http.ResponseWriter, r *http.Request) {
	if !principalOf(r).Admin {
		s.writeError(w, r, apiErr(CodeForbidden, "disconnecting a user needs an admin token or a token with the admin:* scope"))
		return
	}
	id, err := url.PathUnescape(chi.URLParam(r, "id"))
	if err != nil || !wire.ValidGroup(wire.UserGroup(id).String()) {
		s.writeError(w, r, apiErr(CodeBadRequest, "a user id is 1-128 of A-Z a-z 0-9 _ . @ -"))
		return
	}
	if err := s.auth.DisconnectUser(r.Context(), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"user": id})
}
