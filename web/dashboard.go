package web

import (
	"embed"
	"errors"
	"html/template"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"taskstream/jobs"
	"taskstream/web/auth"
	"taskstream/wire"
)

// The dashboard page and the operator actions behind it. The page's data
// comes from package web/dashboard over the socket (the "dashboard"
// group); this file serves the page, decides who is an admin, and turns
// the admin routes into jobs' operator actions, which keep the jobs'
// records and events in line with Asynq.

//go:embed templates/dashboard.html
var templates embed.FS

var dashboardPage = template.Must(template.ParseFS(templates, "templates/dashboard.html"))

// dashboardView is what the page's template gets.
type dashboardView struct {
	SignIn bool   // the caller is a guest: the page says to sign in
	Name   string // the signed-in user's name
	Admin  bool   // the page offers the operator actions
	// After and Epoch are the dashboard group's position just before its
	// latest snapshot: the page subscribes from there, so it gets that
	// snapshot and then the live ones, not the retained history.
	After int64
	Epoch string
}

// isAdmin reports whether who may act on the queues: an admin token, or a
// signed-in user whose email is in Config.AdminEmails.
func (s *Server) isAdmin(who auth.Principal) bool {
	if who.Admin {
		return true
	}
	if who.User.Guest || who.User.Email == "" {
		return false
	}
	for _, e := range s.cfg.AdminEmails {
		if strings.EqualFold(strings.TrimSpace(e), who.User.Email) {
			return true
		}
	}
	return false
}

// handleDashboardPage serves GET /dashboard: the live page for signed-in
// users (actions for admins). A guest is refused with 403: a browser
// (Accept: text/html) gets a page that says to sign in, a program the
// protocol's JSON error.
func (s *Server) handleDashboardPage(w http.ResponseWriter, r *http.Request) {
	who := principalOf(r)
	w.Header().Set("Cache-Control", "no-store")
	if who.User.Guest {
		if !accepts(r, "text/html") {
			s.writeError(w, r, apiErr(CodeForbidden, "sign in to see the dashboard"))
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusForbidden)
		_ = dashboardPage.Execute(w, dashboardView{SignIn: true})
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	tail, err := s.log.Tail(r.Context(), wire.DashboardGroup().String(), 1)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	v := dashboardView{Name: who.User.Name, Admin: s.isAdmin(who), Epoch: tail.Epoch, After: max(tail.LastSeq-1, 0)}
	if err := dashboardPage.Execute(w, v); err != nil {
		s.logger.Warn("rendering the dashboard page failed", "err", err)
	}
}

// requireAdmin answers 403 unless the caller is an admin.
func (s *Server) requireAdmin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who := principalOf(r)
		switch {
		case who.User.Guest:
			s.writeError(w, r, apiErr(CodeForbidden, "sign in as an admin to act on the queues"))
		case !s.isAdmin(who):
			s.writeError(w, r, apiErr(CodeForbidden, "only admins (ADMIN_EMAILS, or an admin token) may act on the queues"))
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// adminRoutes are the operator actions, under /api/admin.
func (s *Server) adminRoutes(r chi.Router) {
	r.Use(s.requireAdmin)
	r.Post("/queues/{queue}/pause", s.handlePauseQueue(true))
	r.Post("/queues/{queue}/unpause", s.handlePauseQueue(false))
	r.Post("/queues/{queue}/tasks/{task}/retry", s.handleTaskAction(jobs.TaskRun))
	r.Post("/queues/{queue}/tasks/{task}/archive", s.handleTaskAction(jobs.TaskArchive))
	r.Delete("/queues/{queue}/tasks/{task}", s.handleTaskAction(jobs.TaskDelete))
}

func (s *Server) handlePauseQueue(paused bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		queue := chi.URLParam(r, "queue")
		if err := s.jobs.PauseQueue(r.Context(), queue, paused); err != nil {
			s.writeError(w, r, operateError(err))
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"queue": queue, "paused": paused})
	}
}

// actionNames are the task actions as the routes and answers name them.
var actionNames = map[jobs.TaskAction]string{jobs.TaskRun: "retry", jobs.TaskArchive: "archive", jobs.TaskDelete: "delete"}

func (s *Server) handleTaskAction(action jobs.TaskAction) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		queue, task := chi.URLParam(r, "queue"), chi.URLParam(r, "task")
		job, err := s.jobs.ActOnTask(r.Context(), queue, task, action)
		if err != nil {
			s.writeError(w, r, operateError(err))
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"queue": queue, "task": task, "job": job, "action": actionNames[action]})
	}
}

// operateError maps jobs' operator-action errors onto protocol codes.
func operateError(err error) error {
	switch {
	case errors.Is(err, jobs.ErrNotFound):
		return apiErr(CodeNotFound, "no such queue or task (it may have moved on: reload)")
	case errors.Is(err, jobs.ErrTaskState):
		_, why, _ := strings.Cut(err.Error(), "action: ")
		return apiErr(CodeConflict, "not now: "+why)
	case errors.Is(err, jobs.ErrBadAction):
		return apiErr(CodeBadRequest, err.Error())
	}
	return err
}
