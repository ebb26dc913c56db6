package web

import (
	"bufio"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"taskstream/progress/progresstest"
)

// Pages, static files, API answers and errors all carry the security
// headers.
func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker())
	for _, path := range []string{"/", "/chat/x", "/static/app.js", "/static/app.css", "/api/me", "/static/nope", "/nope"} {
		t.Run(path, func(t *testing.T) {
			res, err := e.client.Get(e.http.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			csp := res.Header.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'self'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "object-src 'none'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("CSP %q lacks %q", csp, want)
				}
			}
			if strings.Contains(csp, "unsafe-") {
				t.Errorf("CSP %q allows unsafe code", csp)
			}
			for h, want := range map[string]string{"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"} {
				if got := res.Header.Get(h); got != want {
					t.Errorf("%s: %q, want %q", h, got, want)
				}
			}
		})
	}
}

// The pages hold no inline script, style or event handler, which the CSP
// would block: all of it lives in /static files.
func TestPagesHaveNoInlineCode(t *testing.T) {
	inline := map[string]*regexp.Regexp{
		"inline script":   regexp.MustCompile(`(?is)<script(\s[^>]*)?>\s*[^<\s]`),
		"style element":   regexp.MustCompile(`(?i)<style\b`),
		"style attribute": regexp.MustCompile(`(?i)\sstyle\s*=`),
		"event handler":   regexp.MustCompile(`(?i)\son[a-z]+\s*=`),
		"javascript: URL": regexp.MustCompile(`(?i)javascript:`),
	}
	pages, err := fs.Glob(assets, "static/*.html")
	if err != nil || len(pages) == 0 {
		t.Fatalf("no pages: %v", err)
	}
	for _, page := range pages {
		raw, err := fs.ReadFile(assets, page)
		if err != nil {
			t.Fatal(err)
		}
		for _, tag := range regexp.MustCompile(`(?i)<script\b[^>]*>`).FindAll(raw, -1) {
			if !strings.Contains(string(tag), "src=") {
				t.Errorf("%s has a script without src: %q", page, tag)
			}
		}
		for what, re := range inline {
			if m := re.Find(raw); m != nil {
				t.Errorf("%s has an %s: %q", page, what, m)
			}
		}
	}
}

// The Origin of a state-changing request or a socket must equal the
// server's own scheme, host and port, or be an allowed origin.
func TestOriginComparesSchemeHostAndPort(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker(), withWebConfig(Config{
		AllowedOrigins: []string{"https://app.example"},
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")},
	}))
	own := e.http.URL // http://127.0.0.1:PORT
	port := strings.TrimPrefix(own, "http://127.0.0.1:")
	cases := []struct {
		name   string
		header []string
		ok     bool
	}{
		{"own origin", []string{"Origin", own}, true},
		{"own origin with default-less spelling", []string{"Origin", strings.ToUpper("http://127.0.0.1:") + port}, true},
		{"wrong scheme", []string{"Origin", "https://127.0.0.1:" + port}, false},
		{"wrong port", []string{"Origin", "http://127.0.0.1:1"}, false},
		{"no port means 80", []string{"Origin", "http://127.0.0.1"}, false},
		{"other host", []string{"Origin", "http://localhost:" + port}, false},
		{"wrong scheme claiming same-origin", []string{"Origin", "https://127.0.0.1:" + port, "Sec-Fetch-Site", "same-origin"}, false},
		{"allowed origin", []string{"Origin", "https://app.example"}, true},
		{"allowed origin, explicit port", []string{"Origin", "https://app.example:443"}, true},
		{"allowed origin, cross-site fetch", []string{"Origin", "https://app.example", "Sec-Fetch-Site", "cross-site"}, true},
		{"allowed host, wrong scheme", []string{"Origin", "http://app.example"}, false},
		{"cross-site fetch, no Origin", []string{"Sec-Fetch-Site", "cross-site"}, false},
		{"same-site fetch from a sibling", []string{"Origin", "http://other.127.0.0.1:" + port, "Sec-Fetch-Site", "same-site"}, false},
		{"X-Forwarded-Proto from an untrusted peer", []string{"Origin", "https://127.0.0.1:" + port, "X-Forwarded-Proto", "https"}, false},
		{"no Origin (a program)", nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// An unknown job type: a request let through gets 400, so
			// nothing is created and no rate limit is spent.
			status, body, _ := e.do("POST", "/api/jobs", map[string]string{"type": "nope"}, tc.header...)
			if tc.ok != (status == http.StatusBadRequest) {
				t.Fatalf("POST: %d %v, want allowed=%v", status, body, tc.ok)
			}
			if !tc.ok && (status != http.StatusForbidden || body["error"].(map[string]any)["code"] != CodeForbidden) {
				t.Fatalf("POST refused with %d %v, want 403 forbidden", status, body)
			}
			h := http.Header{}
			for i := 0; i+1 < len(tc.header); i += 2 {
				h.Set(tc.header[i], tc.header[i+1])
			}
			ws, res, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(own, "http")+"/ws", h)
			if tc.ok {
				if err != nil {
					t.Fatalf("socket: %v", err)
				}
				ws.Close()
				return
			}
			if err == nil {
				ws.Close()
				t.Fatal("socket opened")
			}
			if res == nil || res.StatusCode != http.StatusForbidden {
				t.Fatalf("socket refused with %v, want HTTP 403", res)
			}
		})
	}

	// Behind a trusted TLS-terminating proxy the origin is https.
	c := e.dialFrom(9)
	host := e.http.Listener.Addr().String()
	res := roundTrip(t, c, bufio.NewReader(c), "POST /api/me HTTP/1.1\r\nHost: "+host+"\r\nOrigin: https://"+host+
		"\r\nX-Forwarded-Proto: https\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"name\":\"Ada\"}")
	if res.status != http.StatusOK {
		t.Fatalf("https Origin through a trusted proxy: %d %s", res.status, res.body)
	}
}

