package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
)

// builtinTestReporter records what a handler reports. onProgress, when set,
// runs on every Progress call so a test can act at a chosen point (cancel).
type builtinTestReporter struct {
	mu         sync.Mutex
	progress   []builtinTestProgress
	logs       []string
	onProgress func(done, total int64)
}

type builtinTestProgress struct {
	Done, Total    int64
	Stage, Message string
}

func (r *builtinTestReporter) Progress(done, total int64, stage, message string) {
	r.mu.Lock()
	r.progress = append(r.progress, builtinTestProgress{done, total, stage, message})
	hook := r.onProgress
	r.mu.Unlock()
	if hook != nil {
		hook(done, total)
	}
}

func (r *builtinTestReporter) Log(level, message string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, level+": "+message)
}

func (r *builtinTestReporter) calls() []builtinTestProgress {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.progress)
}

// decodeCase is one row of a table-driven Decode test: either want (the
// normalized params) or err (the exact message of the *ParamError, whose
// "params.FIELD:" prefix must also be its Field) is checked.
type decodeCase struct {
	name string
	in   string
	want string
	err  string
}

func testDecode(t *testing.T, typ Type, cases []decodeCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := typ.Decode(json.RawMessage(tc.in))
			if tc.err != "" {
				var pe *ParamError
				if !errors.As(err, &pe) {
					t.Fatalf("Decode(%s) = %s, %v; want a *ParamError %q", tc.in, out, err, tc.err)
				}
				if pe.Error() != tc.err {
					t.Fatalf("Decode(%s): error %q, want %q", tc.in, pe, tc.err)
				}
				if want := messageField(tc.err); pe.Field != want {
					t.Fatalf("Decode(%s): error %q has Field %q, want %q", tc.in, pe, pe.Field, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode(%s): %v", tc.in, err)
			}
			if !jsonEqual(t, out, []byte(tc.want)) {
				t.Fatalf("Decode(%s) = %s, want %s", tc.in, out, tc.want)
			}
		})
	}
}

// messageField returns the field a ParamError message names: "x" for
// "params.x: ...", "" for "params: ...".
func messageField(msg string) string {
	head, _, _ := strings.Cut(msg, ": ")
	field, _ := strings.CutPrefix(head, "params")
	return strings.TrimPrefix(field, ".")
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("bad JSON %s: %v", a, err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("bad JSON %s: %v", b, err)
	}
	return fmt.Sprint(x) == fmt.Sprint(y)
}

// commonDecodeErrors are the malformed inputs every type must refuse with
// the same message.
var commonDecodeErrors = []decodeCase{
	{name: "malformed", in: `{"x":`, err: "params: malformed JSON: unexpected EOF"},
	{name: "array", in: `[1,2]`, err: "params: must be a JSON object"},
	{name: "string", in: `"abc"`, err: "params: must be a JSON object"},
	{name: "number", in: `42`, err: "params: must be a JSON object"},
	{name: "true", in: `true`, err: "params: must be a JSON object"},
	{name: "unknown field", in: `{"bogus":1}`, err: "params.bogus: unknown field"},
	{name: "trailing data", in: `{} {}`, err: "params: malformed JSON: invalid character after top-level value"},
	{name: "trailing bracket", in: `{}]`, err: "params: malformed JSON: invalid character after top-level value"},
}

// withCommon adds commonDecodeErrors to the cases of a type whose required
// field is field: an empty object, null and nothing must name it.
func withCommon(field string, cases []decodeCase) []decodeCase {
	out := slices.Clone(commonDecodeErrors)
	out = append(out,
		decodeCase{name: "missing required", in: `{}`, err: "params." + field + ": is required"},
		decodeCase{name: "null is empty", in: `null`, err: "params." + field + ": is required"},
		decodeCase{name: "empty is empty", in: ``, err: "params." + field + ": is required"},
		decodeCase{name: "required null", in: `{"` + field + `":null}`, err: "params." + field + ": is required"},
	)
	return append(out, cases...)
}

func TestBuiltinTypes(t *testing.T) {
	reg, err := NewRegistry(Builtin()...)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, typ := range reg.Types() {
		names = append(names, typ.Name)
		if typ.Description == "" {
			t.Errorf("%s: no description", typ.Name)
		}
	}
	if want := []string{"primes", "report", "steps"}; !slices.Equal(names, want) {
		t.Fatalf("types %v, want %v", names, want)
	}
	if typ, _ := reg.Lookup("report"); !typ.HasArtifact {
		t.Errorf("report: HasArtifact false")
	}
}

// schemaBase is, per type, a valid params object holding every required
// property, plus whatever other properties need to be valid (fail_times
// needs fail_at, fail_at up to its maximum needs that many steps).
var schemaBase = map[string]map[string]any{
	"steps":  {"steps": json.Number("100000"), "fail_at": json.Number("1")},
	"primes": {"n": json.Number("2")},
	"report": {"rows": json.Number("1")},
}

