package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"taskstream/jobs"
	"taskstream/web/auth"
)

type jobTypeView struct {
	Type        string          `json:"type"`
	Description string          `json:"description"`
	Params      json.RawMessage `json:"params"`
	// What the submit options may be for this type (extension).
	Queues     []string `json:"queues"`     // allowed "queue" values, the default first
	Priorities []string `json:"priorities"` // allowed "priority" values
	Timeout    string   `json:"timeout"`    // the default "timeout"
	MaxTimeout string   `json:"max_timeout"`
	MaxRetry   int      `json:"max_retry"` // the default "max_retry"
	RetryLimit int      `json:"retry_limit"`
	// Unique is how long a job of the type stays unique ("" when not).
	Unique string `json:"unique,omitempty"`
}

func (s *Server) handleJobTypes(w http.ResponseWriter, r *http.Request) {
	types := s.jobs.Registry().Types()
	out := make([]jobTypeView, 0, len(types))
	for _, t := range types {
		v := jobTypeView{
			Type: t.Name, Description: t.Description, Params: t.Schema,
			Queues: t.Queues, Priorities: jobs.Priorities, Timeout: t.Timeout.String(), MaxTimeout: t.MaxTimeout.String(),
			MaxRetry: t.MaxRetry, RetryLimit: t.RetryLimit,
		}
		if t.Unique > 0 {
			v.Unique = t.Unique.String()
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, out)
}

// submitRequest is the body of POST /api/jobs: type, params and the
// options (queue, priority, timeout, max_retry, delay, run_at).
type submitRequest struct {
	Type     string          `json:"type"`
	Params   json.RawMessage `json:"params"`
	Queue    string          `json:"queue"`
	Priority string          `json:"priority"`
	Timeout  string          `json:"timeout"`
	MaxRetry *int            `json:"max_retry"`
	Delay    string          `json:"delay"`
	RunAt    string          `json:"run_at"`
}

// idempotencyHeader carries a submit's idempotency key.
const idempotencyHeader = "Idempotency-Key"

// The submit's admission check (handleSubmit's) has its scripts made
// while the package initializes, not at the first submit: they are then
// in progress's registry when the process loads its scripts at start.
func init() { jobs.PrepareAdmission(auth.LimitLua, auth.LimitKeys, auth.LimitArgs) }

func (s *Server) handleSubmit(w http.ResponseWriter, r *http.Request) {
	var req submitRequest
	if err := s.decodeBody(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Type == "" {
		s.writeError(w, r, apiErr(CodeBadRequest, `"type" is required`))
		return
	}
	who, err := s.materialize(r.Context(), principalOf(r)) // a job is state: store the guest
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	// The per-user submit limit is the submit's admission check: off a
	// Redis Cluster it runs in the step that records the job (one round
	// trip less), and a refused submit writes nothing.
	limitKeys, limitArgs := s.auth.LimitStep("jobs:"+who.User.ID, s.cfg.JobRate, s.cfg.JobBurst)
	job, replayed, err := s.jobs.SubmitRequest(r.Context(), who.User.ID, jobs.Request{
		Type: req.Type, Params: req.Params, IdempotencyKey: r.Header.Get(idempotencyHeader),
		Options: jobs.Options{Queue: req.Queue, Priority: req.Priority, Timeout: req.Timeout, MaxRetry: req.MaxRetry, Delay: req.Delay, RunAt: req.RunAt},
		Admit:   &jobs.Admission{Lua: auth.LimitLua, Keys: limitKeys, Args: limitArgs},
		// Only a guest's jobs ever move (to the account it signs in to).
		OwnerKept: !who.User.Guest,
	})
	var refused *jobs.RefusedError
	if errors.As(err, &refused) {
		s.writeError(w, r, rateLimited(time.Duration(refused.Reply)*time.Millisecond, jobRateMessage))
		return
	}
	if err != nil {
		s.writeError(w, r, jobError(err))
		return
	}
	w.Header().Set("Location", "/api/jobs/"+job.ID)
	if replayed {
		// The job an earlier request with the same Idempotency-Key made.
		w.Header().Set("Idempotent-Replayed", "true")
		writeJSON(w, http.StatusOK, s.jobView(job))
		return
	}
	writeJSON(w, http.StatusAccepted, s.jobView(job))
}

// jobRateMessage is the message of a submit refused by the per-user
// limit (Config.JobRate, Config.JobBurst).
const jobRateMessage = "too many jobs submitted; wait a moment"

// handleListJobs answers GET /api/jobs?state=&type=&before=&limit=: a
// page of the caller's jobs, newest first, and the cursor of the next
// page ("next", absent on the last page).
func (s *Server) handleListJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	lq := jobs.ListQuery{Limit: 50, State: q.Get("state"), Type: q.Get("type"), Before: q.Get("before")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			s.writeError(w, r, apiErr(CodeBadRequest, "limit must be an integer from 1 to 500"))
			return
		}
		lq.Limit = n
	}
	if lq.State != "" && !validState(lq.State) {
		s.writeError(w, r, apiErr(CodeBadRequest, "state must be one of pending, active, retry, completed, failed, canceled"))
		return
	}
	if lq.Type != "" {
		if _, ok := s.jobs.Registry().Lookup(lq.Type); !ok {
			s.writeError(w, r, apiErr(CodeBadRequest, fmt.Sprintf("type %q is not a job type (see GET /api/job-types)", lq.Type)))
			return
		}
	}
	page, err := s.jobs.ListPage(r.Context(), principalOf(r).User.ID, lq)
	if err != nil {
		s.writeError(w, r, jobError(err))
		return
	}
	views := make([]jobView, 0, len(page.Jobs))
	for _, j := range page.Jobs {
		views = append(views, s.jobView(j))
	}
	out := jobList{Jobs: views, Next: page.Next}
	writeJSON(w, http.StatusOK, out)
}