// Errors net/http or the file server would answer in plain text are the
// protocol's JSON error body too.
func TestServerErrorsAreJSON(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker(), withWebConfig(Config{Limits: Limits{MaxHeaderBytes: 1024}}))
	host := e.http.Listener.Addr().String()
	cases := []struct {
		name    string
		request string
		status  int
		code    string
	}{
		{"garbage request line", "GARBAGE\r\n\r\n", 400, CodeBadRequest},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 400, CodeBadRequest},
		{"bad header line", "GET / HTTP/1.1\r\nHost: " + host + "\r\nno colon here\r\n\r\n", 400, CodeBadRequest},
		{"headers over the limit", "GET / HTTP/1.1\r\nHost: " + host + "\r\nX-Big: " + strings.Repeat("a", 8<<10) + "\r\n\r\n", 431, CodeTooLarge},
		{"unknown transfer coding", "POST /api/me HTTP/1.1\r\nHost: " + host + "\r\nTransfer-Encoding: rot13\r\n\r\n", 501, CodeBadRequest},
		{"missing static file", "GET /static/nope HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 404, CodeNotFound},
		{"static directory", "GET /static/ HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 404, CodeNotFound},
		{"static escape", "GET /static/../server.go HTTP/1.1\r\nHost: " + host + "\r\n\r\n", 404, CodeNotFound},
		{"POST to a static file", "POST /static/app.js HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 0\r\n\r\n", 405, CodeMethodNotAllowed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.dialFrom(1)
			res := roundTrip(t, c, bufio.NewReader(c), tc.request)
			if res.status != tc.status || res.err.Error.Code != tc.code || res.err.Error.Message == "" {
				t.Fatalf("%d %s, want %d %s", res.status, res.body, tc.status, tc.code)
			}
			if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Fatalf("Content-Type %q", ct)
			}
		})
	}
	// A static file with a Range it cannot satisfy is served whole, not a
	// plain-text 416.
	status, _, _ := e.do("GET", "/static/app.js", nil, "Range", "bytes=99999999-")
	if status != http.StatusOK {
		t.Fatalf("unsatisfiable Range: %d", status)
	}
}

// rewriteServerError only rewrites net/http's own error answers, never a
// handler's response.
func TestRewriteServerErrorLeavesResponsesAlone(t *testing.T) {
	for _, p := range []string{
		"HTTP/1.1 400 Bad Request\r\nDate: Sat, 05 Dec 2026 10:00:00 GMT\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request",
		"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nok",
		"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nline\r\nmore",
		"\x81\x05hello",
		"",
	} {
		if out, ok := rewriteServerError([]byte(p)); ok {
			t.Errorf("rewrote %q into %q", p, out)
		}
	}
}

func FuzzNormalizeOrigin(f *testing.F) {
	for _, s := range []string{"http://a.example", "HTTPS://A.example:443/", "null", "http://[::1]:80", "ws://x", "http://u@h", "http://h/p", "http://h:99999", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		norm, ok := normalizeOrigin(s)
		if !ok {
			return
		}
		again, ok := normalizeOrigin(norm)
		if !ok || again != norm {
			t.Fatalf("normalizeOrigin(%q) = %q, which normalizes to %q, %v", s, norm, again, ok)
		}
		if !strings.HasPrefix(norm, "http://") && !strings.HasPrefix(norm, "https://") {
			t.Fatalf("normalizeOrigin(%q) = %q: not http(s)", s, norm)
		}
	})
}

// A handler's panic is the JSON 500, not an empty body.
func TestPanicIsJSONInternal(t *testing.T) {
	s := &Server{logger: quietLogger(t)}
	h := s.recoverer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/api/me", nil))
	var body errorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != 500 || body.Error.Code != CodeInternal {
		t.Fatalf("%d %q (%v)", rec.Code, rec.Body.String(), err)
	}
}

// Load balancers and uptime checks probe with HEAD: it answers like GET,
// with no body, on pages, probes and the API alike.
func TestHeadAnswersLikeGet(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker())
	for _, path := range []string{"/", "/healthz", "/api/job-types", "/static/app.js"} {
		res, err := e.client.Head(e.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || len(body) != 0 {
			t.Errorf("HEAD %s: %d with %d body bytes, want 200 and none", path, res.StatusCode, len(body))
		}
	}
}
