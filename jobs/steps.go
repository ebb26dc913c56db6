package jobs

import (
	"context"
	"fmt"
	"time"
)

// stepsProgressStage is the stage name of every progress report.
const stepsProgressStage = "steps"

// stepsParams are the params of a steps job. Their limits and defaults are
// in stepsSchema. The optional fields without a default are pointers so
// that absent (never fail) differs from any value.
type stepsParams struct {
	Steps      int  `json:"steps"`
	IntervalMS int  `json:"interval_ms"`
	FailAt     *int `json:"fail_at,omitempty"`
	FailTimes  *int `json:"fail_times,omitempty"`
}

const stepsSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "Steps",
  "description": "Counts through a number of steps with a pause between them; can be told to fail to exercise retries.",
  "type": "object",
  "properties": {
    "steps": {
      "type": "integer",
      "title": "Steps",
      "description": "How many steps to run.",
      "examples": [20],
      "minimum": 1,
      "maximum": 100000
    },
    "interval_ms": {
      "type": "integer",
      "title": "Interval (ms)",
      "description": "Pause between two steps, in milliseconds.",
      "minimum": 0,
      "maximum": 60000,
      "default": 100
    },
    "fail_at": {
      "type": "integer",
      "title": "Fail at step",
      "description": "Make the run fail when it reaches this step (at most the number of steps). Leave empty to never fail.",
      "minimum": 1,
      "maximum": 100000
    },
    "fail_times": {
      "type": "integer",
      "title": "Failing attempts",
      "description": "How many attempts fail at that step before one succeeds. Leave empty to fail every attempt. Needs a fail-at step.",
      "minimum": 1,
      "maximum": 1000
    }
  },
  "required": ["steps"],
  "dependentRequired": {"fail_times": ["fail_at"]},
  "additionalProperties": false
}`

// Steps returns the "steps" job type: a predictable, slow job for demos and
// for testing progress, cancellation and retries end to end.
func Steps() Type {
	return Define(Spec[stepsParams]{
		Name:        "steps",
		Description: "Counts through a number of steps with a pause between them, optionally failing at a chosen step to exercise retries.",
		Schema:      stepsSchema,
		Validate:    validateSteps,
		Run:         runSteps,
		// A demo of the submit options: two more queues to pick from.
		Queues: []string{"critical", "bulk"},
		// The longest valid run (every step at the longest pause) must not
		// hit the default one-hour timeout. The bounds are read from the
		// schema so that they are written once.
		Timeout: time.Duration(schemaMaximum(stepsSchema, "steps"))*
			time.Duration(schemaMaximum(stepsSchema, "interval_ms"))*time.Millisecond + time.Hour,
	})
}

// validateSteps checks the one rule the schema can not say: fail_at is a
// step of this run. Everything else (bounds, fail_times needing fail_at)
// is in stepsSchema.
func validateSteps(p *stepsParams) error {
	if p.FailAt != nil && *p.FailAt > p.Steps {
		return Invalid("fail_at", "must be <= steps (%d), got %d", p.Steps, *p.FailAt)
	}
	return nil
}

func runSteps(ctx context.Context, p stepsParams, env Env, r Reporter) (any, error) {
	interval := time.Duration(p.IntervalMS) * time.Millisecond
	total := int64(p.Steps)
	// Report the total up front so watchers see the size of the job before
	// the first pause ends.
	r.Progress(0, total, stepsProgressStage, fmt.Sprintf("step 0 of %d", p.Steps))

	// One timer reused for every pause: a time.After per step would allocate
	// a timer each time for jobs of up to 100000 steps.
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for i := 1; i <= p.Steps; i++ {
		if i > 1 && interval > 0 {
			if timer == nil {
				timer = time.NewTimer(interval)
			} else {
				timer.Reset(interval)
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("steps: stopped before step %d: %w", i, ctx.Err())
			case <-timer.C:
			}
		}
		// With interval 0 there is no select to notice cancellation.
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("steps: stopped before step %d: %w", i, err)
		}
		if p.FailAt != nil && i == *p.FailAt && (p.FailTimes == nil || env.Attempt <= *p.FailTimes) {
			return nil, fmt.Errorf("steps: step %d failed on purpose (fail_at, attempt %d)", i, env.Attempt)
		}
		r.Progress(int64(i), total, stepsProgressStage, fmt.Sprintf("step %d of %d", i, p.Steps))
	}
	return stepsResult{Steps: p.Steps}, nil
}

type stepsResult struct {
	Steps int `json:"steps"`
}
