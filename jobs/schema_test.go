package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"taskstream/progress/progresstest"
)

type schemaTestParams struct {
	Count int     `json:"count"`
	Mode  string  `json:"mode"`
	Name  string  `json:"name,omitempty"`
	Ratio float64 `json:"ratio,omitempty"`
	Tags  []int   `json:"tags,omitempty"`
}

func schemaTestRun(context.Context, schemaTestParams, Env, Reporter) (any, error) { return nil, nil }

// TestDefineRefusesBadSpecs: a spec whose schema can not be used is found
// when the type is built, with a message naming the type and the fault.
func TestDefineRefusesBadSpecs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		spec   Spec[schemaTestParams]
		panics string
	}{
		{"no name", Spec[schemaTestParams]{Schema: `{}`, Run: schemaTestRun}, "Define needs Name and Run"},
		{"no run", Spec[schemaTestParams]{Name: "x", Schema: `{}`}, "Define needs Name and Run"},
		{"not JSON", Spec[schemaTestParams]{Name: "x", Schema: `{"type":`, Run: schemaTestRun}, "x: schema is not valid JSON"},
		{"not a schema", Spec[schemaTestParams]{Name: "x", Schema: `{"type":5}`, Run: schemaTestRun}, "x: schema does not compile"},
		{"bad bound", Spec[schemaTestParams]{Name: "x", Schema: `{"properties":{"count":{"minimum":"1"}}}`, Run: schemaTestRun}, "x: schema does not compile"},
		{"ref to a file", Spec[schemaTestParams]{Name: "x", Schema: `{"$ref":"file:///etc/passwd"}`, Run: schemaTestRun}, "x: schema does not compile"},
		{"ref to the network", Spec[schemaTestParams]{Name: "x", Schema: `{"$ref":"https://example.com/s.json"}`, Run: schemaTestRun}, "x: schema does not compile"},
		{"default out of bounds", Spec[schemaTestParams]{Name: "x", Schema: `{"properties":{"count":{"type":"integer","maximum":5,"default":6}}}`, Run: schemaTestRun}, `x: schema: the default of "count" fails its own schema`},
		{"default does not fit P", Spec[schemaTestParams]{Name: "x", Schema: `{"properties":{"mode":{"default":3}}}`, Run: schemaTestRun}, "x: schema: a default does not fit jobs.schemaTestParams"},
		{"default of a field P lacks", Spec[schemaTestParams]{Name: "x", Schema: `{"properties":{"other":{"default":3}}}`, Run: schemaTestRun}, "x: schema: a default does not fit jobs.schemaTestParams"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil {
					t.Fatalf("Define did not panic, want %q", tc.panics)
				}
				if msg := fmt.Sprint(r); !strings.Contains(msg, tc.panics) {
					t.Fatalf("Define panicked with %q, want it to contain %q", msg, tc.panics)
				}
			}()
			Define(tc.spec)
		})
	}
}

// TestSchemaKeywords: params are checked against the whole schema, not just
// the keywords the built-in types use, and each refusal names the field.
// The schema here has no additionalProperties:false on purpose: Decode
// must still store nothing the schema refuses.
func TestSchemaKeywords(t *testing.T) {
	typ := Define(Spec[schemaTestParams]{
		Name: "keywords",
		Schema: `{
		  "type": "object",
		  "required": ["count"],
		  "properties": {
		    "count": {"type": "integer", "minimum": 1, "maximum": 5},
		    "mode": {"enum": ["fast", "slow"], "default": "slow"},
		    "name": {"type": "string", "minLength": 2, "maxLength": 4, "pattern": "^[a-z]+$"},
		    "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1.5, "multipleOf": 0.25},
		    "tags": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 2}
		  }
		}`,
		Run: schemaTestRun,
	})
	testDecode(t, typ, []decodeCase{
		{name: "defaults", in: `{"count":1}`, want: `{"count":1,"mode":"slow"}`},
		{name: "all", in: `{"count":5,"mode":"fast","name":"ab","ratio":1.25,"tags":[0,7]}`, want: `{"count":5,"mode":"fast","name":"ab","ratio":1.25,"tags":[0,7]}`},
		{name: "enum", in: `{"count":1,"mode":"quick"}`, err: `params.mode: value must be one of 'fast', 'slow'`},
		{name: "min length", in: `{"count":1,"name":"a"}`, err: "params.name: must be at least 2 characters long"},
		{name: "max length", in: `{"count":1,"name":"abcde"}`, err: "params.name: must be at most 4 characters long"},
		{name: "pattern", in: `{"count":1,"name":"A1"}`, err: `params.name: 'A1' does not match pattern '^[a-z]+$'`},
		{name: "exclusive minimum", in: `{"count":1,"ratio":0}`, err: "params.ratio: must be > 0"},
		{name: "exclusive maximum", in: `{"count":1,"ratio":1.5}`, err: "params.ratio: must be < 1.5"},
		{name: "multiple of", in: `{"count":1,"ratio":0.3}`, err: "params.ratio: must be a multiple of 0.25"},
		{name: "nested item", in: `{"count":1,"tags":[1,-1]}`, err: "params.tags.1: must be >= 0"},
		{name: "max items", in: `{"count":1,"tags":[1,2,3]}`, err: "params.tags: maxItems: got 3, want 2"},
		// Extra properties are allowed by this schema, but encoding/json
		// reads "RATIO" into ratio: the normalized params are checked
		// again, so 2 is refused all the same.
		{name: "case-folded field", in: `{"count":1,"RATIO":2}`, err: "params.ratio: must be < 1.5"},
	})
}

