package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

// IsOwner answers the owner of a job this replica submitted with
// OwnerKept without Redis, and every other question (another user, a
// job of a guest, one submitted elsewhere, an unknown id, a job that
// left the bounded memory) from the record: so it never lets the wrong
// user in, and a guest's job that moved to the account it signed in to,
// on another replica, belongs to the account at once and no longer to
// the guest.
func TestIsOwner(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		ctx := context.Background()
		reg, err := NewRegistry(Builtin()...)
		if err != nil {
			t.Fatal(err)
		}
		// Replicas of the api on the same Redis: a and b remember two
		// owners at most, c none.
		replica := func(cache int) (*Service, *roundTrips) {
			rdb := srv.Client(t)
			rt := &roundTrips{}
			rdb.AddHook(rt.hook())
			log := progress.NewLog(rdb, progress.LogConfig{})
			return NewService(rdb, reg, log, Config{ArtifactDir: t.TempDir(), OwnerCache: cache}), rt
		}
		a, aRT := replica(2)
		b, bRT := replica(2)
		c, cRT := replica(-1)
		submit := func(s *Service, owner string, kept bool) string {
			t.Helper()
			j, _, err := s.SubmitRequest(ctx, owner, Request{Type: "steps", Params: json.RawMessage(`{"steps":1}`), OwnerKept: kept})
			if err != nil {
				t.Fatal(err)
			}
			return j.ID
		}
		kept := submit(a, "acct", true)
		guests := submit(a, "guest", false)
		byC := submit(c, "acct", true)
		// b moves the guest's jobs to the account it signed in to.
		if n, err := b.Transfer(ctx, "guest", "acct2"); err != nil || n != 1 {
			t.Fatalf("transfer: %d %v", n, err)
		}
		check := func(name string, s *Service, rt *roundTrips, id, user string, want bool, wantErr error, wantRTs int64) {
			t.Helper()
			rt.n.Store(0)
			got, err := s.IsOwner(ctx, id, user)
			if got != want || !errors.Is(err, wantErr) {
				t.Errorf("%s: IsOwner %v %v, want %v %v", name, got, err, want, wantErr)
			}
			if n := rt.n.Load(); n != wantRTs {
				t.Errorf("%s: %d round trips, want %d", name, n, wantRTs)
			}
		}
		cases := []struct {
			name    string
			s       *Service
			rt      *roundTrips
			id      string
			user    string
			want    bool
			wantErr error
			rts     int64
		}{
			{"its owner, on the replica that submitted it", a, aRT, kept, "acct", true, nil, 0},
			{"another user", a, aRT, kept, "other", false, nil, 1},
			{"its owner, on another replica", b, bRT, kept, "acct", true, nil, 1},
			{"a guest's job, moved: the guest", a, aRT, guests, "guest", false, nil, 1},
			{"a guest's job, moved: the account", a, aRT, guests, "acct2", true, nil, 1},
			{"no such job", a, aRT, "0123456789abcdef01234567", "acct", false, ErrNotFound, 1},
			{"a replica that remembers none", c, cRT, byC, "acct", true, nil, 1},
		}
		for _, tc := range cases {
			check(tc.name, tc.s, tc.rt, tc.id, tc.user, tc.want, tc.wantErr, tc.rts)
		}
		// a remembers two: a third kept job pushes the first out.
		second, third := submit(a, "acct", true), submit(a, "acct", true)
		check("pushed out", a, aRT, kept, "acct", true, nil, 1)
		check("second", a, aRT, second, "acct", true, nil, 0)
		check("third", a, aRT, third, "acct", true, nil, 0)
	})
}

// The cache answers for Retention at most (a record lives at least that
// long after its creation) and never says no.
func TestOwnerCacheBounds(t *testing.T) {
	at := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	c := newOwnerCache(2, time.Hour)
	c.add("j1", "u1", at)
	c.add("j1", "u2", at) // an id is added once
	cases := []struct {
		name string
		id   string
		user string
		now  time.Time
		want bool
	}{
		{"the owner", "j1", "u1", at.Add(time.Hour - time.Nanosecond), true},
		{"after Retention", "j1", "u1", at.Add(time.Hour), false},
		{"another user", "j1", "u2", at, false},
		{"an unknown job", "j2", "u1", at, false},
	}
	for _, tc := range cases {
		if got := c.owns(tc.id, tc.user, tc.now); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if newOwnerCache(0, time.Hour) != nil || newOwnerCache(-1, time.Hour).owns("j1", "u1", at) {
		t.Fatal("a cache of no size remembers")
	}
}
