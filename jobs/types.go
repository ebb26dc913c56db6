package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// Reporter is how a handler reports progress. *progress.Reporter implements
// it: reports are throttled, carry rate and ETA, and never fail the job.
type Reporter interface {
	// Progress reports done of total units finished (total <= 0: unknown),
	// in a named stage, with an optional human message.
	Progress(done, total int64, stage, message string)
	// Log publishes a short message to the job's watchers; level is
	// "debug", "info", "warn" or "error". Rate-limited.
	Log(level, message string)
}

// Env is what the worker hands every handler besides its params.
type Env struct {
	JobID       string
	Attempt     int    // 1 for the first run, 2 for the first retry, …
	ArtifactDir string // where handlers may write files served by GET /api/jobs/{id}/artifact
}

// ArtifactPath is the file a job's artifact is stored in.
func (e Env) ArtifactPath() string { return artifactPath(e.ArtifactDir, e.JobID) }

// Spec describes a job type whose params decode into P.
type Spec[P any] struct {
	// Name is the type's id in the API ("steps"): lower case, unique.
	Name string
	// Description is one sentence shown in /api/job-types and the page.
	Description string
	// Schema is the JSON Schema of the params object (draft 2020-12 unless
	// its "$schema" says otherwise) and the one place their shape, limits
	// and defaults are written. Define compiles it; Decode validates params
	// against it (errors name the field) and fills the "default" of every
	// absent top-level property. /api/job-types serves it as written and the
	// page builds its form from it. P must be able to hold every value the
	// schema accepts.
	Schema string
	// Validate, optional, checks what a schema can not say, such as a rule
	// between two fields (fail_at <= steps). It sees params that already
	// passed the schema, with defaults filled. Return an error made with
	// Invalid to name the bad field; any error becomes a bad_request for the
	// submitter.
	Validate func(p *P) error
	// Run does the work. It returns the result (any JSON value) or an
	// error; it must return promptly when ctx is canceled.
	Run func(ctx context.Context, p P, env Env, r Reporter) (any, error)
	// MaxRetry is how many times a failed run is retried. Default 3; use
	// NoRetry for none.
	MaxRetry int
	// Timeout bounds one run. Default 1h.
	Timeout time.Duration
	// Queue is the queue the type's jobs go to unless the submitter picks
	// another of Queues. Default "default". Each queue is served as one
	// Asynq queue per priority (see AsynqQueue).
	Queue string
	// Queues are the other queues a submitter may pick (the "queue"
	// option). Default none: Queue only.
	Queues []string
	// MaxTimeout bounds the "timeout" a submitter may ask for. Default
	// Timeout: a submitter may only shorten it.
	MaxTimeout time.Duration
	// RetryLimit bounds the "max_retry" a submitter may ask for. Default
	// the larger of MaxRetry and 10.
	RetryLimit int
	// Unique, when set, makes the type unique for that long: a second job
	// of the type with the same params from the same owner, submitted
	// while the first is not finished and within Unique of it, is refused
	// with a conflict naming the first. Default 0: not unique.
	Unique time.Duration
	// HasArtifact says the handler writes Env.ArtifactPath() on success.
	HasArtifact bool
}

// NoRetry as Spec.MaxRetry means a failed run is not retried.
const NoRetry = -1

// Type is a registered job type. Make one with Define.
type Type struct {
	Name        string
	Description string
	Schema      json.RawMessage
	MaxRetry    int           // default retries of a failed run
	RetryLimit  int           // the most retries a submitter may ask for
	Timeout     time.Duration // default bound of one run
	MaxTimeout  time.Duration // the longest timeout a submitter may ask for
	Queue       string        // the default queue
	Queues      []string      // every queue a submitter may pick, Queue first
	Unique      time.Duration // 0, or how long a job of the type stays unique
	HasArtifact bool

	decode func(raw json.RawMessage) (json.RawMessage, error)
	run    func(ctx context.Context, params json.RawMessage, env Env, r Reporter) (any, error)
}

