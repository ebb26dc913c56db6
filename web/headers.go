package web

import (
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
)

// contentSecurityPolicy locks the pages to their own files: scripts and
// styles only from /static (no inline code, no eval), requests only to this
// origin ('self' covers ws:// and wss:// to the same host in CSP Level 3,
// which the browser tests check), no framing (clickjacking), no plugins,
// no <base> or form redirection. img-src allows data: for the empty
// favicon the pages declare.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// setSecurityHeaders adds the headers every response carries: the page
// policy, no MIME sniffing (a JSON answer or an upload is never run as a
// script), no framing for browsers older than frame-ancestors, and no
// Referer to other origins (URLs may name jobs and rooms).
func setSecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
}

// originPolicy decides which browser origins may send state-changing
// requests and open sockets: the server's own (scheme, host and port all
// equal) and Config.AllowedOrigins.
type originPolicy struct {
	any     bool                // AllowedOrigins has "*"
	allowed map[string]struct{} // normalized "scheme://host:port"
	// csrf is the standard library's check of Sec-Fetch-Site (and of
	// Origin against Host for browsers too old to send it). Allowed
	// origins are let through before it, compared normalized, so it needs
	// no trusted origins of its own.
	csrf *http.CrossOriginProtection
}

func newOriginPolicy(allowed []string) (*originPolicy, []string) {
	p := &originPolicy{allowed: map[string]struct{}{}, csrf: http.NewCrossOriginProtection()}
	var bad []string
	for _, a := range allowed {
		if a == "*" {
			p.any = true
			continue
		}
		norm, ok := normalizeOrigin(a)
		if !ok {
			bad = append(bad, a)
			continue
		}
		p.allowed[norm] = struct{}{}
	}
	return p, bad
}

// ValidOrigin reports whether s is an origin AllowedOrigins accepts:
// "*", or scheme://host[:port] with an http or https scheme and nothing
// else.
func ValidOrigin(s string) bool {
	if s == "*" {
		return true
	}
	_, ok := normalizeOrigin(s)
	return ok
}

// normalizeOrigin returns origin as "scheme://host:port", lower-cased
// with the scheme's default port made explicit, so "https://A.example"
// and "https://a.example:443" compare equal.
func normalizeOrigin(origin string) (string, bool) {
	u, err := url.Parse(strings.TrimSuffix(origin, "/"))
	if err != nil || u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return "", false
	}
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	switch {
	case scheme == "http" && port == "":
		port = "80"
	case scheme == "https" && port == "":
		port = "443"
	case scheme != "http" && scheme != "https":
		return "", false
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port), true
}

// ownOrigin is the origin a browser sees for r: its scheme comes from the
// connection (TLS or not), or from X-Forwarded-Proto when the peer is a
// trusted proxy (which terminates TLS); its host and port from Host.
func (s *Server) ownOrigin(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	} else if proto := r.Header.Get("X-Forwarded-Proto"); proto != "" && s.isTrustedProxy(peerAddr(stringAddr(r.RemoteAddr))) {
		first, _, _ := strings.Cut(proto, ",")
		if p := strings.ToLower(strings.TrimSpace(first)); p == "https" || p == "http" {
			scheme = p
		}
	}
	norm, _ := normalizeOrigin(scheme + "://" + r.Host)
	return norm
}

// checkOrigin is the one Origin policy of writes and sockets. An Origin
// must be an allowed one, or the server's own: scheme, host and port all
// equal. Then http.CrossOriginProtection refuses what a browser marks
// Sec-Fetch-Site cross-site or same-site (a request with no Origin
// included); requests with neither header come from programs, which
// carry no ambient cookies to abuse.
func (s *Server) checkOrigin(r *http.Request) *APIError {
	if s.origins.any {
		return nil
	}
	origin := r.Header.Get("Origin")
	if origin != "" {
		norm, ok := normalizeOrigin(origin)
		if _, allowed := s.origins.allowed[norm]; ok && allowed {
			return nil
		}
		if !ok || norm != s.ownOrigin(r) {
			return apiErr(CodeForbidden, "cross-origin request refused: Origin "+origin+" is not allowed")
		}
	}
	check := r
	if r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == http.MethodOptions {
		// Opening a socket is a GET, but it acts with the caller's
		// cookies: check it as the state-changing request it is.
		check = r.WithContext(r.Context())
		check.Method = http.MethodPost
	}
	if err := s.origins.csrf.Check(check); err != nil {
		return apiErr(CodeForbidden, "cross-origin request refused: "+err.Error())
	}
	return nil
}

// sameOriginWrites applies checkOrigin to state-changing requests (CSRF).
func (s *Server) sameOriginWrites(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
		default:
			if ae := s.checkOrigin(r); ae != nil {
				s.writeError(w, r, ae)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// stringAddr makes r.RemoteAddr usable with peerAddr.
type stringAddr string

func (a stringAddr) Network() string { return "tcp" }
func (a stringAddr) String() string  { return string(a) }

// recoverer turns a handler's panic into the protocol's 500 internal
// (chi's Recoverer answers an empty body), logged with its stack.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v) // net/http's way to abort a response: let it do so
			}
			s.logger.Error("handler panicked", "method", r.Method, "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
			s.writeError(w, r, apiErr(CodeInternal, "internal error"))
		}()
		next.ServeHTTP(w, r)
	})
}
