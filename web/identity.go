package web

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"taskstream/progress"
	"taskstream/web/auth"
)

// sessionCookie is the name of the browser session cookie.
const sessionCookie = "ts_session"

type principalKey struct{}

// newGuestKey marks a request whose guest was made for it: it came with
// no valid cookie, so it has nothing to log out of.
type newGuestKey struct{}

// principalOf returns the caller of a request that went through
// authenticate.
func principalOf(r *http.Request) auth.Principal {
	p, _ := r.Context().Value(principalKey{}).(auth.Principal)
	return p
}

// authenticate puts the caller into the request context (the router's
// withClientIP has already put the client IP there): the owner of a bearer token (an invalid one is 401, never
// silently a guest), else the session or guest cookie's user, else a new
// guest whose cookie is set on the response, so trying the service needs
// no sign-up. A new guest writes nothing to Redis: it lives in its signed
// cookie until it acts (see materialize).
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, fresh, err := s.principal(w, r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		ctx := context.WithValue(r.Context(), principalKey{}, p)
		if fresh {
			ctx = context.WithValue(ctx, newGuestKey{}, true)
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// principal finds the caller; fresh reports a guest made for this request
// (it came with no valid cookie).
func (s *Server) principal(w http.ResponseWriter, r *http.Request) (p auth.Principal, fresh bool, err error) {
	if h := r.Header.Get("Authorization"); h != "" {
		token, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || token == "" {
			return auth.Principal{}, false, apiErr(CodeUnauthenticated, "use Authorization: Bearer TOKEN")
		}
		p, err := s.auth.Bearer(r.Context(), strings.TrimSpace(token))
		if errors.Is(err, auth.ErrBadToken) {
			return auth.Principal{}, false, apiErr(CodeUnauthenticated, "the token is invalid or was revoked")
		}
		return p, false, err
	}
	if c, err := r.Cookie(sessionCookie); err == nil {
		p, renew, err := s.auth.Session(r.Context(), c.Value)
		if err == nil {
			if renew != "" {
				s.setSessionCookie(w, r, renew)
			}
			return p, false, nil
		}
		if !errors.Is(err, auth.ErrNoSession) {
			return auth.Principal{}, false, err
		}
	}
	p, cookie := s.auth.NewGuest()
	s.setSessionCookie(w, r, cookie)
	return p, true, nil
}

// materialize stores the caller's guest before an action that needs state
// (a job, a chat message, a room join, a name); everyone else passes
// through untouched. Storing a new guest counts against the client IP's
// new-guest limit (429 rate_limited). ctx is a request's context, or a
// socket's, which is its upgrade request's.
func (s *Server) materialize(ctx context.Context, who auth.Principal) (auth.Principal, error) {
	p, err := s.auth.Materialize(ctx, who, clientIPOf(ctx))
	if err != nil {
		return who, authError(err)
	}
	return p, nil
}

// act prepares an action of who that needs state and is limited per
// user under key (perSecond, burst; refused with msg as limit does): it
// stores a guest (as materialize), takes one request from the limit and
// reads the user's current name, in one Redis round trip where the Redis
// allows (auth.Store.Act). It returns who as stored even when the limit
// refused, and the user as chat shows them.
func (s *Server) act(ctx context.Context, who auth.Principal, key string, perSecond float64, burst int, msg string) (auth.Principal, progress.Member, error) {
	a, err := s.auth.Act(ctx, who, clientIPOf(ctx), auth.Limit{Key: key, PerSecond: perSecond, Burst: burst})
	if err != nil {
		return a.Who, progress.Member{}, authError(err)
	}
	if a.Wait > 0 {
		return a.Who, progress.Member{}, rateLimited(a.Wait, msg)
	}
	return a.Who, progress.Member{ID: a.Who.User.ID, Name: a.Name}, nil
}

func (s *Server) setSessionCookie(w http.ResponseWriter, r *http.Request, value string) {
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: value, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode,
		Secure: r.TLS != nil || s.cfg.SecureCookies, MaxAge: int(s.cfg.SessionTTL.Seconds()),
	})
}

type clientIPKey struct{}