// jobList is the answer of GET /api/jobs.
type jobList struct {
	Jobs []jobView `json:"jobs"`
	Next string    `json:"next,omitempty"`
}

func validState(state string) bool {
	switch state {
	case jobs.StatePending, jobs.StateActive, jobs.StateRetry, jobs.StateCompleted, jobs.StateFailed, jobs.StateCanceled:
		return true
	}
	return false
}

// ownedJob returns the job in the URL when the caller owns it: 404 for an
// unknown id, 403 for someone else's job.
func (s *Server) ownedJob(r *http.Request) (*jobs.Job, error) {
	job, err := s.jobs.Get(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return nil, jobError(err)
	}
	if job.Owner != principalOf(r).User.ID {
		return nil, errNotYourJob
	}
	return job, nil
}

// checkOwner is ownedJob without building the snapshot, for routes that
// build their own.
func (s *Server) checkOwner(r *http.Request) error {
	return s.checkJobOwner(r.Context(), chi.URLParam(r, "id"), principalOf(r).User.ID)
}

// checkJobOwner checks that user owns job id: 404 for an unknown id, 403
// for someone else's job. The owner of a job this replica submitted for a
// signed-in user is known without Redis (jobs.Service.IsOwner).
func (s *Server) checkJobOwner(ctx context.Context, id, user string) error {
	ok, err := s.jobs.IsOwner(ctx, id, user)
	if err != nil {
		return jobError(err)
	}
	if !ok {
		return errNotYourJob
	}
	return nil
}

var errNotYourJob = apiErr(CodeForbidden, "this job belongs to someone else")

func (s *Server) handleGetJob(w http.ResponseWriter, r *http.Request) {
	job, err := s.ownedJob(r)
	if err != nil {
		s.writeError(w, r, jobError(err))
		return
	}
	writeJSON(w, http.StatusOK, s.jobView(job))
}

