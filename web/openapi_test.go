package web

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"taskstream/progress/progresstest"
)

// openAPISpec is the embedded document, parsed once for every test that
// checks answers against it.
type openAPISpec struct {
	doc      map[string]any
	compiler *jsonschema.Compiler
	routes   []openAPIRoute

	mu      sync.Mutex
	schemas map[string]*jsonschema.Schema // by JSON pointer
}

type openAPIRoute struct {
	path string // as written in the document and the router: /api/jobs/{id}
	re   *regexp.Regexp
}

var (
	specOnce sync.Once
	spec     *openAPISpec
	specErr  error
)

func loadOpenAPI(t testing.TB) *openAPISpec {
	t.Helper()
	specOnce.Do(func() { spec, specErr = parseOpenAPI(openAPIDoc) })
	if specErr != nil {
		t.Fatalf("web/openapi.json: %v", specErr)
	}
	return spec
}

func parseOpenAPI(raw []byte) (*openAPISpec, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	m, ok := doc.(map[string]any)
	if !ok || m["openapi"] != "3.1.0" {
		return nil, fmt.Errorf("not an OpenAPI 3.1.0 document")
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource("openapi.json", doc); err != nil {
		return nil, err
	}
	s := &openAPISpec{doc: m, compiler: c, schemas: map[string]*jsonschema.Schema{}}
	for path := range m["paths"].(map[string]any) {
		pattern := regexp.QuoteMeta(path)
		pattern = regexp.MustCompile(`\\\{[^/]+?\\\}`).ReplaceAllString(pattern, `[^/]+`)
		pattern = strings.ReplaceAll(pattern, `\*`, `.*`)
		s.routes = append(s.routes, openAPIRoute{path: path, re: regexp.MustCompile("^" + pattern + "$")})
	}
	// A literal path wins over a template that also matches it.
	sort.Slice(s.routes, func(i, j int) bool {
		return strings.Count(s.routes[i].path, "{") < strings.Count(s.routes[j].path, "{")
	})
	return s, nil
}

// operation returns the document's path and operation for a request.
func (s *openAPISpec) operation(method, urlPath string) (string, map[string]any) {
	for _, r := range s.routes {
		if !r.re.MatchString(urlPath) {
			continue
		}
		ops := s.doc["paths"].(map[string]any)[r.path].(map[string]any)
		m := strings.ToLower(method)
		if method == http.MethodHead {
			m = "get"
		}
		if op, ok := ops[m].(map[string]any); ok {
			return r.path, op
		}
		return r.path, nil
	}
	return "", nil
}

func (s *openAPISpec) schema(pointer string) (*jsonschema.Schema, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sch, ok := s.schemas[pointer]; ok {
		return sch, nil
	}
	sch, err := s.compiler.Compile("openapi.json#" + pointer)
	if err != nil {
		return nil, err
	}
	s.schemas[pointer] = sch
	return sch, nil
}

func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// check validates one answer: its status must be documented for the
// operation (errors fall to "default", whose body is the Error schema),
// and a JSON body must match the documented schema.
func (s *openAPISpec) check(method, urlPath string, status int, contentType string, body []byte) error {
	path, op := s.operation(method, urlPath)
	switch {
	case path == "" && status == http.StatusNotFound:
		path = "(no route)" // the router's own 404: still the Error body
	case path == "":
		return fmt.Errorf("%s %s answered %d but no path of the document matches it", method, urlPath, status)
	case op == nil && status == http.StatusMethodNotAllowed:
	case op == nil:
		return fmt.Errorf("%s %s: the document has no %s operation on %s", method, urlPath, method, path)
	}
	var pointer string
	if mt, _, _ := mime.ParseMediaType(contentType); status >= 400 && mt == "text/html" && op != nil && s.isPage(op) {
		return nil // a page refuses a browser with a page (docs/protocol.md, Errors)
	}
	if status >= 400 {
		pointer = "/components/schemas/Error"
	} else {
		code := strconv.Itoa(status)
		responses := op["responses"].(map[string]any)
		resp, ok := responses[code].(map[string]any)
		if !ok {
			return fmt.Errorf("%s %s: status %d is not documented under %s", method, urlPath, status, path)
		}
		content, _ := resp["content"].(map[string]any)
		if len(content) == 0 || len(body) == 0 {
			return nil
		}
		mt, _, _ := mime.ParseMediaType(contentType)
		if _, ok := content[mt]; !ok {
			return fmt.Errorf("%s %s: answered %d as %q, documented as one of %v", method, urlPath, status, mt, slices.Sorted(maps.Keys(content)))
		}
		if mt != "application/json" {
			return nil
		}
		pointer = "/paths/" + escapePointer(path) + "/" + strings.ToLower(method) + "/responses/" + code + "/content/application~1json/schema"
	}
	sch, err := s.schema(pointer)
	if err != nil {
		return fmt.Errorf("compile %s: %w", pointer, err)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s %s answered %d with a body that is not JSON: %q", method, urlPath, status, body)
	}
	if err := sch.Validate(v); err != nil {
		return fmt.Errorf("%s %s answered %d with a body the document does not allow: %v\nbody: %s", method, urlPath, status, err, body)
	}
	return nil
}

// isPage reports whether an operation answers HTML: a page.
func (s *openAPISpec) isPage(op map[string]any) bool {
	ok, _ := op["responses"].(map[string]any)["200"].(map[string]any)
	content, _ := ok["content"].(map[string]any)
	_, html := content["text/html"]
	return html
}

// openAPICheck is an http.RoundTripper that validates every answer a
// test gets against the document. The env's browsers use it, so the whole
// suite's answers are checked, not a sample written for this purpose.
type openAPICheck struct {
	t    testing.TB
	spec *openAPISpec
	done *atomic.Bool // set when the test has ended: late answers are not reported
}

func (c openAPICheck) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := http.DefaultTransport.RoundTrip(req)
	if err != nil || res.StatusCode == http.StatusSwitchingProtocols {
		return res, err
	}
	ct := res.Header.Get("Content-Type")
	if strings.HasPrefix(ct, "text/event-stream") {
		// A stream is read by the test as it comes; its status and type
		// are checked here, its events by the tests themselves.
		if err := c.spec.check(req.Method, req.URL.Path, res.StatusCode, ct, nil); err != nil && !c.done.Load() {
			c.t.Errorf("OpenAPI: %v", err)
		}
		return res, nil
	}
	body, readErr := io.ReadAll(res.Body)
	_ = res.Body.Close()
	res.Body = io.NopCloser(bytes.NewReader(body))
	if readErr != nil {
		return res, nil // the test sees the short body and reports it
	}
	if err := c.spec.check(req.Method, req.URL.Path, res.StatusCode, ct, body); err != nil && !c.done.Load() {
		c.t.Errorf("OpenAPI: %v", err)
	}
	return res, nil
}