// Define turns a Spec into a Type. It panics when the spec is incomplete,
// its schema does not compile, or a default in it does not pass its own
// property's schema or does not fit P: all are programming errors, found
// when the type is built at start-up rather than at the first submit.
func Define[P any](s Spec[P]) Type {
	if s.Name == "" || s.Run == nil {
		panic("jobs: Define needs Name and Run")
	}
	sch, err := compileSchema[P](s.Name, s.Schema)
	if err != nil {
		panic(fmt.Sprintf("jobs: %s: %v", s.Name, err))
	}
	t := Type{
		Name: s.Name, Description: s.Description, Schema: json.RawMessage(s.Schema),
		MaxRetry: s.MaxRetry, Timeout: s.Timeout, Queue: s.Queue, HasArtifact: s.HasArtifact,
		RetryLimit: s.RetryLimit, MaxTimeout: s.MaxTimeout, Unique: s.Unique,
	}
	switch {
	case t.MaxRetry == 0:
		t.MaxRetry = 3
	case t.MaxRetry < 0:
		t.MaxRetry = 0
	}
	if t.Timeout <= 0 {
		t.Timeout = time.Hour
	}
	if t.Queue == "" {
		t.Queue = "default"
	}
	if t.MaxTimeout <= 0 {
		t.MaxTimeout = t.Timeout
	}
	if t.MaxTimeout < t.Timeout {
		panic(fmt.Sprintf("jobs: %s: MaxTimeout %v is below Timeout %v", s.Name, t.MaxTimeout, t.Timeout))
	}
	if t.RetryLimit <= 0 {
		t.RetryLimit = max(t.MaxRetry, 10)
	}
	if t.RetryLimit < t.MaxRetry {
		panic(fmt.Sprintf("jobs: %s: RetryLimit %d is below MaxRetry %d", s.Name, t.RetryLimit, t.MaxRetry))
	}
	if t.Unique < 0 || (t.Unique > 0 && t.Unique < time.Second) {
		panic(fmt.Sprintf("jobs: %s: Unique %v: want 0 or at least 1s", s.Name, t.Unique))
	}
	t.Queues = []string{t.Queue}
	for _, q := range s.Queues {
		if !slices.Contains(t.Queues, q) {
			t.Queues = append(t.Queues, q)
		}
	}
	for _, q := range t.Queues {
		if !ValidQueueName(q) {
			panic(fmt.Sprintf("jobs: %s: queue %q: want 1 to 64 of a-z 0-9 _ -", s.Name, q))
		}
	}
	t.decode = func(raw json.RawMessage) (json.RawMessage, error) {
		return decodeParams(sch, s.Validate, raw)
	}
	t.run = func(ctx context.Context, raw json.RawMessage, env Env, r Reporter) (any, error) {
		var p P
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("decode stored params: %w", err)
		}
		return s.Run(ctx, p, env, r)
	}
	return t
}

// Decode validates raw params for this type and returns them normalized
// (defaults filled), as they will be stored and shown. Errors are
// *ParamError.
func (t Type) Decode(raw json.RawMessage) (json.RawMessage, error) { return t.decode(raw) }

// ParamError is a client mistake in job params.
type ParamError struct {
	Field  string // the offending field, "" for the whole object
	Reason string
}

func (e *ParamError) Error() string {
	if e.Field == "" {
		return "params: " + e.Reason
	}
	return "params." + e.Field + ": " + e.Reason
}

