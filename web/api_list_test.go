package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// listIDs pages through GET /api/jobs with query q (limit included),
// following next, and returns the ids of every page.
func (e *testEnv) listIDs(t *testing.T, q url.Values) [][]string {
	t.Helper()
	var pages [][]string
	for {
		status, body, _ := e.do("GET", "/api/jobs?"+q.Encode(), nil)
		if status != http.StatusOK {
			t.Fatalf("GET /api/jobs?%s: %d %v", q.Encode(), status, body)
		}
		var page []string
		for _, j := range body["jobs"].([]any) {
			page = append(page, j.(map[string]any)["id"].(string))
		}
		pages = append(pages, page)
		next, _ := body["next"].(string)
		if next == "" {
			return pages
		}
		if len(pages) > 50 {
			t.Fatalf("more than 50 pages: %v", pages)
		}
		q.Set("before", next)
	}
}

// TestListJobsPages pages through a user's jobs with and without filters:
// every job once, newest first, no page over the limit, next absent on
// the last page.
func TestListJobsPages(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		owner := e.me(e.client)
		var all, canceled, primes []string // newest first
		for i := range 9 {
			typ, params := "steps", `{"steps": 3}`
			if i%3 == 0 {
				typ, params = "primes", `{"n": 100}`
			}
			job, err := e.jobs.Submit(t.Context(), owner, typ, []byte(params))
			if err != nil {
				t.Fatal(err)
			}
			all = append([]string{job.ID}, all...)
			if typ == "primes" {
				primes = append([]string{job.ID}, primes...)
			}
			if i%2 == 0 {
				if _, err := e.jobs.Cancel(t.Context(), job.ID); err != nil {
					t.Fatal(err)
				}
				canceled = append([]string{job.ID}, canceled...)
			}
		}
		// Someone else's jobs never show.
		other := e.newBrowser()
		e.doAs(other, "POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]int{"steps": 1}})

		for _, tc := range []struct {
			name  string
			query url.Values
			want  []string
		}{
			{"all, 4 a page", url.Values{"limit": {"4"}}, all},
			{"all, 9 a page", url.Values{"limit": {"9"}}, all},
			{"all, 1 a page", url.Values{"limit": {"1"}}, all},
			{"canceled", url.Values{"limit": {"2"}, "state": {"canceled"}}, canceled},
			{"pending", url.Values{"limit": {"50"}, "state": {"pending"}}, without(all, canceled)},
			{"primes", url.Values{"limit": {"2"}, "type": {"primes"}}, primes},
			{"canceled primes", url.Values{"limit": {"5"}, "type": {"primes"}, "state": {"canceled"}}, intersect(primes, canceled)},
			{"none", url.Values{"state": {"failed"}}, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				limit := 50
				if v := tc.query.Get("limit"); v != "" {
					fmt.Sscan(v, &limit)
				}
				pages := e.listIDs(t, tc.query)
				var got []string
				for i, p := range pages {
					if len(p) > limit {
						t.Errorf("page %d has %d jobs, limit %d", i, len(p), limit)
					}
					got = append(got, p...)
				}
				if strings.Join(got, ",") != strings.Join(tc.want, ",") {
					t.Errorf("ids %v, want %v (pages %v)", got, tc.want, pages)
				}
			})
		}
	})
}

func without(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestListJobsBadQuery: every malformed query is a typed 400 naming the
// parameter.
func TestListJobsBadQuery(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker())
	for _, tc := range []struct{ query, mention string }{
		{"limit=0", "limit"},
		{"limit=501", "limit"},
		{"limit=x", "limit"},
		{"state=done", "state"},
		{"state=PENDING", "state"},
		{"type=nope", "type"},
		{"before=x", "before"},
		{"before=12", "before"},
		{"before=-1-abc", "before"},
		{"before=abc-def", "before"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			res := e.doRaw("GET", "/api/jobs?"+tc.query, nil)
			wantAPIError(t, res, http.StatusBadRequest, CodeBadRequest)
			if !strings.Contains(string(res.body), tc.mention) {
				t.Errorf("the error %s does not name %s", res.body, tc.mention)
			}
		})
	}
}

// TestSubmittedEventOnUserGroup: a job submitted by any client of a user
// is announced on that user's group, with the job object, and on no one
// else's.
func TestSubmittedEventOnUserGroup(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		me := e.me(e.client)
		c := e.dial()
		c.send(map[string]any{"op": "subscribe", "group": wire.UserGroup(me).String()})
		if f := c.read(); f.Type != wire.TypeSubscribed {
			t.Fatalf("got %+v", f)
		}
		other := e.newBrowser()
		otherID := e.me(other)
		d := e.dialAs(other)
		d.send(map[string]any{"op": "subscribe", "group": wire.UserGroup(otherID).String()})
		if f := d.read(); f.Type != wire.TypeSubscribed {
			t.Fatalf("got %+v", f)
		}
		id := e.submit("steps", map[string]any{"steps": 3})
		f := c.read()
		if f.Type != wire.TypeEvent || f.Event != wire.EventSubmitted {
			t.Fatalf("got %+v, want a submitted event", f)
		}
		var job map[string]any
		if err := json.Unmarshal(f.Data, &job); err != nil {
			t.Fatal(err)
		}
		checkJobObject(t, job, id, "steps")
		if job["state"] != "pending" || job["owner"] != me {
			t.Errorf("submitted job %v", job)
		}
		// The other user's first event is their own job, not this one.
		_, theirs, _ := e.doAs(other, "POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]int{"steps": 1}})
		if f := d.read(); f.Event != wire.EventSubmitted || !strings.Contains(string(f.Data), `"id":"`+theirs["id"].(string)+`"`) {
			t.Errorf("another user's socket got %+v %s, want only their own job", f, f.Data)
		}
	})
}