// TestOpenAPICoversEveryRoute walks the router: every route and method it
// serves must be in the document, written as the router writes it, and the
// document must have no path the router does not serve.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	s := loadOpenAPI(t)
	env := newEnv(t, progresstest.Embedded(t), withoutWorker())
	served := map[string]bool{}
	err := chi.Walk(env.web.router, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		route = strings.TrimSuffix(route, "/")
		if route == "" {
			route = "/"
		}
		route = strings.ReplaceAll(route, "/*/", "/") // chi's mount marker
		served[route] = true
		ops, ok := s.doc["paths"].(map[string]any)[route].(map[string]any)
		if !ok {
			t.Errorf("route %s %s is not in web/openapi.json", method, route)
			return nil
		}
		if _, ok := ops[strings.ToLower(method)]; !ok {
			t.Errorf("route %s %s: web/openapi.json has the path but not the method", method, route)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for path := range s.doc["paths"].(map[string]any) {
		if !served[path] {
			t.Errorf("web/openapi.json documents %s, which the router does not serve", path)
		}
	}
}

// TestOpenAPIIsServed checks the document is served, is OpenAPI 3.1, and
// that each operation has an id, a summary and the error answer.
func TestOpenAPIIsServed(t *testing.T) {
	env := newEnv(t, progresstest.Embedded(t), withoutWorker())
	status, body, header := env.do("GET", "/api/openapi.json", nil)
	if status != http.StatusOK || body["openapi"] != "3.1.0" {
		t.Fatalf("GET /api/openapi.json: %d, openapi %v", status, body["openapi"])
	}
	if ct := header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	ids := map[string]bool{}
	for path, ops := range body["paths"].(map[string]any) {
		for method, op := range ops.(map[string]any) {
			o := op.(map[string]any)
			id, _ := o["operationId"].(string)
			if id == "" || ids[id] {
				t.Errorf("%s %s: operationId %q missing or repeated", method, path, id)
			}
			ids[id] = true
			if o["summary"] == nil {
				t.Errorf("%s %s: no summary", method, path)
			}
			if _, ok := o["responses"].(map[string]any)["default"]; !ok {
				t.Errorf("%s %s: no default (error) answer", method, path)
			}
		}
	}
}

// TestOpenAPICheckCatchesAWrongAnswer shows the validator is not a
// rubber stamp: answers that break the document are reported.
func TestOpenAPICheckCatchesAWrongAnswer(t *testing.T) {
	s := loadOpenAPI(t)
	tests := []struct {
		name, method, path string
		status             int
		body               string
		wantErr            bool
	}{
		{"a documented answer", "GET", "/api/me", 200, `{"id":"u1","name":"n","guest":true}`, false},
		{"a field of the wrong type", "GET", "/api/me", 200, `{"id":"u1","name":"n","guest":"yes"}`, true},
		{"a required field missing", "GET", "/api/jobs", 200, `{}`, true},
		{"an undocumented status", "GET", "/api/me", 201, `{}`, true},
		{"an error without the error body", "GET", "/api/jobs/x", 404, `{"message":"no"}`, true},
		{"an error with the error body", "GET", "/api/jobs/x", 404, `{"error":{"code":"not_found","message":"no such job"}}`, false},
		{"an unknown error code", "GET", "/api/jobs/x", 404, `{"error":{"code":"nope","message":"x"}}`, true},
		{"an undocumented path", "GET", "/api/nothing-here", 200, `{}`, true},
		{"an undocumented method", "PUT", "/api/jobs/x", 200, `{}`, true},
		{"a template path", "POST", "/api/jobs/abc/cancel", 202, `{}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.check(tt.method, tt.path, tt.status, "application/json", []byte(tt.body))
			if (err != nil) != tt.wantErr {
				t.Errorf("check: %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

// TestOpenAPIValidatesTheAnswersOfAWorkload drives every documented
// operation's usual answers through a validating client. The rest of the
// suite's answers are validated too, through the env's browsers.
func TestOpenAPIValidatesTheAnswersOfAWorkload(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		env := newEnv(t, srv)
		id := env.submit("steps", map[string]any{"steps": 2, "interval_ms": 1})
		eventually(t, "the job to finish", func() bool {
			_, body, _ := env.do("GET", "/api/jobs/"+id, nil)
			return body["state"] == "completed"
		})
		for _, req := range []struct{ method, path string }{
			{"GET", "/healthz"}, {"GET", "/readyz"}, {"GET", "/api/me"}, {"GET", "/api/job-types"},
			{"GET", "/api/jobs"}, {"GET", "/api/jobs/" + id}, {"GET", "/api/jobs/" + id + "/events"},
			{"POST", "/api/jobs/" + id + "/cancel"}, {"GET", "/api/jobs/" + id + "/artifact"},
			{"GET", "/api/jobs/nope"}, {"GET", "/api/tokens"}, {"GET", "/api/openapi.json"},
		} {
			env.do(req.method, req.path, nil)
		}
		env.do("POST", "/api/me", map[string]any{"name": "Ada"})
		env.do("POST", "/api/groups/chat:lobby/messages", map[string]any{"text": "hi"})
		env.do("POST", "/api/jobs", map[string]any{"type": "nope"})
	})
}