type schemaProp struct {
	Type        string       `json:"type"`
	Title       string       `json:"title"`
	Description string       `json:"description"`
	Minimum     *json.Number `json:"minimum"`
	Maximum     *json.Number `json:"maximum"`
	Default     *json.Number `json:"default"`
}

type schemaDoc struct {
	Type                 string                `json:"type"`
	Properties           map[string]schemaProp `json:"properties"`
	Required             []string              `json:"required"`
	AdditionalProperties *bool                 `json:"additionalProperties"`
}

// TestSchemasMatchValidation reads each schema as plain JSON, apart from
// the validator, and checks Decode against what it says: the page builds
// its form from the schema and the server decides with Decode, so bounds,
// defaults and required fields must agree, each refusal naming the field.
func TestSchemasMatchValidation(t *testing.T) {
	for _, typ := range Builtin() {
		t.Run(typ.Name, func(t *testing.T) {
			var s schemaDoc
			dec := json.NewDecoder(bytes.NewReader(typ.Schema))
			dec.UseNumber()
			if err := dec.Decode(&s); err != nil {
				t.Fatal(err)
			}
			if s.Type != "object" || s.AdditionalProperties == nil || *s.AdditionalProperties {
				t.Fatalf("schema must be an object with additionalProperties false")
			}
			base := schemaBase[typ.Name]
			decode := func(obj map[string]any) (map[string]any, error) {
				raw, _ := json.Marshal(obj)
				out, err := typ.Decode(raw)
				if err != nil {
					return nil, err
				}
				var m map[string]any
				d := json.NewDecoder(bytes.NewReader(out))
				d.UseNumber()
				if err := d.Decode(&m); err != nil {
					t.Fatal(err)
				}
				return m, nil
			}
			with := func(k string, v any) map[string]any {
				m := maps.Clone(base)
				if v == nil {
					delete(m, k)
				} else {
					m[k] = v
				}
				return m
			}
			norm, err := decode(base)
			if err != nil {
				t.Fatalf("base params %v: %v", base, err)
			}
			for k := range norm {
				if _, ok := s.Properties[k]; !ok {
					t.Errorf("normalized params have %q, schema does not", k)
				}
			}
			for _, k := range s.Required {
				_, err := decode(with(k, nil))
				var pe *ParamError
				if !errors.As(err, &pe) || pe.Field != k {
					t.Errorf("without required %q: %v, want a ParamError naming it", k, err)
				}
			}
			for name, p := range s.Properties {
				if p.Type != "integer" || p.Title == "" || p.Description == "" {
					t.Errorf("%s: want type integer, a title and a description: %+v", name, p)
				}
				if p.Minimum == nil || p.Maximum == nil {
					t.Errorf("%s: no minimum or maximum", name)
					continue
				}
				lo, _ := p.Minimum.Int64()
				hi, _ := p.Maximum.Int64()
				for _, v := range []int64{lo, hi} {
					if _, err := decode(with(name, json.Number(fmt.Sprint(v)))); err != nil {
						t.Errorf("%s=%d is within the schema but Decode says %v", name, v, err)
					}
				}
				for _, v := range []int64{lo - 1, hi + 1} {
					_, err := decode(with(name, json.Number(fmt.Sprint(v))))
					var pe *ParamError
					if !errors.As(err, &pe) || pe.Field != name {
						t.Errorf("%s=%d is outside the schema but Decode says %v", name, v, err)
					}
				}
				if p.Default != nil {
					if slices.Contains(s.Required, name) {
						t.Errorf("%s: required and has a default", name)
					}
					got, err := decode(with(name, nil))
					if err != nil {
						t.Fatal(err)
					}
					if got[name] != *p.Default {
						t.Errorf("%s: default in schema %v, Decode fills %v", name, *p.Default, got[name])
					}
				}
			}
		})
	}
}

// runType runs typ the way the worker does: params normalized by Decode,
// then handed to the type's run.
func runType(ctx context.Context, t *testing.T, typ Type, params string, env Env, r Reporter) (any, error) {
	t.Helper()
	norm, err := typ.Decode(json.RawMessage(params))
	if err != nil {
		t.Fatalf("Decode(%s): %v", params, err)
	}
	return typ.run(ctx, norm, env, r)
}

// handlerParams decodes normalized params strictly into the Go type each
// built-in handler runs with.
var handlerParams = map[string]func(raw []byte) error{
	"steps": func(raw []byte) error {
		var p stepsParams
		if err := decodeStrictBytes(raw, &p); err != nil {
			return err
		}
		if p.FailAt != nil && *p.FailAt > p.Steps {
			return fmt.Errorf("fail_at %d beyond steps %d", *p.FailAt, p.Steps)
		}
		if p.FailTimes != nil && p.FailAt == nil {
			return errors.New("fail_times without fail_at")
		}
		return nil
	},
	"primes": func(raw []byte) error { return decodeStrictBytes(raw, new(primesParams)) },
	"report": func(raw []byte) error { return decodeStrictBytes(raw, new(reportParams)) },
}

