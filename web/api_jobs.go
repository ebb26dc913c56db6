package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"strconv"

	"github.com/go-chi/chi/v5"

	"taskstream/jobs"
)

type jobTypeView struct {
	Type        string          `json:"type"`
	Description string          `json:"description"`
	Params      json.RawMessage `json:"params"`
}

func (s *Server) handleJobTypes(w http.ResponseWriter, r *http.Request) {
	types := s.jobs.Registry().Types()
	out := make([]jobTypeView, 0, len(types))
	for _, t := range types {
		out = append(out, jobTypeView{Type: t.Name, Description: t.Description, Params: t.Schema})
	}
	writeJSON(w, http.StatusOK, out)
}

type submitRequest struct {
	Type   string          `json:"type"`
	Params json.RawMessage `json:"params"`
}

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
	if err := s.limit(r.Context(), "jobs:"+who.User.ID, s.cfg.JobRate, s.cfg.JobBurst, "too many jobs submitted; wait a moment"); err != nil {
		s.writeError(w, r, err)
		return
	}
	job, err := s.jobs.Submit(r.Context(), who.User.ID, req.Type, req.Params)
	if err != nil {
		s.writeError(w, r, jobError(err))
		return
	}
	w.Header().Set("Location", "/api/jobs/"+job.ID)
	writeJSON(w, http.StatusAccepted, s.jobView(job))
}

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
	owner, err := s.jobs.Owner(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return jobError(err)
	}
	if owner != principalOf(r).User.ID {
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
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pe):
		return apiErr(CodeBadRequest, pe.Error())
	case errors.Is(err, jobs.ErrUnknownType):
		return apiErr(CodeBadRequest, err.Error())
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
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil || mt != "application/json" {
		return apiErr(CodeUnsupportedMedia, "send the body as application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return apiErr(CodeTooLarge, fmt.Sprintf("the body is larger than %d bytes", s.cfg.MaxBodyBytes))
	}
	if err != nil {
		return apiErr(CodeBadRequest, "could not read the body")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apiErr(CodeBadRequest, "malformed JSON body: "+err.Error())
	}
	if dec.More() {
		return apiErr(CodeBadRequest, "malformed JSON body: data after the object")
	}
	return nil
}
