package dashboard

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/hibiken/asynq"

	"taskstream/jobs"
)

// Snapshot is the whole system as the publisher saw it at At: the data of
// a "stats" event on the dashboard group (docs/protocol.md).
type Snapshot struct {
	At time.Time `json:"at"`
	// IntervalMS is the publisher's period: the charts' resolution, and
	// how soon the next snapshot comes.
	IntervalMS int64 `json:"interval_ms"`
	// Publisher is the id of the process that published it.
	Publisher string    `json:"publisher"`
	Queues    []Queue   `json:"queues"`
	Workers   []Worker  `json:"workers"`
	Processes []Process `json:"processes"`
	Failures  []Failure `json:"failures"`
	// Rates are the latest chart point: jobs finished per second by
	// outcome, events delivered per second, open sockets.
	Rates  Rates  `json:"rates"`
	Series Series `json:"series"`
	// Problems lists the parts that could not be read this time (the
	// rest of the snapshot is still good).
	Problems []string `json:"problems,omitempty"`
}

// Queue is one Asynq queue's state.
type Queue struct {
	Name      string `json:"name"`
	Pending   int    `json:"pending"`
	Active    int    `json:"active"`
	Scheduled int    `json:"scheduled"`
	Retry     int    `json:"retry"`
	Archived  int    `json:"archived"`
	Completed int    `json:"completed"`
	// LatencyMS is how long the oldest pending task has waited.
	LatencyMS int64 `json:"latency_ms"`
	Paused    bool  `json:"paused"`
	// Weights are the priorities the running workers give the queue
	// (WORKER_QUEUES), each distinct value once, highest first; empty
	// when no running worker serves it.
	Weights []int `json:"weights"`
}

// Worker is one running Asynq server (a worker process, or the api's
// in-process worker).
type Worker struct {
	ID          string    `json:"id"`
	Host        string    `json:"host"`
	PID         int       `json:"pid"`
	Concurrency int       `json:"concurrency"`
	Busy        int       `json:"busy"` // slots running a job now
	Started     time.Time `json:"started"`
	Status      string    `json:"status"` // asynq's: active, stopped, …
	// Queues maps the queues it serves to their weights; with
	// StrictPriority a higher one is always emptied first.
	Queues         map[string]int `json:"queues"`
	StrictPriority bool           `json:"strict_priority"`
	Jobs           []RunningJob   `json:"jobs"`
}

// RunningJob is a job a worker runs now.
type RunningJob struct {
	Job     string    `json:"job"`  // taskstream's job id
	Task    string    `json:"task"` // Asynq's task id (ID, or ID.N after a lost worker)
	Type    string    `json:"type"`
	Queue   string    `json:"queue"`
	Started time.Time `json:"started"`
}

// Failure is a task whose last run failed: waiting for a retry, or
// archived (its job failed).
type Failure struct {
	Job      string    `json:"job"`
	Task     string    `json:"task"`
	Type     string    `json:"type"`
	Queue    string    `json:"queue"`
	State    string    `json:"state"` // retry or archived
	Error    string    `json:"error"`
	FailedAt time.Time `json:"failed_at"`
	Retried  int       `json:"retried"`
	MaxRetry int       `json:"max_retry"`
	// NextRetry is when a retry task runs next.
	NextRetry *time.Time `json:"next_retry,omitempty"`
}

// Rates are one chart point's figures.
type Rates struct {
	// Finished is jobs finished per second, by outcome.
	Finished map[string]float64 `json:"finished"`
	// Delivered is events delivered per second over all api processes.
	Delivered float64 `json:"delivered"`
	// Sockets is open connections over all api processes.
	Sockets int `json:"sockets"`
}

