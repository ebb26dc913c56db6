package jobs

import "time"

// Observer is told of job lifecycle transitions, for metrics; jobs does
// not depend on a metrics library (web/metrics.Metrics implements it).
// Each call happens once per transition, in the process that made it (the
// API for submissions and cancels of queued jobs, the worker for starts
// and ends of runs, either for the reconciler's ends). Methods must be
// fast and must not block.
type Observer interface {
	// JobSubmitted is called when a job of type typ was recorded and
	// enqueued.
	JobSubmitted(typ string)
	// JobStarted is called when a job's first run starts, with how long
	// it waited since its submission.
	JobStarted(typ string, wait time.Duration)
	// JobFinished is called when a job reached its terminal state outcome
	// (completed, failed or canceled). ran reports whether the end came
	// from a run, whose run time took is; ends from outside a run (a
	// queued job canceled, the reconciler) have ran false.
	JobFinished(typ, outcome string, took time.Duration, ran bool)
}
