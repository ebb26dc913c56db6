package jobs

import (
	"context"
	"errors"
	"testing"

	"github.com/hibiken/asynq"

	"taskstream/progress/progresstest"
)

// Operator actions through the Service: each state allows only its
// actions, and an action that moves a job's current task ends the job at
// once (no worker, hence no reconciler, runs), once, with its reason.
func TestActOnTask(t *testing.T) {
	cases := []struct {
		name string
		// prepare puts the job's task in a state (none: pending).
		prepare func(e *jobEnv, queue, task string)
		action  TaskAction
		err     error
		state   string // the job's state after the action ("" unchanged: pending)
		reason  string
		asynq   asynq.TaskState // the task's state after a successful action (0: gone)
	}{
		{name: "delete pending", action: TaskDelete, state: StateCanceled, reason: reasonDeleted},
		{name: "archive pending", action: TaskArchive, state: StateFailed, reason: reasonArchived, asynq: asynq.TaskStateArchived},
		{name: "run pending", action: TaskRun, err: ErrTaskState},
		{name: "run archived", action: TaskRun, state: StateFailed, reason: reasonArchived, asynq: asynq.TaskStatePending,
			prepare: func(e *jobEnv, q, task string) {
				if _, err := e.svc.ActOnTask(context.Background(), q, task, TaskArchive); err != nil {
					e.t.Fatal(err)
				}
			}},
		{name: "archive archived", action: TaskArchive, err: ErrTaskState, state: StateFailed, reason: reasonArchived, asynq: asynq.TaskStateArchived,
			prepare: func(e *jobEnv, q, task string) {
				if _, err := e.svc.ActOnTask(context.Background(), q, task, TaskArchive); err != nil {
					e.t.Fatal(err)
				}
			}},
		{name: "unknown action", action: "explode", err: ErrBadAction},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
				e := newJobEnv(t, srv)
				job := e.submit(`{"steps":1,"interval_ms":0}`)
				task := taskOf(t, e.svc, job.ID)
				if c.prepare != nil {
					c.prepare(e, "default", task)
				}
				id, err := e.svc.ActOnTask(context.Background(), "default", task, c.action)
				if !errors.Is(err, c.err) || (err == nil && id != job.ID) {
					t.Fatalf("got %q, %v; want %v", id, err, c.err)
				}
				j, err := e.svc.Get(context.Background(), job.ID)
				if err != nil {
					t.Fatal(err)
				}
				want := c.state
				if want == "" {
					want = StatePending
				}
				if j.State != want {
					t.Fatalf("job %s, want %s", j.State, want)
				}
				if c.reason != "" {
					e.checkEnd(job.ID, e.events(job.ID), c.state, c.reason)
				}
				info, err := e.svc.insp.GetTaskInfo("default", task)
				switch {
				case c.err == nil && c.asynq == 0:
					if !errors.Is(err, asynq.ErrTaskNotFound) {
						t.Fatalf("task after %s: %+v %v", c.action, info, err)
					}
				case c.err == nil && (err != nil || info.State != c.asynq):
					t.Fatalf("task after %s: %+v %v, want %v", c.action, info, err, c.asynq)
				}
			})
		})
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		if _, err := e.svc.ActOnTask(context.Background(), "default", "nope", TaskDelete); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown task: %v", err)
		}
		if err := e.svc.PauseQueue(context.Background(), "nope", true); !errors.Is(err, ErrNotFound) {
			t.Fatalf("unknown queue: %v", err)
		}
		// A job type's queue that never held a task can be paused and resumed.
		for _, paused := range []bool{true, true, false, false} {
			if err := e.svc.PauseQueue(context.Background(), "default", paused); err != nil {
				t.Fatalf("pause %v: %v", paused, err)
			}
		}
	})
}