// TestSchemaServedAsWritten: /api/job-types serves Type.Schema, which must
// be the spec's text byte for byte (the page reads titles and descriptions
// from it).
func TestSchemaServedAsWritten(t *testing.T) {
	for _, tc := range []struct {
		typ    Type
		schema string
	}{
		{Steps(), stepsSchema},
		{Primes(), primesSchema},
		{Report(), reportSchema},
	} {
		if string(tc.typ.Schema) != tc.schema {
			t.Errorf("%s: Type.Schema differs from the spec's schema", tc.typ.Name)
		}
		if !json.Valid(tc.typ.Schema) {
			t.Errorf("%s: schema is not JSON", tc.typ.Name)
		}
	}
}

func TestSchemaMaximum(t *testing.T) {
	if got := schemaMaximum(stepsSchema, "interval_ms"); got != 60000 {
		t.Fatalf("schemaMaximum(steps, interval_ms) = %d, want 60000", got)
	}
	for _, prop := range []string{"nope", "fail_at"} {
		t.Run(prop, func(t *testing.T) {
			schema := `{"properties":{"fail_at":{"type":"integer"}}}`
			defer func() {
				if recover() == nil {
					t.Fatalf("schemaMaximum(%q) did not panic", prop)
				}
			}()
			schemaMaximum(schema, prop)
		})
	}
	// The steps timeout covers the longest run the schema allows.
	if got, want := Steps().Timeout.Hours(), 100000.0*60/3600+1; got < want {
		t.Fatalf("steps timeout %v h, want at least %v h", got, want)
	}
}

// TestSubmitChecksParamsAgainstSchema: Submit, on both Redis backends,
// refuses params the schema refuses with the *ParamError the API turns
// into 400 bad_request (recording no job), and stores accepted params
// with the schema's defaults filled.
func TestSubmitChecksParamsAgainstSchema(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		ctx := t.Context()
		for _, tc := range []struct {
			typ, params string
			want        string // stored params, or
			err         string // the refusal
		}{
			{typ: "steps", params: `{"steps":3}`, want: `{"steps":3,"interval_ms":100}`},
			{typ: "report", params: `{"rows":2}`, want: `{"rows":2,"seed":0}`},
			{typ: "primes", params: `{"n":7}`, want: `{"n":7}`},
			{typ: "steps", params: `{"steps":0}`, err: "params.steps: must be >= 1"},
			{typ: "steps", params: `{"steps":2,"fail_at":3}`, err: "params.fail_at: must be <= steps (2), got 3"},
			{typ: "steps", params: `{"steps":2,"fail_times":1}`, err: "params.fail_times: needs fail_at"},
			{typ: "primes", params: `{"n":10000000001}`, err: "params.n: must be <= 10000000000"},
			{typ: "report", params: `{"seed":1}`, err: "params.rows: is required"},
		} {
			job, err := e.svc.Submit(ctx, "schema-owner", tc.typ, json.RawMessage(tc.params))
			if tc.err != "" {
				var pe *ParamError
				if !errors.As(err, &pe) || pe.Error() != tc.err {
					t.Errorf("Submit(%s, %s) = %v, %v; want *ParamError %q", tc.typ, tc.params, job, err, tc.err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("Submit(%s, %s): %v", tc.typ, tc.params, err)
			}
			got, err := e.svc.Get(ctx, job.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !jsonEqual(t, got.Params, []byte(tc.want)) {
				t.Errorf("Submit(%s, %s) stored %s, want %s", tc.typ, tc.params, got.Params, tc.want)
			}
		}
		jobs, err := e.svc.List(ctx, "schema-owner", 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs) != 3 {
			t.Errorf("%d jobs recorded, want the 3 accepted ones", len(jobs))
		}
	})
}

// TestDecodeConcurrent: a Type's compiled schema is shared by every
// request; run with -race, this shows Decode keeps no state between calls.
func TestDecodeConcurrent(t *testing.T) {
	typ := Steps()
	inputs := []string{`{"steps":3}`, `{"steps":0}`, `{"steps":2,"fail_at":3}`, `{"steps":4,"fail_at":2,"fail_times":1}`, `{"bogus":1}`}
	want := make([]string, len(inputs))
	for i, in := range inputs {
		out, err := typ.Decode(json.RawMessage(in))
		want[i] = fmt.Sprint(string(out), err)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Go(func() {
			for n := range 200 {
				i := (g + n) % len(inputs)
				out, err := typ.Decode(json.RawMessage(inputs[i]))
				if got := fmt.Sprint(string(out), err); got != want[i] {
					errs <- fmt.Sprintf("Decode(%s) = %s, alone it gave %s", inputs[i], got, want[i])
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
