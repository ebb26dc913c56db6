// Package jobs owns taskstream's job types and their life on the queue: the
// handler contract (Define), parameter validation, the Registry, enqueue,
// inspect and cancel on top of Asynq (Service), the worker that runs handlers
// and emits lifecycle events (Worker), and the built-in job types (steps,
// primes, report).
//
// Progress and lifecycle events go to the job's group "job:ID" through the
// progress package; jobs knows nothing of HTTP.
package jobs
