package web

import (
	"net/http"
	"time"

	"taskstream/jobs"
)

// handleSchedules lists the periodic jobs of the schedule file
// (SCHEDULE_FILE): each entry's spec, type, params, options, next run and
// last submitted run. Any replica answers, leader or not. Signed-in users
// and admin tokens only, as the dashboard: guests have no use for it.
func (s *Server) handleSchedules(w http.ResponseWriter, r *http.Request) {
	if who := principalOf(r); who.User.Guest && !who.Admin {
		s.writeError(w, r, apiErr(CodeForbidden, "the schedules are for signed-in users"))
		return
	}
	list := []jobs.ScheduleView{}
	if s.sched != nil {
		var err error
		if list, err = s.sched.Entries(r.Context(), time.Now()); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"schedules": list})
}
