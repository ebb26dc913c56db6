package client_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"taskstream/client"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// The list's filters and the admin's queue and task actions: an admin
// pauses and unpauses a queue and deletes a scheduled job's waiting task
// (its job ends canceled); anyone else is refused with 403.
func TestListJobsAndAdminActions(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{})
		user := newClient(t, s, client.Config{})
		admin := newClient(t, s, client.Config{Token: adminToken})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()

		err := user.PauseQueue(ctx, "default", true)
		wantError(t, "a guest pausing a queue", err, http.StatusForbidden, wire.CodeForbidden)
		for _, paused := range []bool{true, false} {
			if err := admin.PauseQueue(ctx, "default", paused); err != nil {
				t.Fatalf("PauseQueue(default, %v): %v", paused, err)
			}
		}

		job, err := user.Submit(ctx, client.SubmitRequest{Type: "steps", Params: map[string]any{"steps": 1}, Delay: time.Hour})
		if err != nil || job.State != wire.StateScheduled {
			t.Fatalf("a scheduled job: %+v %v", job, err)
		}
		_, err = user.ActOnTask(ctx, "default", job.ID, client.TaskDelete)
		wantError(t, "a guest deleting a task", err, http.StatusForbidden, wire.CodeForbidden)
		res, err := admin.ActOnTask(ctx, "default", job.ID, client.TaskDelete)
		if err != nil || res.Action != client.TaskDelete || res.Job != job.ID {
			t.Fatalf("ActOnTask delete: %+v %v", res, err)
		}
		if got, err := user.Job(ctx, job.ID); err != nil || got.State != wire.StateCanceled {
			t.Fatalf("the deleted task's job: %+v %v, want canceled", got, err)
		}
		if _, err := admin.ActOnTask(ctx, "default", job.ID, "explode"); err == nil {
			t.Fatal("an unknown action was sent")
		}

		for _, tc := range []struct {
			name string
			q    client.JobsQuery
			want int
		}{
			{"all", client.JobsQuery{}, 1},
			{"by state", client.JobsQuery{State: wire.StateCanceled}, 1},
			{"by another type", client.JobsQuery{Type: "primes"}, 0},
		} {
			page, err := user.ListJobs(ctx, tc.q)
			if err != nil || len(page.Jobs) != tc.want || page.Next != "" {
				t.Errorf("ListJobs %s: %+v %v, want %d jobs and no next page", tc.name, page, err, tc.want)
			}
		}
		_, err = user.ListJobs(ctx, client.JobsQuery{State: "nope"})
		wantError(t, "an unknown state", err, http.StatusBadRequest, wire.CodeBadRequest)
	})
}
