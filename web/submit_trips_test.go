package web

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
	"taskstream/web/auth"
)

// redisTrips records the round trips a Redis client makes (one per
// command sent alone, one per pipeline), each as the arguments of its
// commands.
type redisTrips struct {
	mu    sync.Mutex
	trips [][]string
}

// hook records h's round trips as a go-redis hook.
func (h *redisTrips) hook() redis.Hook {
	return progresstest.CommandHook(func(cmds []redis.Cmder) { h.record(cmds...) })
}

func (h *redisTrips) record(cmds ...redis.Cmder) {
	var args []string
	for _, c := range cmds {
		for _, a := range c.Args() {
			args = append(args, fmt.Sprint(a))
		}
	}
	h.mu.Lock()
	h.trips = append(h.trips, args)
	h.mu.Unlock()
}

// since returns the round trips recorded from mark on that name key.
func (h *redisTrips) since(mark int, key string) [][]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out [][]string
	for _, tr := range h.trips[mark:] {
		if slices.Contains(tr, key) {
			out = append(out, tr)
		}
	}
	return out
}

func (h *redisTrips) mark() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.trips)
}

// A submit's per-user limit takes no round trip of its own: it is in the
// one that records the job. A watcher's ownership check reads the job's
// record only when the replica does not know the answer: a signed-in
// user watching the job this replica submitted for them reads nothing;
// a guest's job (a guest's jobs move to the account it signs in to),
// another user and an unknown job are answered from the record, with
// today's refusals.
func TestSubmitAndWatchRoundTrips(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		h := &redisTrips{}
		e.rdb.(*redis.Client).AddHook(h.hook())
		admin := []string{"Authorization", adminBearer}
		body := map[string]any{"type": "steps", "params": map[string]int{"steps": 1}}
		submit := func(client *http.Client, header ...string) string {
			t.Helper()
			status, resp, _ := e.doAs(client, "POST", "/api/jobs", body, header...)
			if status != http.StatusAccepted {
				t.Fatalf("submit: %d %v", status, resp)
			}
			return resp["id"].(string)
		}
		submit(&http.Client{}, admin...) // Redis learns the scripts
		adminJob := submit(&http.Client{}, admin...)
		mark := h.mark()
		adminJob2 := submit(&http.Client{}, admin...)
		bucket := "ts:bucket:jobs:" + auth.AdminUserID
		limited := h.since(mark, bucket)
		if len(limited) != 1 || !slices.Contains(limited[0], "ts:job:"+adminJob2) {
			t.Fatalf("the submit's round trips on its limit: %v, want one, which records the job", limited)
		}
		guestJob := submit(e.client)

		watch := func(c *wsClient, id, wantCode string, wantReads int) {
			t.Helper()
			mark := h.mark()
			c.send(map[string]any{"op": "subscribe", "group": "job:" + id, "ref": id})
			f := c.readUntil(func(f frame) bool { return f.Type == "subscribed" || f.Type == "error" })
			last := f[len(f)-1]
			switch {
			case wantCode == "" && last.Type != "subscribed":
				t.Fatalf("watching %s: %+v, want subscribed", id, last)
			case wantCode != "" && (last.Type != "error" || last.Code != wantCode):
				t.Fatalf("watching %s: %+v, want error %s", id, last, wantCode)
			}
			if got := h.since(mark, "ts:job:"+id); len(got) != wantReads {
				t.Fatalf("watching %s: %d round trips on its record (%v), want %d", id, len(got), got, wantReads)
			}
		}
		adminSocket, guestSocket := e.dial(admin...), e.dial()
		cases := []struct {
			name  string
			c     *wsClient
			id    string
			code  string
			reads int
		}{
			{"a signed-in user's job, by them", adminSocket, adminJob, "", 0},
			{"a guest's job, by the guest", guestSocket, guestJob, "", 1},
			{"a signed-in user's job, by another", guestSocket, adminJob2, CodeForbidden, 1},
			{"a guest's job, by another", adminSocket, guestJob, CodeForbidden, 1},
			{"no such job", adminSocket, "0123456789abcdef01234567", CodeNotFound, 1},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) { watch(tc.c, tc.id, tc.code, tc.reads) })
		}
		// The REST routes that check ownership (cancel) answer the same.
		if status, resp, _ := e.doAs(&http.Client{}, "POST", "/api/jobs/"+adminJob2+"/cancel", nil, admin...); status != http.StatusAccepted {
			t.Fatalf("cancel by its owner: %d %v", status, resp)
		}
		if status, resp, _ := e.do("POST", "/api/jobs/"+adminJob+"/cancel", nil); status != http.StatusForbidden || errCode(resp) != CodeForbidden {
			t.Fatalf("cancel by another: %d %v", status, resp)
		}
	})
}

// A submit over the per-user limit is answered 429 with Retry-After as
// before the limit rode with the record (the wait until the bucket has
// room, in whole seconds up), in one round trip, and leaves nothing
// behind: no record, no event, no index entry, no task, not even a token
// taken from the bucket.
func TestJobSubmitRefusedLeavesNothing(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		const rate, burst = 0.01, 2 // a submit per 100 s
		e := newEnv(t, srv, withoutWorker(), withWebConfig(Config{JobRate: rate, JobBurst: burst}))
		h := &redisTrips{}
		e.rdb.(*redis.Client).AddHook(h.hook())
		body := map[string]any{"type": "steps", "params": map[string]int{"steps": 1}}
		start := time.Now()
		for i := range burst {
			if status, resp, _ := e.do("POST", "/api/jobs", body); status != http.StatusAccepted {
				t.Fatalf("job %d within the burst: %d %v", i, status, resp)
			}
		}
		keys := func() []string {
			k, err := e.rdb.Keys(context.Background(), "*").Result()
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(k)
			return k
		}
		bucket := "ts:bucket:jobs:" + e.me(e.client)
		for i := range 2 {
			before := keys()
			mark := h.mark()
			status, resp, header := e.do("POST", "/api/jobs", body)
			elapsed := time.Since(start)
			if status != http.StatusTooManyRequests || errCode(resp) != CodeRateLimited || !strings.Contains(fmt.Sprint(resp), jobRateMessage) {
				t.Fatalf("over the burst (%d): %d %v", i, status, resp)
			}
			// The bucket is full until start + burst/rate; the wait is
			// what is left of the next interval, in seconds rounded up.
			retry, err := strconv.Atoi(header.Get("Retry-After"))
			low := int(math.Ceil(1/rate - elapsed.Seconds()))
			if err != nil || retry < low || retry > int(1/rate) {
				t.Fatalf("Retry-After %q, want %d to %d", header.Get("Retry-After"), low, int(1/rate))
			}
			if trips := h.since(mark, bucket); len(trips) != 1 {
				t.Fatalf("the refused submit's round trips on its bucket: %v, want 1", trips)
			}
			if after := keys(); !slices.Equal(before, after) {
				t.Fatalf("the refused submit left keys: before %v, after %v", before, after)
			}
		}
		status, resp, _ := e.do("GET", "/api/jobs", nil)
		if jobsList, _ := resp["jobs"].([]any); status != http.StatusOK || len(jobsList) != burst {
			t.Fatalf("the user's jobs: %d %v, want the %d within the burst", status, resp, burst)
		}
	})
}