// collect reads everything but the series: queues, workers, failures and
// the processes' reports. A part that fails is named in Problems.
func (db *Dashboard) collect(ctx context.Context) *Snapshot {
	s := &Snapshot{At: time.Now().UTC(), IntervalMS: db.cfg.Interval.Milliseconds(), Publisher: db.self.ID,
		Queues: []Queue{}, Workers: []Worker{}, Processes: []Process{}, Failures: []Failure{}}
	servers, err := db.insp.Servers()
	if err != nil {
		s.Problems = append(s.Problems, fmt.Sprintf("workers: %v", err))
	}
	weights := map[string][]int{}
	for _, sv := range servers {
		w := Worker{ID: sv.ID, Host: sv.Host, PID: sv.PID, Concurrency: sv.Concurrency, Busy: len(sv.ActiveWorkers),
			Started: sv.Started.UTC(), Status: sv.Status, Queues: sv.Queues, StrictPriority: sv.StrictPriority, Jobs: []RunningJob{}}
		for q, n := range sv.Queues {
			if !slices.Contains(weights[q], n) {
				weights[q] = append(weights[q], n)
			}
		}
		for _, a := range sv.ActiveWorkers {
			w.Jobs = append(w.Jobs, RunningJob{Job: jobs.JobOfTask(a.TaskID), Task: a.TaskID, Type: a.TaskType, Queue: a.Queue, Started: a.Started.UTC()})
		}
		sort.Slice(w.Jobs, func(i, j int) bool { return w.Jobs[i].Started.Before(w.Jobs[j].Started) })
		s.Workers = append(s.Workers, w)
	}
	sort.Slice(s.Workers, func(i, j int) bool {
		a, b := s.Workers[i], s.Workers[j]
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		if a.PID != b.PID {
			return a.PID < b.PID
		}
		return a.ID < b.ID
	})

	known, err := db.insp.Queues()
	if err != nil {
		s.Problems = append(s.Problems, fmt.Sprintf("queues: %v", err))
	}
	names := slices.Clone(known)
	for _, q := range db.cfg.Queues {
		if !slices.Contains(names, q) {
			names = append(names, q)
		}
	}
	for q := range weights {
		if !slices.Contains(names, q) {
			names = append(names, q)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		q := Queue{Name: name, Weights: weights[name]}
		if q.Weights == nil {
			q.Weights = []int{}
		}
		sort.Sort(sort.Reverse(sort.IntSlice(q.Weights)))
		if !slices.Contains(known, name) {
			// Never held a task: all zeros (Asynq's GetQueueInfo would
			// answer a plain NOT_FOUND error).
			s.Queues = append(s.Queues, q)
			continue
		}
		info, err := db.insp.GetQueueInfo(name)
		switch {
		case errors.Is(err, asynq.ErrQueueNotFound):
		case err != nil:
			s.Problems = append(s.Problems, fmt.Sprintf("queue %s: %v", name, err))
		default:
			q.Pending, q.Active, q.Scheduled, q.Retry, q.Archived, q.Completed = info.Pending, info.Active, info.Scheduled, info.Retry, info.Archived, info.Completed
			q.LatencyMS, q.Paused = info.Latency.Milliseconds(), info.Paused
			s.Failures = append(s.Failures, db.failures(name, info, &s.Problems)...)
		}
		s.Queues = append(s.Queues, q)
	}
	sort.SliceStable(s.Failures, func(i, j int) bool { return s.Failures[i].FailedAt.After(s.Failures[j].FailedAt) })
	if len(s.Failures) > db.cfg.Failures {
		s.Failures = s.Failures[:db.cfg.Failures]
	}

	procs, err := db.processes(ctx)
	if err != nil {
		s.Problems = append(s.Problems, err.Error())
	}
	if procs != nil {
		s.Processes = procs
	}
	return s
}

// failures reads queue's newest failed tasks: up to Config.Failures of
// its retry tasks and of its archived tasks (Asynq lists the archive
// oldest first: its last pages are read).
func (db *Dashboard) failures(queue string, info *asynq.QueueInfo, problems *[]string) []Failure {
	n := db.cfg.Failures
	var tasks []*asynq.TaskInfo
	if info.Retry > 0 {
		ts, err := db.insp.ListRetryTasks(queue, asynq.PageSize(n))
		if err != nil {
			*problems = append(*problems, fmt.Sprintf("retry tasks of %s: %v", queue, err))
		}
		tasks = append(tasks, ts...)
	}
	if info.Archived > 0 {
		last := (info.Archived + n - 1) / n
		for page := max(last-1, 1); page <= last; page++ {
			ts, err := db.insp.ListArchivedTasks(queue, asynq.PageSize(n), asynq.Page(page))
			if err != nil {
				*problems = append(*problems, fmt.Sprintf("archived tasks of %s: %v", queue, err))
				break
			}
			tasks = append(tasks, ts...)
		}
	}
	out := make([]Failure, 0, len(tasks))
	for _, t := range tasks {
		f := Failure{Job: jobs.JobOfTask(t.ID), Task: t.ID, Type: t.Type, Queue: queue, State: t.State.String(),
			Error: t.LastErr, FailedAt: t.LastFailedAt.UTC(), Retried: t.Retried, MaxRetry: t.MaxRetry}
		if t.State == asynq.TaskStateRetry && !t.NextProcessAt.IsZero() {
			next := t.NextProcessAt.UTC()
			f.NextRetry = &next
		}
		out = append(out, f)
	}
	return out
}