func decodeStrictBytes(raw []byte, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(dst)
}

// schemaLimits reads each built-in schema as plain JSON (not through the
// validator) for the fuzz test to check accepted params against.
func schemaLimits(f *testing.F, typ Type) schemaDoc {
	var s schemaDoc
	dec := json.NewDecoder(bytes.NewReader(typ.Schema))
	dec.UseNumber()
	if err := dec.Decode(&s); err != nil {
		f.Fatal(err)
	}
	return s
}

// FuzzJobParams feeds arbitrary bytes to every built-in type's Decode: it
// must not panic and must fail only with *ParamError. What it accepts must
// hold every required property, only properties the schema lists, each
// within the schema's bounds as written (read apart from the validator),
// must decode into the handler's params and pass its cross-field rules, and
// must be a fixed point, since stored params are decoded again when a job
// is retried or shown.
func FuzzJobParams(f *testing.F) {
	for _, s := range []string{
		``, `null`, `{}`, `[]`, `"x"`, `1`, `{"x":`, `{} {}`, `{}]`,
		`{"steps":3}`, `{"steps":3,"interval_ms":0}`, `{"steps":5,"fail_at":2,"fail_times":1}`,
		`{"steps":0}`, `{"steps":100001}`, `{"steps":"3"}`, `{"steps":1.5}`, `{"steps":1e3}`,
		`{"steps":2,"fail_at":3}`, `{"steps":2,"fail_times":1}`, `{"steps":2,"fail_at":null}`,
		`{"STEPS":2}`, `{"steps":2,"steps":3}`, `{"steps":2,"Steps":200000}`, `{"steps":3,"interval_ms":null}`,
		`{"n":2}`, `{"n":10000000000}`, `{"n":10000000001}`, `{"n":-1}`, `{"n":99999999999999999999}`,
		`{"rows":1}`, `{"rows":10,"seed":-7}`, `{"rows":10,"seed":9007199254740992}`, `{"rows":0,"seed":1}`,
		` {"rows":10} `, `{"rows":10,"extra":true}`, `{"rows":10,"seed":null}`,
	} {
		f.Add([]byte(s))
	}
	types := Builtin()
	docs := make(map[string]schemaDoc, len(types))
	for _, typ := range types {
		docs[typ.Name] = schemaLimits(f, typ)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, typ := range types {
			out, err := typ.Decode(data)
			if err != nil {
				var pe *ParamError
				if !errors.As(err, &pe) {
					t.Fatalf("%s: Decode(%q) error %T %v, want *ParamError", typ.Name, data, err, err)
				}
				continue
			}
			checkWithinSchema(t, docs[typ.Name], typ.Name, data, out)
			if err := handlerParams[typ.Name](out); err != nil {
				t.Fatalf("%s: Decode(%q) = %s, which the handler would refuse: %v", typ.Name, data, out, err)
			}
			again, err := typ.Decode(out)
			if err != nil {
				t.Fatalf("%s: Decode(%q) = %s, which does not decode again: %v", typ.Name, data, out, err)
			}
			if !bytes.Equal(again, out) {
				t.Fatalf("%s: Decode not idempotent: %q -> %s -> %s", typ.Name, data, out, again)
			}
		}
	})
}

// checkWithinSchema fails t unless out, the normalized params of in, has
// every required property, no property the schema does not list, and
// integer values within each property's minimum and maximum.
func checkWithinSchema(t *testing.T, s schemaDoc, name string, in, out []byte) {
	t.Helper()
	var m map[string]json.Number
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("%s: Decode(%q) = %s, not an object of numbers: %v", name, in, out, err)
	}
	for _, k := range s.Required {
		if _, ok := m[k]; !ok {
			t.Fatalf("%s: Decode(%q) = %s, without required %q", name, in, out, k)
		}
	}
	for k, v := range m {
		p, ok := s.Properties[k]
		if !ok {
			t.Fatalf("%s: Decode(%q) = %s, with %q the schema does not list", name, in, out, k)
		}
		n, err := v.Int64()
		if err != nil {
			t.Fatalf("%s: Decode(%q) = %s: %q is not an integer: %v", name, in, out, k, err)
		}
		if p.Minimum != nil {
			if lo, _ := p.Minimum.Int64(); n < lo {
				t.Fatalf("%s: Decode(%q) = %s: %s=%d below the minimum %d", name, in, out, k, n, lo)
			}
		}
		if p.Maximum != nil {
			if hi, _ := p.Maximum.Int64(); n > hi {
				t.Fatalf("%s: Decode(%q) = %s: %s=%d above the maximum %d", name, in, out, k, n, hi)
			}
		}
	}
}
