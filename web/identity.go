package web

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"taskstream/progress"
	"taskstream/web/auth"
)

// sessionCookie is the name of the browser session cookie.
const sessionCookie = "ts_session"

type principalKey struct{}

// principalOf returns the caller of a request that went through
// authenticate.
func principalOf(r *http.Request) auth.Principal {
	p, _ := r.Context().Value(principalKey{}).(auth.Principal)
	return p
}

// authenticate puts the caller into the request context: the owner of a
// bearer token (an invalid one is 401, never silently a guest), else the
// session cookie's user, else a new guest whose session cookie is set on
// the response, so trying the service needs no sign-up.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.principal(w, r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

func (s *Server) principal(w http.ResponseWriter, r *http.Request) (auth.Principal, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		token, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || token == "" {
			return auth.Principal{}, apiErr(CodeUnauthenticated, "use Authorization: Bearer TOKEN")
		}
		p, err := s.auth.Bearer(r.Context(), strings.TrimSpace(token))
		if errors.Is(err, auth.ErrBadToken) {
			return auth.Principal{}, apiErr(CodeUnauthenticated, "the token is invalid or was revoked")
		}
		return p, err
	}
	if c, err := r.Cookie(sessionCookie); err == nil {
		p, err := s.auth.Session(r.Context(), c.Value)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, auth.ErrNoSession) {
			return auth.Principal{}, err
		}
	}
	p, cookie, err := s.auth.NewGuest(r.Context())
	if err != nil {
		return auth.Principal{}, err
	}
	s.setSessionCookie(w, r, cookie)
	return p, nil
}

func (s *Server) setSessionCookie(w http.ResponseWriter, r *http.Request, value string) {
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: value, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode,
		Secure: r.TLS != nil || s.cfg.SecureCookies, MaxAge: int(s.cfg.SessionTTL.Seconds()),
	})
}

// clientIP is the address per-IP limits count against: the peer, or,
// when the peer is a trusted proxy, the nearest address in
// X-Forwarded-For that is not one (the header's earlier entries are
// whatever the client claimed, so they are never trusted).
func (s *Server) clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if !s.trusted(host) {
		return host
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop := strings.TrimSpace(hops[i])
		if hop == "" {
			continue
		}
		if !s.trusted(hop) {
			return hop
		}
		host = hop
	}
	return host
}

func (s *Server) trusted(ip string) bool {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(addr.Unmap()) {
			return true
		}
	}
	return false
}

// authError maps auth's errors onto protocol codes.
func authError(err error) error {
	var rl *auth.RateLimitedError
	switch {
	case errors.As(err, &rl):
		return &APIError{Code: CodeRateLimited, Message: "too many attempts; try again later", RetryAfter: int(rl.RetryAfter.Seconds()) + 1}
	case errors.Is(err, auth.ErrBadEmail):
		return apiErr(CodeBadRequest, "that is not an email address")
	case errors.Is(err, auth.ErrBadCode):
		return apiErr(CodeBadRequest, "the code is wrong or has expired; request a new one")
	case errors.Is(err, auth.ErrBadName):
		return apiErr(CodeBadRequest, "a name is 1-40 printable characters")
	case errors.Is(err, auth.ErrSignInRequired):
		return apiErr(CodeForbidden, "sign in with your email first")
	case errors.Is(err, auth.ErrNotFound):
		return apiErr(CodeNotFound, "not found")
	}
	return err
}

func (s *Server) handleRequestCode(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Email string `json:"email"`
	}
	if err := s.decodeBody(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.auth.RequestCode(r.Context(), req.Email, s.clientIP(r)); err != nil {
		s.writeError(w, r, authError(err))
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"sent": true})
}

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Email string `json:"email"`
		Code  string `json:"code"`
	}
	if err := s.decodeBody(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	from := principalOf(r)
	p, cookie, err := s.auth.Login(r.Context(), req.Email, req.Code, s.clientIP(r), from)
	if err != nil {
		s.writeError(w, r, authError(err))
		return
	}
	if from.User.Guest {
		if _, err := s.jobs.Transfer(r.Context(), from.User.ID, p.User.ID); err != nil {
			s.logger.Error("moving a guest's jobs to the signed-in user failed", "guest", from.User.ID, "user", p.User.ID, "err", err)
		}
	}
	s.setSessionCookie(w, r, cookie)
	writeJSON(w, http.StatusOK, p.User)
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) {
	p := principalOf(r)
	if p.SessionID == "" {
		s.writeError(w, r, apiErr(CodeBadRequest, "logout ends a browser session; revoke tokens with DELETE /api/tokens/{id}"))
		return
	}
	if err := s.auth.Logout(r.Context(), p.SessionID); err != nil {
		s.writeError(w, r, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleMe(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, principalOf(r).User)
}

func (s *Server) handleSetName(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Name string `json:"name"`
	}
	if err := s.decodeBody(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	// Every rename is announced to all the user's rooms: bounded, so it
	// cannot be used to flood them.
	if err := s.limit(r.Context(), "rename:"+principalOf(r).User.ID, 0.2, 5, "too many renames; wait a moment"); err != nil {
		s.writeError(w, r, err)
		return
	}
	u, err := s.auth.SetName(r.Context(), principalOf(r).User.ID, req.Name)
	if err != nil {
		s.writeError(w, r, authError(err))
		return
	}
	if s.pres != nil {
		if err := s.pres.Rename(r.Context(), progress.Member{ID: u.ID, Name: u.Name}); err != nil {
			s.logger.Warn("renaming in chat presence failed", "user", u.ID, "err", err)
		}
	}
	writeJSON(w, http.StatusOK, u)
}

func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	p := principalOf(r)
	if p.Admin {
		s.writeError(w, r, apiErr(CodeForbidden, "admin tokens come from the configuration"))
		return
	}
	t, err := s.auth.CreateToken(r.Context(), p.User)
	if err != nil {
		s.writeError(w, r, authError(err))
		return
	}
	writeJSON(w, http.StatusCreated, t)
}

func (s *Server) handleListTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := s.auth.Tokens(r.Context(), principalOf(r).User.ID)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": ts})
}

