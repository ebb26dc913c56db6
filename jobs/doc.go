// Package jobs owns taskstream's job types and their life on the queue: the
// handler contract (Define), parameter validation, the Registry, enqueue,
// inspect and cancel on top of Asynq (Service), the worker that runs handlers
// (Worker), and the built-in job types (steps, primes, report).
//
// Every change of a job's state (submit, start, retry, hand back, finish,
// cancel, lost, reconcile) is made in one place, the lifecycle
// (lifecycle.go): it updates the job's record and publishes the matching
// event once, for the Service, the Worker and its reconciler alike.
//
// Progress and lifecycle events go to the job's group "job:ID" through the
// progress package; jobs knows nothing of HTTP.
package jobs