// withClientIP puts the address that per-IP limits count against into the
// request context (read it with clientIPOf). chi's middleware decides:
// without TrustedProxies the peer address; with them, the nearest
// X-Forwarded-For entry that is not a trusted proxy, the peer itself when
// it is not one (the header's earlier entries are whatever the client
// claimed, so they are never believed). Where chi finds none (a trusted
// peer with no usable header: all hops trusted, or garbage in the chain,
// which chi refuses to walk past) the peer counts, so such requests share
// the proxy's budget rather than escape every limit.
func (s *Server) withClientIP(next http.Handler) http.Handler {
	mw := middleware.ClientIPFromRemoteAddr
	if len(s.cfg.TrustedProxies) > 0 {
		prefixes := make([]string, len(s.cfg.TrustedProxies))
		for i, p := range s.cfg.TrustedProxies {
			prefixes[i] = p.String()
		}
		mw = middleware.ClientIPFromXFF(prefixes...)
	}
	return mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip := middleware.GetClientIP(r.Context())
		if ip == "" {
			ip = r.RemoteAddr
			if host, _, err := net.SplitHostPort(ip); err == nil {
				ip = host
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), clientIPKey{}, ip)))
	}))
}

// clientIPOf returns the client IP that withClientIP put into ctx.
func clientIPOf(ctx context.Context) string {
	ip, _ := ctx.Value(clientIPKey{}).(string)
	return ip
}

// authError maps auth's errors onto protocol codes, with messages that
// say what happened and what to do.
func authError(err error) error {
	var rl *auth.RateLimitedError
	var ce *auth.CodeError
	switch {
	case errors.As(err, &rl):
		secs := int(math.Ceil(rl.RetryAfter.Seconds()))
		return &APIError{Code: CodeRateLimited, Message: fmt.Sprintf("too many %s; try again in %d s", rl.What, secs), RetryAfter: secs}
	case errors.As(err, &ce):
		return apiErr(CodeBadRequest, codeMessage(ce))
	case errors.Is(err, auth.ErrBadEmail):
		return apiErr(CodeBadRequest, "that is not an email address")
	case errors.Is(err, auth.ErrBadName):
		return apiErr(CodeBadRequest, "a name is 1-40 printable characters")
	case errors.Is(err, auth.ErrSignInRequired):
		return apiErr(CodeForbidden, "sign in with your email first")
	case errors.Is(err, auth.ErrNoSession):
		return apiErr(CodeUnauthenticated, "your session has ended; reload to continue as a new guest")
	case errors.Is(err, auth.ErrNotFound):
		return apiErr(CodeNotFound, "not found")
	case errors.Is(err, auth.ErrBadScope):
		return apiErr(CodeBadRequest, err.Error())
	case errors.Is(err, auth.ErrBadTokenName):
		return apiErr(CodeBadRequest, "a token name is at most 64 printable characters")
	case errors.Is(err, auth.ErrAdminScope):
		return apiErr(CodeForbidden, "only an admin may give publish or admin scopes")
	case errors.Is(err, auth.ErrScopesRequired):
		return apiErr(CodeBadRequest, `an admin's token needs scopes ("admin:*" for every right)`)
	}
	return err
}

// codeMessage tells a person why their sign-in code was refused.
func codeMessage(e *auth.CodeError) string {
	switch e.Reason {
	case auth.CodeWrong:
		switch e.TriesLeft {
		case 0:
			return "wrong code, and that was the last try: this code no longer works; request a new one"
		case 1:
			return "wrong code: 1 try left"
		}
		return fmt.Sprintf("wrong code: %d tries left", e.TriesLeft)
	case auth.CodeTooManyTries:
		return "too many wrong tries: this code no longer works; request a new one"
	case auth.CodeExpired:
		return "the code has expired; request a new one"
	case auth.CodeUsed:
		return "the code was already used; request a new one"
	}
	return "no code was requested for this email, or it expired long ago; request one"
}