func (s *Server) handleRevokeToken(w http.ResponseWriter, r *http.Request) {
	if err := s.auth.RevokeToken(r.Context(), principalOf(r).User.ID, chi.URLParam(r, "id")); err != nil {
		s.writeError(w, r, authError(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleNotify lets an admin push a notification to a user or a group.
func (s *Server) handleNotify(w http.ResponseWriter, r *http.Request) {
	if !principalOf(r).Admin {
		s.writeError(w, r, apiErr(CodeForbidden, "notify needs an admin token"))
		return
	}
	var req struct {
		User  string `json:"user"`
		Group string `json:"group"`
		progress.Notification
	}
	if err := s.decodeBody(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	group := req.Group
	if req.User != "" {
		group = progress.UserGroup(req.User)
	}
	if (req.User == "") == (req.Group == "") {
		s.writeError(w, r, apiErr(CodeBadRequest, `give exactly one of "user" and "group"`))
		return
	}
	if !progress.ValidGroup(group) {
		s.writeError(w, r, apiErr(CodeBadRequest, "bad group name "+strconv.Quote(group)))
		return
	}
	if req.Title == "" || len(req.Title) > 200 || len(req.Body) > 2000 || len(req.Link) > 2000 {
		s.writeError(w, r, apiErr(CodeBadRequest, "a notification needs a title (at most 200 bytes); body and link at most 2000"))
		return
	}
	ev, err := progress.Notify(r.Context(), s.log, group, req.Notification)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"group": group, "seq": ev.Seq})
}

// revocable is a live client of this replica tied to a credential: a
// socket, or an SSE or long-poll stream.
type revocable interface {
	principal() auth.Principal
	revoke() // end it: the session or token it uses is gone
}

func (c *conn) principal() auth.Principal { return c.who }
func (c *conn) revoke()                   { c.close(closePolicy, "signed out") }

// stream is an SSE or long-poll request in flight.
type stream struct {
	who    auth.Principal
	cancel context.CancelFunc
}

func (st *stream) principal() auth.Principal { return st.who }
func (st *stream) revoke()                   { st.cancel() }

// trackStream registers a streaming request so a revocation can end it;
// the returned context ends with the request or the revocation, and done
// unregisters it.
func (s *Server) trackStream(r *http.Request) (ctx context.Context, done func()) {
	ctx, cancel := context.WithCancel(r.Context())
	st := &stream{who: principalOf(r), cancel: cancel}
	s.mu.Lock()
	s.streams[st] = struct{}{}
	s.mu.Unlock()
	return ctx, func() {
		s.mu.Lock()
		delete(s.streams, st)
		s.mu.Unlock()
		cancel()
	}
}

// revocables returns this replica's live clients.
func (s *Server) revocables() []revocable {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]revocable, 0, len(s.conns)+len(s.streams))
	for c := range s.conns {
		out = append(out, c)
	}
	for st := range s.streams {
		out = append(out, st)
	}
	return out
}

// watchRevocations ends, on this replica, the sockets and streams of every
// session or token that ends anywhere, and rechecks all of their
// credentials every recheck interval in case a revocation message was
// missed.
func (s *Server) watchRevocations(ctx context.Context, recheck time.Duration) {
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.auth.WatchRevocations(ctx, s.closeCredential) }()
	t := time.NewTicker(recheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, c := range s.revocables() {
			if ok, err := s.auth.Valid(ctx, c.principal()); err == nil && !ok {
				c.revoke()
			}
		}
	}
}

func (s *Server) closeCredential(credential string) {
	for _, c := range s.revocables() {
		if c.principal().Credential() == credential {
			c.revoke()
		}
	}
}
