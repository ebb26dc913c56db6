package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/wire"
)

// Config configures a Client. Only BaseURL is required; every other field
// has a documented default.
type Config struct {
	// BaseURL is the server, "http://host:port" or "https://host:port",
	// optionally with a path prefix. Required.
	BaseURL string
	// Token is a bearer token sent on every request and socket
	// handshake (Authorization: Bearer TOKEN). Default none: the client
	// is whoever its cookies say, a guest until Login.
	Token string
	// HTTPClient sends the requests and the SSE streams. Default: a
	// client of its own with a fresh cookie jar (so a guest or signed-in
	// session lasts across calls) and no overall timeout (streams are
	// long; every call takes a context).
	HTTPClient *http.Client
	// Dialer opens sockets. Default: HandshakeTimeout 10 s and the
	// HTTPClient's cookie jar. A Dialer without a Jar gets HTTPClient's.
	Dialer *websocket.Dialer
	// Header is added to every request and socket handshake (say a
	// User-Agent). Default none.
	Header http.Header
	// Watch are the defaults of every Watch and WatchMany of this client.
	Watch WatchConfig
	// V1 makes sockets speak the protocol's first version only: one full
	// frame per message. Default false: sockets offer the taskstream.v2
	// subprotocol (wire.SubprotocolV2: batched messages, lean event
	// frames), which Conn.ReadFrame and Watch decode into the same
	// frames; servers without it answer in v1.
	V1 bool
}

// Client calls a taskstream server's HTTP API and watches its groups.
// It is safe for concurrent use.
type Client struct {
	base   *url.URL
	token  string
	http   *http.Client
	dialer websocket.Dialer
	header http.Header
	watch  WatchConfig

	sessionMu sync.Mutex // held while a cookie client gets its first session
}

// New returns a Client for cfg.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("client: BaseURL %q: want http://host:port or https://host:port", cfg.BaseURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	c := &Client{base: u, token: cfg.Token, http: cfg.HTTPClient, header: cfg.Header.Clone(), watch: cfg.Watch.withDefaults()}
	if c.http == nil {
		jar, _ := cookiejar.New(nil) // never fails without options
		c.http = &http.Client{Jar: jar}
	}
	if cfg.Dialer != nil {
		c.dialer = *cfg.Dialer
	} else {
		c.dialer = websocket.Dialer{HandshakeTimeout: 10 * time.Second, Proxy: http.ProxyFromEnvironment}
	}
	if c.dialer.Jar == nil {
		c.dialer.Jar = c.http.Jar
	}
	if !cfg.V1 && c.dialer.Subprotocols == nil {
		c.dialer.Subprotocols = []string{wire.SubprotocolV2}
	}
	return c, nil
}

// HTTPClient returns the client the requests go through (its cookie jar
// holds the session).
func (c *Client) HTTPClient() *http.Client { return c.http }