// Invalid returns a *ParamError for field.
func Invalid(field, format string, args ...any) error {
	return &ParamError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

func asParamError(err error) error {
	var pe *ParamError
	if errors.As(err, &pe) {
		return pe
	}
	return &ParamError{Reason: err.Error()}
}

// noLoader refuses every URL: a job type's schema is self-contained, so a
// $ref to anything outside it is a mistake to report at Define, not a file
// or network read on the server. The draft meta-schemas are built into the
// validator and need no loader.
var noLoader = jsonschema.SchemeURLLoader{}

// compileSchema compiles a type's schema and checks its defaults: each must
// pass its own property's schema and decode into P, so that a bad default
// is found at start-up rather than by every submit that omits the field.
func compileSchema[P any](name, src string) (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(src))
	if err != nil {
		return nil, fmt.Errorf("schema is not valid JSON: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.UseLoader(noLoader)
	loc := "taskstream:///job-types/" + url.PathEscape(name) + ".json"
	if err := c.AddResource(loc, doc); err != nil {
		return nil, fmt.Errorf("schema: %w", err)
	}
	sch, err := c.Compile(loc)
	if err != nil {
		return nil, fmt.Errorf("schema does not compile: %w", err)
	}
	defaults := map[string]any{}
	for prop, ps := range sch.Properties {
		if ps.Default == nil {
			continue
		}
		if err := ps.Validate(*ps.Default); err != nil {
			return nil, fmt.Errorf("schema: the default of %q fails its own schema: %w", prop, err)
		}
		defaults[prop] = *ps.Default
	}
	if err := decodeStrict(defaults, new(P)); err != nil {
		return nil, fmt.Errorf("schema: a default does not fit %T: %w", *new(P), err)
	}
	return sch, nil
}

// schemaMaximum returns the integer "maximum" of a top-level property of
// a schema, for Go code that derives a setting from a limit (a timeout
// from the longest valid run) without writing the limit a second time. It
// panics when the schema has none: a type built on it is wrong at start-up.
func schemaMaximum(schema, prop string) int64 {
	var doc struct {
		Properties map[string]struct {
			Maximum *json.Number `json:"maximum"`
		} `json:"properties"`
	}
	if err := json.Unmarshal([]byte(schema), &doc); err != nil {
		panic(fmt.Sprintf("jobs: schemaMaximum: %v", err))
	}
	m := doc.Properties[prop].Maximum
	if m == nil {
		panic(fmt.Sprintf("jobs: schemaMaximum: property %q has no maximum", prop))
	}
	n, err := m.Int64()
	if err != nil {
		panic(fmt.Sprintf("jobs: schemaMaximum: %q: %v", prop, err))
	}
	return n
}

// decodeParams is Decode: raw must be one JSON object (empty and null mean
// {}); a null property means the property is absent, as a nil pointer
// does in encoding/json. The object is checked against the schema, absent
// properties get the schema's defaults, the result is decoded strictly
// into P, and validate (when set) checks the rules between fields. The
// normalized params are checked against the schema once more, so nothing
// stored ever breaks it, whatever P's JSON tags make of the input.
func decodeParams[P any](sch *jsonschema.Schema, validate func(*P) error, raw json.RawMessage) (json.RawMessage, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		raw = json.RawMessage("{}")
	}
	if raw[0] != '{' {
		return nil, &ParamError{Reason: "must be a JSON object"}
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, &ParamError{Reason: "malformed JSON: " + err.Error()}
	}
	obj, ok := doc.(map[string]any)
	if !ok { // unreachable after the '{' check; kept so a change there can not panic
		return nil, &ParamError{Reason: "must be a JSON object"}
	}
	dropNulls(obj)
	if err := sch.Validate(obj); err != nil {
		return nil, schemaError(err)
	}
	for prop, ps := range sch.Properties {
		if _, set := obj[prop]; !set && ps.Default != nil {
			obj[prop] = *ps.Default
		}
	}
	var p P
	if err := decodeStrict(obj, &p); err != nil {
		return nil, jsonParamError(err)
	}
	if validate != nil {
		if err := validate(&p); err != nil {
			return nil, asParamError(err)
		}
	}
	out, err := json.Marshal(p)
	if err != nil {
		return nil, &ParamError{Reason: err.Error()}
	}
	norm, err := jsonschema.UnmarshalJSON(bytes.NewReader(out))
	if err != nil {
		return nil, &ParamError{Reason: err.Error()}
	}
	if m, ok := norm.(map[string]any); ok {
		dropNulls(m)
	}
	if err := sch.Validate(norm); err != nil {
		return nil, schemaError(err)
	}
	return out, nil
}

func dropNulls(obj map[string]any) {
	for k, v := range obj {
		if v == nil {
			delete(obj, k)
		}
	}
}

// decodeStrict decodes the JSON value v (as UnmarshalJSON returns it) into
// dst, refusing fields dst does not have.
func decodeStrict(v any, dst any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(dst)
}

// jsonParamError names the field when encoding/json refuses a value the
// schema allowed, such as 1e3 for an int field.
func jsonParamError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		reason := fmt.Sprintf("must be %s, not %s", te.Type, te.Value)
		if te.Type != nil && strings.HasPrefix(te.Value, "number ") {
			switch te.Type.Kind() {
			case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
				reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
				reason = "must be an integer written without a fraction or exponent, not " + strings.TrimPrefix(te.Value, "number ")
			}
		}
		return &ParamError{Field: te.Field, Reason: reason}
	}
	return &ParamError{Reason: err.Error()}
}

// schemaError turns a validation failure into one *ParamError naming a
// field. The validator reports every failing keyword as a tree; the leaves
// are the specific ones. The first by field name is reported so that the
// same params always get the same message.
func schemaError(err error) error {
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return &ParamError{Reason: err.Error()}
	}
	var leaves []*ParamError
	collectLeaves(ve, &leaves)
	if len(leaves) == 0 {
		return &ParamError{Reason: ve.ErrorKind.LocalizedString(schemaPrinter)}
	}
	sort.Slice(leaves, func(i, j int) bool {
		if leaves[i].Field != leaves[j].Field {
			return leaves[i].Field < leaves[j].Field
		}
		return leaves[i].Reason < leaves[j].Reason
	})
	return leaves[0]
}

