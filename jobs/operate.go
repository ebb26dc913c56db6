package jobs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hibiken/asynq"
)

// Operator actions on the queue (the dashboard's): pause and unpause a
// queue; run, archive or delete one task. They go through Asynq's
// Inspector, as asynq's own tools do, and then through the lifecycle's
// reconcile at once, so the job's record and events follow the action
// now rather than at the worker reconciler's next pass: a deleted task's
// job ends "canceled", an archived one's "failed", each with its reason,
// exactly once. A task run again from the archive reopens its failed job
// when a worker starts it (lifecycle.start), as with any Asynq tool.

// TaskAction is an operator action on one task.
type TaskAction string

// The task actions.
const (
	// TaskRun runs a scheduled, retry or archived task now (asynq's
	// "run"; the dashboard's "retry").
	TaskRun TaskAction = "run"
	// TaskArchive archives a pending, scheduled or retry task: its job
	// fails.
	TaskArchive TaskAction = "archive"
	// TaskDelete deletes a task that is not running: a job still open
	// ends canceled.
	TaskDelete TaskAction = "delete"
)

// actionFrom lists the Asynq states each action applies to.
var actionFrom = map[TaskAction][]asynq.TaskState{
	TaskRun:     {asynq.TaskStateScheduled, asynq.TaskStateRetry, asynq.TaskStateArchived},
	TaskArchive: {asynq.TaskStatePending, asynq.TaskStateScheduled, asynq.TaskStateRetry},
	TaskDelete: {asynq.TaskStatePending, asynq.TaskStateScheduled, asynq.TaskStateRetry,
		asynq.TaskStateArchived, asynq.TaskStateCompleted},
}

// ErrBadAction is returned for a task action that is not one of TaskRun,
// TaskArchive and TaskDelete.
var ErrBadAction = errors.New("jobs: unknown task action")

// ErrTaskState is returned when a task's state does not allow an action
// (deleting a running task, running a pending one, …).
var ErrTaskState = errors.New("jobs: the task's state does not allow this action")

// JobOfTask returns the id of the job an Asynq task id belongs to (a job's
// first task has the job's id, later ones "ID.N").
func JobOfTask(task string) string { return jobOfTask(task) }

// ActOnTask applies action to task in queue and brings the task's job in
// line with it. It returns the job id the task belongs to. Errors:
// ErrNotFound (no such queue or task), ErrTaskState (the task's state does
// not allow the action, e.g. deleting a running task: cancel its job
// instead), ErrBadAction, or an
// infrastructure error.
func (s *Service) ActOnTask(ctx context.Context, queue, task string, action TaskAction) (string, error) {
	from, ok := actionFrom[action]
	if !ok {
		return "", fmt.Errorf("%w %q", ErrBadAction, action)
	}
	info, err := s.insp.GetTaskInfo(queue, task)
	if err != nil {
		return "", taskErr(queue, task, err)
	}
	if !slices.Contains(from, info.State) {
		return "", fmt.Errorf("%w: task %s is %s; %s applies to %s tasks", ErrTaskState, task, info.State, action, statesText(from))
	}
	id := jobOfTask(task)
	if action == TaskRun {
		// A canceled job stays canceled: its worker would drop the task.
		rec, err := s.store.get(ctx, id)
		switch {
		case err == nil && (rec.Canceled || rec.Final == StateCanceled):
			return "", fmt.Errorf("%w: job %s was canceled; submit it again instead", ErrTaskState, id)
		case err != nil && !errors.Is(err, errNoRecord):
			return "", err
		}
	}
	switch action {
	case TaskRun:
		err = s.insp.RunTask(queue, task)
	case TaskArchive:
		err = s.insp.ArchiveTask(queue, task)
	case TaskDelete:
		err = s.insp.DeleteTask(queue, task)
	}
	if err != nil {
		return "", taskErr(queue, task, err)
	}
	if action != TaskRun {
		// Ends the job now when the task was its current one; anything
		// else (an older task, not a job of ours) leaves it as it is.
		// A failure here is settled by the worker's reconciler.
		if _, err := s.lc.reconcile(context.WithoutCancel(ctx), id); err != nil {
			s.cfg.Logger.Warn("reconciling a job after an operator action failed; the reconciler retries", "job", id, "action", action, "err", err)
		}
	}
	s.cfg.Logger.Info("operator action", "action", action, "queue", queue, "task", task, "job", id)
	return id, nil
}

func statesText(states []asynq.TaskState) string {
	out := ""
	for i, st := range states {
		if i > 0 {
			out += ", "
		}
		out += st.String()
	}
	return out
}

func taskErr(queue, task string, err error) error {
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return fmt.Errorf("%w: task %s in queue %s", ErrNotFound, task, queue)
	}
	return fmt.Errorf("jobs: task %s in queue %s: %w", task, queue, err)
}

// PauseQueue stops workers from taking tasks from queue (paused true) or
// lets them again (false). Pausing a paused queue, or resuming a running
// one, changes nothing and is no error. A queue that neither Asynq nor a
// job type knows is ErrNotFound.
func (s *Service) PauseQueue(ctx context.Context, queue string, paused bool) error {
	known, err := s.insp.Queues()
	if err != nil {
		return fmt.Errorf("jobs: list queues: %w", err)
	}
	if !slices.Contains(known, queue) && !slices.Contains(s.reg.Queues(), queue) {
		return fmt.Errorf("%w: queue %s", ErrNotFound, queue)
	}
	// A job type's queue that never held a task has no state to read
	// (Asynq answers a plain NOT_FOUND): Asynq pauses it all the same.
	if slices.Contains(known, queue) {
		info, err := s.insp.GetQueueInfo(queue)
		switch {
		case err != nil:
			return fmt.Errorf("jobs: read queue %s: %w", queue, err)
		case info.Paused == paused:
			return nil
		}
	}
	if paused {
		err = s.insp.PauseQueue(queue)
	} else {
		err = s.insp.UnpauseQueue(queue)
	}
	if err != nil && !slices.Contains(known, queue) && alreadySo(err, paused) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("jobs: pause queue %s (%v): %w", queue, paused, err)
	}
	s.cfg.Logger.Info("operator action", "action", map[bool]string{true: "pause", false: "unpause"}[paused], "queue", queue)
	return nil
}

// alreadySo reports whether err is Asynq's answer to pausing a paused
// queue (or resuming a running one). Asynq has no way to read the paused
// flag of a queue it holds no stats for (a job type's queue that never
// held a task), and its Pause and Unpause errors are untyped, so for such
// a queue the answer is recognized by its text (asynq v0.26: "queue %q is
// already paused", "queue %q is not paused"; TestActOnTask checks it).
func alreadySo(err error, paused bool) bool {
	if paused {
		return strings.HasSuffix(err.Error(), "is already paused")
	}
	return strings.HasSuffix(err.Error(), "is not paused")
}