// Error is a failure the server answered: an HTTP status with the
// protocol's error body, or a socket error frame (Status 0). Code is one
// of the wire.Code* constants; it is empty when the answer was not the
// protocol's (say a proxy's 502 page), and Message then holds the start
// of that body. Use errors.As to get it from any error of this package.
type Error struct {
	Status     int           // HTTP status; 0 for a socket error frame
	Code       string        // wire.Code*, e.g. wire.CodeForbidden
	Message    string        // for a person
	Group      string        // the group a socket error frame was about, if any
	Field      string        // the request field a bad_request is about ("queue", "params.steps"), if the server said
	Job        string        // the existing job a conflict or idempotency_key_reused is about, if any
	RetryAfter time.Duration // from Retry-After (rate_limited, unavailable), or 0
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("taskstream: ")
	if e.Status != 0 {
		b.WriteString(strconv.Itoa(e.Status) + " ")
	}
	if e.Code != "" {
		b.WriteString(e.Code + ": ")
	}
	if e.Group != "" {
		b.WriteString(e.Group + ": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Message)
	return b.String()
}

// IsCode reports whether err is (or wraps) an *Error with code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// errorOf reads a non-2xx answer into an *Error.
func errorOf(res *http.Response) *Error {
	raw, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	e := &Error{Status: res.StatusCode}
	var body wire.ErrorBody
	if json.Unmarshal(raw, &body) == nil && body.Error.Code != "" {
		e.Code, e.Message, e.Field, e.Job = body.Error.Code, body.Error.Message, body.Error.Field, body.Error.Job
	} else {
		msg := strings.TrimSpace(string(raw))
		if len(msg) > 200 {
			msg = msg[:200]
		}
		if msg == "" {
			msg = http.StatusText(res.StatusCode)
		}
		e.Message = msg
	}
	if secs, err := strconv.Atoi(res.Header.Get("Retry-After")); err == nil && secs > 0 {
		e.RetryAfter = time.Duration(secs) * time.Second
	}
	return e
}

// url returns the absolute URL of path (already escaped) with query q.
func (c *Client) url(path string, q url.Values) string {
	u := *c.base
	u.RawPath = c.base.EscapedPath() + path
	u.Path, _ = url.PathUnescape(u.RawPath)
	u.RawQuery = q.Encode()
	return u.String()
}

// wsURL is url with the socket scheme.
func (c *Client) wsURL(path string, q url.Values) string {
	s := c.url(path, q)
	if strings.HasPrefix(s, "https:") {
		return "wss:" + strings.TrimPrefix(s, "https:")
	}
	return "ws:" + strings.TrimPrefix(s, "http:")
}

// headers returns the headers every request and handshake carries.
func (c *Client) headers() http.Header {
	h := c.header.Clone()
	if h == nil {
		h = http.Header{}
	}
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	return h
}

// ensureSession makes sure a cookie client has its session before a
// request or socket uses it: without a cookie, two first requests at once
// (a submit and a watch's socket) would each be made a guest of their
// own, and the socket would not be allowed to watch the jobs.
func (c *Client) ensureSession(ctx context.Context) error {
	if c.token != "" || c.http.Jar == nil || len(c.http.Jar.Cookies(c.base)) > 0 {
		return nil
	}
	c.sessionMu.Lock()
	defer c.sessionMu.Unlock()
	if len(c.http.Jar.Cookies(c.base)) > 0 {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/api/me", nil), nil)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	req.Header = c.headers()
	res, err := c.send(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, res.Body)
	return res.Body.Close()
}

// request builds a request with the client's headers and, for a non-nil
// body, a JSON body.
func (c *Client) request(ctx context.Context, method, path string, q url.Values, body any) (*http.Request, error) {
	if err := c.ensureSession(ctx); err != nil {
		return nil, err
	}
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("client: encode the %s %s body: %w", method, path, err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), rd)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	req.Header = c.headers()
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	return req, nil
}

// send sends req and returns the response when its status is 2xx, else
// the *Error it carries.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	res, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("client: %s %s: %w", req.Method, req.URL.Path, err)
	}
	if res.StatusCode < 200 || res.StatusCode > 299 {
		defer res.Body.Close()
		return nil, errorOf(res)
	}
	return res, nil
}

// do sends a JSON request and decodes a 2xx answer into out (nil:
// discard it). It returns the answer's status.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any, header ...string) (int, error) {
	req, err := c.request(ctx, method, path, q, body)
	if err != nil {
		return 0, err
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := c.send(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, res.Body)
		return res.StatusCode, nil
	}
	if err := json.NewDecoder(res.Body).Decode(out); err != nil {
		return res.StatusCode, fmt.Errorf("client: %s %s: decode the answer: %w", method, path, err)
	}
	return res.StatusCode, nil
}

// groupPath is the path of a group's resource: /api/groups/{group}/rest.
func groupPath(group, rest string) string {
	return "/api/groups/" + url.PathEscape(group) + rest
}