func (s *Server) handleCancel(w http.ResponseWriter, r *http.Request) {
	if err := s.checkOwner(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	job, err := s.jobs.Cancel(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		s.writeError(w, r, jobError(err))
		return
	}
	writeJSON(w, http.StatusAccepted, s.jobView(job))
}

func (s *Server) handleArtifact(w http.ResponseWriter, r *http.Request) {
	job, err := s.ownedJob(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	path, ok := s.jobs.ArtifactPath(job)
	if !ok {
		s.writeError(w, r, apiErr(CodeNotFound, "jobs of type "+job.Type+" have no artifact"))
		return
	}
	if job.State != jobs.StateCompleted {
		s.writeError(w, r, apiErr(CodeNotFound, "the artifact exists once the job has completed; it is "+job.State))
		return
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		s.writeError(w, r, apiErr(CodeNotFound, "the artifact is no longer stored"))
		return
	}
	if err != nil {
		s.writeError(w, r, fmt.Errorf("open artifact: %w", err))
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		s.writeError(w, r, fmt.Errorf("stat artifact: %w", err))
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="`+job.Type+"-"+job.ID+`.csv"`)
	http.ServeContent(w, r, "", st.ModTime(), f)
}

// jobView is the protocol's job object, plus links the page uses.
type jobView struct {
	*jobs.Job
	Artifact string `json:"artifact,omitempty"`
	// ArtifactSize is the artifact's size in bytes, with Artifact; absent
	// when the file is no longer stored.
	ArtifactSize *int64 `json:"artifact_size,omitempty"`
}

func (s *Server) jobView(j *jobs.Job) jobView {
	v := jobView{Job: j}
	if j.HasArtifact && j.State == jobs.StateCompleted {
		v.Artifact = "/api/jobs/" + j.ID + "/artifact"
		if path, ok := s.jobs.ArtifactPath(j); ok {
			if st, err := os.Stat(path); err == nil {
				size := st.Size()
				v.ArtifactSize = &size
			}
		}
	}
	return v
}

// jobError maps jobs' errors onto protocol codes.
func jobError(err error) error {
	var pe *jobs.ParamError
	var oe *jobs.OptionError
	var je *jobs.JobError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pe):
		field := "params"
		if pe.Field != "" {
			field += "." + pe.Field
		}
		return &APIError{Code: CodeBadRequest, Message: pe.Error(), Field: field}
	case errors.As(err, &oe):
		return &APIError{Code: CodeBadRequest, Message: oe.Error(), Field: oe.Field}
	case errors.As(err, &je) && errors.Is(err, jobs.ErrDuplicate):
		return &APIError{Code: CodeConflict, Job: je.Job,
			Message: "a job of this type with the same params is not finished yet: job " + je.Job}
	case errors.As(err, &je) && errors.Is(err, jobs.ErrKeyReused):
		return &APIError{Code: CodeIdempotencyKeyReused, Job: je.Job,
			Message: "this Idempotency-Key was used for a different request (job " + je.Job + "); use a new key for a new request"}
	case errors.As(err, &je) && errors.Is(err, jobs.ErrKeyInFlight):
		return &APIError{Code: CodeConflict, Job: je.Job, RetryAfter: 1,
			Message: "a request with this Idempotency-Key is still being handled (job " + je.Job + "); retry shortly"}
	case errors.Is(err, jobs.ErrUnknownType):
		return &APIError{Code: CodeBadRequest, Message: err.Error(), Field: "type"}
	case errors.Is(err, jobs.ErrNotFound):
		return apiErr(CodeNotFound, "no such job")
	case errors.Is(err, jobs.ErrBadCursor):
		return apiErr(CodeBadRequest, "before must be the next cursor of an earlier page")
	case errors.Is(err, jobs.ErrConflict):
		return apiErr(CodeConflict, "the job has already finished")
	}
	return err
}

// decodeBody reads a JSON request body into v: application/json only
// (415), at most MaxBodyBytes (413), one object with no unknown fields (400).
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}
	if aerr := decodeStrict(body, v); aerr != nil {
		return aerr
	}
	return nil
}

// readBody reads a JSON request body as it is: application/json only
// (415), at most MaxBodyBytes (413).
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil || mt != "application/json" {
		return nil, apiErr(CodeUnsupportedMedia, "send the body as application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, apiErr(CodeTooLarge, fmt.Sprintf("the body is larger than %d bytes", s.cfg.MaxBodyBytes))
	}
	if err != nil {
		return nil, apiErr(CodeBadRequest, "could not read the body")
	}
	return body, nil
}

// decodeStrict decodes one JSON value from body into v, refusing unknown
// fields and anything after the value (400).
func decodeStrict(body []byte, v any) *APIError {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		ae := apiErr(CodeBadRequest, "malformed JSON body: "+err.Error())
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			ae.Field = te.Field // a value of the wrong type: name its field
		}
		return ae
	}
	// Not dec.More(), which takes a stray "]" or "}" for the end.
	if len(bytes.TrimSpace(body[dec.InputOffset():])) > 0 {
		return apiErr(CodeBadRequest, "malformed JSON body: data after the object")
	}
	return nil
}
