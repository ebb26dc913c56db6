package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
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
	// Schema is the JSON Schema of P, shown in /api/job-types; the page
	// builds its form from it.
	Schema string
	// Validate checks decoded params and fills defaults. Return an error
	// made with Invalid to name the bad field; any error becomes a
	// bad_request for the submitter.
	Validate func(p *P) error
	// Run does the work. It returns the result (any JSON value) or an
	// error; it must return promptly when ctx is canceled.
	Run func(ctx context.Context, p P, env Env, r Reporter) (any, error)
	// MaxRetry is how many times a failed run is retried. Default 3; use
	// NoRetry for none.
	MaxRetry int
	// Timeout bounds one run. Default 1h.
	Timeout time.Duration
	// Queue is the Asynq queue the type's jobs go to. Default "default".
	Queue string
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
	MaxRetry    int
	Timeout     time.Duration
	Queue       string
	HasArtifact bool

	decode func(raw json.RawMessage) (json.RawMessage, error)
	run    func(ctx context.Context, params json.RawMessage, env Env, r Reporter) (any, error)
}

// Define turns a Spec into a Type. It panics when the spec is incomplete
// or its schema is not JSON: both are programming errors found at start-up.
func Define[P any](s Spec[P]) Type {
	if s.Name == "" || s.Run == nil || s.Validate == nil {
		panic("jobs: Define needs Name, Validate and Run")
	}
	if !json.Valid([]byte(s.Schema)) {
		panic(fmt.Sprintf("jobs: %s: Schema is not valid JSON", s.Name))
	}
	t := Type{
		Name: s.Name, Description: s.Description, Schema: json.RawMessage(s.Schema),
		MaxRetry: s.MaxRetry, Timeout: s.Timeout, Queue: s.Queue, HasArtifact: s.HasArtifact,
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
	t.decode = func(raw json.RawMessage) (json.RawMessage, error) {
		p, err := decodeParams[P](raw)
		if err != nil {
			return nil, err
		}
		if err := s.Validate(&p); err != nil {
			return nil, asParamError(err)
		}
		return json.Marshal(p)
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

// decodeParams decodes a JSON object strictly: unknown fields, trailing
// data and non-objects are rejected, so typos do not silently become
// defaults.
func decodeParams[P any](raw json.RawMessage) (P, error) {
	var p P
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		raw = json.RawMessage("{}")
	}
	if raw[0] != '{' {
		return p, &ParamError{Reason: "must be a JSON object"}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return p, &ParamError{Reason: describeJSONError(err)}
	}
	if dec.More() {
		return p, &ParamError{Reason: "unexpected data after the object"}
	}
	return p, nil
}

func describeJSONError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Sprintf("field %q must be %s, not %s", te.Field, te.Type, te.Value)
	}
	return err.Error()
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

// Queues returns the distinct queues of the registered types.
func (r *Registry) Queues() []string {
	seen := map[string]bool{}
	var qs []string
	for _, t := range r.Types() {
		if !seen[t.Queue] {
			seen[t.Queue] = true
			qs = append(qs, t.Queue)
		}
	}
	return qs
}