func collectLeaves(e *jsonschema.ValidationError, out *[]*ParamError) {
	if len(e.Causes) > 0 {
		for _, c := range e.Causes {
			collectLeaves(c, out)
		}
		return
	}
	*out = append(*out, describeSchemaError(e)...)
}

// schemaPrinter renders the validator's own messages for the keywords
// describeSchemaError does not word itself.
var schemaPrinter = message.NewPrinter(language.English)

// describeSchemaError words one failing keyword for the submitter. Errors
// about an object's properties (required, unknown, dependent) name the
// property rather than the object.
func describeSchemaError(e *jsonschema.ValidationError) []*ParamError {
	at := func(extra ...string) string {
		return strings.Join(append(slices.Clone(e.InstanceLocation), extra...), ".")
	}
	one := func(reason string) []*ParamError { return []*ParamError{{Field: at(), Reason: reason}} }
	switch k := e.ErrorKind.(type) {
	case *kind.Required:
		var out []*ParamError
		for _, m := range k.Missing {
			out = append(out, &ParamError{Field: at(m), Reason: "is required"})
		}
		return out
	case *kind.AdditionalProperties:
		var out []*ParamError
		for _, p := range k.Properties {
			out = append(out, &ParamError{Field: at(p), Reason: "unknown field"})
		}
		return out
	case *kind.DependentRequired:
		return []*ParamError{{Field: at(k.Prop), Reason: "needs " + strings.Join(k.Missing, ", ")}}
	case *kind.Type:
		return one(fmt.Sprintf("must be %s, not %s", strings.Join(k.Want, " or "), k.Got))
	case *kind.Minimum:
		return one("must be >= " + ratText(k.Want))
	case *kind.Maximum:
		return one("must be <= " + ratText(k.Want))
	case *kind.ExclusiveMinimum:
		return one("must be > " + ratText(k.Want))
	case *kind.ExclusiveMaximum:
		return one("must be < " + ratText(k.Want))
	case *kind.MultipleOf:
		return one("must be a multiple of " + ratText(k.Want))
	case *kind.MinLength:
		return one(fmt.Sprintf("must be at least %d characters long", k.Want))
	case *kind.MaxLength:
		return one(fmt.Sprintf("must be at most %d characters long", k.Want))
	}
	return one(e.ErrorKind.LocalizedString(schemaPrinter))
}

// ratText writes a schema bound the way it would be written in JSON.
func ratText(r *big.Rat) string {
	if r.IsInt() {
		return r.Num().String()
	}
	f, _ := r.Float64()
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// Registry holds the job types a process knows. Register types at start-up;
// after that a Registry is safe for concurrent reads.
type Registry struct {
	mu    sync.RWMutex
	types map[string]Type
}

// NewRegistry returns a registry holding types.
func NewRegistry(types ...Type) (*Registry, error) {
	r := &Registry{types: make(map[string]Type)}
	for _, t := range types {
		if err := r.Register(t); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Register adds t; a second type with the same name is an error.
func (r *Registry) Register(t Type) error {
	if t.decode == nil {
		return fmt.Errorf("jobs: type %q was not made with Define", t.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.types[t.Name]; dup {
		return fmt.Errorf("jobs: type %q registered twice", t.Name)
	}
	r.types[t.Name] = t
	return nil
}

// Lookup returns the type named name.
func (r *Registry) Lookup(name string) (Type, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	t, ok := r.types[name]
	return t, ok
}

// Types returns every registered type, sorted by name.
func (r *Registry) Types() []Type {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Type, 0, len(r.types))
	for _, t := range r.types {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Queues returns the distinct queues of the registered types (every
// queue a type allows), as WORKER_QUEUES names them.
func (r *Registry) Queues() []string {
	seen := map[string]bool{}
	var qs []string
	for _, t := range r.Types() {
		for _, q := range t.Queues {
			if !seen[q] {
				seen[q] = true
				qs = append(qs, q)
			}
		}
	}
	return qs
}

// AsynqQueues returns the Asynq queues that serve Queues: one per queue
// and priority (see AsynqQueue).
func (r *Registry) AsynqQueues() []string {
	var out []string
	for _, q := range r.Queues() {
		for _, p := range Priorities {
			out = append(out, AsynqQueue(q, p))
		}
	}
	return out
}