func (s *Server) handleRequestCode(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Email string `json:"email"`
	}
	if err := s.decodeBody(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.auth.RequestCode(r.Context(), req.Email, clientIPOf(r.Context())); err != nil {
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
	p, cookie, err := s.auth.Login(r.Context(), req.Email, req.Code, clientIPOf(r.Context()), from)
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
	if p.TokenID != "" {
		s.writeError(w, r, apiErr(CodeBadRequest, "logout ends a browser session; revoke tokens with DELETE /api/tokens/{id}"))
		return
	}
	// A guest made for this very request (no valid cookie came) has
	// nothing to end: nobody holds its cookie, and revoking it would be a
	// write per cookieless request.
	if fresh, _ := r.Context().Value(newGuestKey{}).(bool); !fresh {
		if err := s.auth.Logout(r.Context(), p, clientIPOf(r.Context())); err != nil {
			s.writeError(w, r, authError(err))
			return
		}
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteLaxMode,
		Secure: r.TLS != nil || s.cfg.SecureCookies})
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
	who, err := s.materialize(r.Context(), principalOf(r))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// Every rename is announced to all the user's rooms: bounded, so it
	// cannot be used to flood them.
	if err := s.limit(r.Context(), "rename:"+who.User.ID, 0.2, 5, "too many renames; wait a moment"); err != nil {
		s.writeError(w, r, err)
		return
	}
	u, err := s.auth.SetName(r.Context(), who.User.ID, req.Name)
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

// handleCreateToken mints a bearer token for a signed-in user or an
// admin, with an optional name and scopes ({"name", "scopes"}; no body
// at all is a token without either, as before scopes existed).
func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	var req auth.TokenRequest
	if r.ContentLength != 0 {
		body, err := s.readBody(w, r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if len(bytes.TrimSpace(body)) > 0 {
			if aerr := decodeStrict(body, &req); aerr != nil {
				s.writeError(w, r, aerr)
				return
			}
		}
	}
	t, err := s.auth.CreateToken(r.Context(), principalOf(r), req)
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
	// end ends it, telling why: the session or token it uses is gone
	// (errEnded), or an admin disconnected its user (errDisconnected).
	end(why *APIError)
}

// Why a socket or stream was ended: a socket gets the message as its 1008
// close reason, a long-poll request or an SSE stream not yet started the
// error itself.
var (
	errEnded        = apiErr(CodeUnauthenticated, "signed out: the session or token ended")
	errDisconnected = apiErr(CodeForbidden, "disconnected by an administrator")
)

func (c *conn) principal() auth.Principal { return c.who }
func (c *conn) end(why *APIError)         { c.close(closePolicy, why.Message) }

// stream is an SSE or long-poll request in flight.
type stream struct {
	who       auth.Principal
	cancel    context.CancelCauseFunc
	transport string // transportSSE or transportLongPoll, for metrics
}

func (st *stream) principal() auth.Principal { return st.who }
func (st *stream) end(why *APIError)         { st.cancel(why) }

// endedBy is why a tracked stream's context ended when the request itself
// did not: the *APIError its end was given (errEnded by default).
func endedBy(ctx context.Context) *APIError {
	var ae *APIError
	if errors.As(context.Cause(ctx), &ae) {
		return ae
	}
	return errEnded
}

// trackStream registers a streaming request so a revocation can end it;
// the returned context ends with the request or the revocation, and done
// unregisters it.
func (s *Server) trackStream(r *http.Request, transport string) (ctx context.Context, done func()) {
	ctx, cancel := context.WithCancelCause(r.Context())
	st := &stream{who: principalOf(r), cancel: cancel, transport: transport}
	s.mu.Lock()
	s.streams[st] = struct{}{}
	s.mu.Unlock()
	return ctx, func() {
		s.mu.Lock()
		delete(s.streams, st)
		s.mu.Unlock()
		cancel(nil)
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
				c.end(errEnded)
			}
		}
	}
}

// closeCredential ends this replica's sockets and streams that use
// credential, or, for "u:USER" (an admin's disconnect), all of that
// user's.
func (s *Server) closeCredential(credential string) {
	user, disconnect := strings.CutPrefix(credential, "u:")
	for _, c := range s.revocables() {
		switch {
		case disconnect && c.principal().User.ID == user:
			c.end(errDisconnected)
		case !disconnect && c.principal().Credential() == credential:
			c.end(errEnded)
		}
	}
}
