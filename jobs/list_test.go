package jobs

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// pages lists owner's jobs with q, following Next, and returns each page's
// ids.
func pages(t *testing.T, svc *Service, owner string, q ListQuery) [][]string {
	t.Helper()
	var out [][]string
	for {
		p, err := svc.ListPage(context.Background(), owner, q)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, j := range p.Jobs {
			ids = append(ids, j.ID)
		}
		out = append(out, ids)
		if p.Next == "" {
			return out
		}
		if len(out) > 100 {
			t.Fatalf("no end: %v", out)
		}
		q.Before = p.Next
	}
}

// TestListPage pages through an owner's jobs, unfiltered and filtered,
// with jobs of equal creation time, and with a scan bound that cuts
// filtered pages short: every job once, newest first.
func TestListPage(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		ctx := context.Background()
		var all, canceled []string // newest first
		for i := range 12 {
			j, err := e.svc.Submit(ctx, "ann", "steps", []byte(`{"steps": 1}`))
			if err != nil {
				t.Fatal(err)
			}
			all = append([]string{j.ID}, all...)
			if i%4 == 1 {
				if _, err := e.svc.Cancel(ctx, j.ID); err != nil {
					t.Fatal(err)
				}
				canceled = append([]string{j.ID}, canceled...)
			}
		}
		// Three jobs created in the same microsecond (the middle one's): the
		// index orders them by id, and a cursor between them must not skip or
		// repeat one. The whole index, read at once, is the order pages keep.
		same := all[3:6]
		rdb := srv.Client(t)
		key := e.svc.store.indexKey("ann")
		score, err := rdb.ZScore(ctx, key, all[4]).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range same {
			if err := rdb.ZAdd(ctx, key, redis.Z{Score: score, Member: id}).Err(); err != nil {
				t.Fatal(err)
			}
		}
		order, err := rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: key, Start: 0, Stop: -1, Rev: true}).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(order) != len(all) {
			t.Fatalf("the index holds %d jobs, want %d", len(order), len(all))
		}

		for _, tc := range []struct {
			name string
			q    ListQuery
			want []string
			most int // the most jobs a page may hold
		}{
			{"one a page", ListQuery{Limit: 1}, order, 1},
			{"two a page", ListQuery{Limit: 2}, order, 2},
			{"all at once", ListQuery{Limit: 100}, order, 100},
			{"canceled", ListQuery{Limit: 2, State: StateCanceled}, canceled, 2},
			{"canceled, a scan of 3", ListQuery{Limit: 2, State: StateCanceled, Scan: 3}, canceled, 2},
			{"no such state", ListQuery{Limit: 5, State: StateFailed, Scan: 4}, nil, 0},
			{"type", ListQuery{Limit: 5, Type: "primes"}, nil, 0},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ps := pages(t, e.svc, "ann", tc.q)
				var got []string
				for _, p := range ps {
					if len(p) > tc.most {
						t.Errorf("a page of %d, limit %d", len(p), tc.most)
					}
					got = append(got, p...)
				}
				if tc.name == "canceled" || tc.name == "canceled, a scan of 3" {
					// The ties moved canceled jobs: compare as the index orders them.
					tc.want = slices.DeleteFunc(slices.Clone(order), func(id string) bool { return !slices.Contains(canceled, id) })
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("got %v, want %v (pages %v)", got, tc.want, ps)
				}
				if tc.q.Scan == 3 && len(ps) < 4 {
					t.Errorf("a scan of 3 over 12 jobs made %d pages, want it cut short", len(ps))
				}
			})
		}
		if p, err := e.svc.ListPage(ctx, "bob", ListQuery{}); err != nil || len(p.Jobs) != 0 || p.Next != "" {
			t.Errorf("another owner's list: %+v, %v", p, err)
		}
	})
}

func TestParseCursor(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"1733420000000000-abc", true},
		{"0-x", true},
		{"1-a-b", true}, // the id is everything after the first dash
		{"", false},
		{"-abc", false},
		{"12", false},
		{"12-", false},
		{"-1-abc", false},
		{"+1-abc", false},
		{"01-abc", false},
		{"x-abc", false},
		{"99999999999999999999-a", false},
	} {
		e, err := parseCursor(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("parseCursor(%q): %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if err != nil && !errors.Is(err, ErrBadCursor) {
			t.Errorf("parseCursor(%q): %v does not wrap ErrBadCursor", tc.in, err)
		}
		if err == nil && cursor(e) != tc.in {
			t.Errorf("cursor(parseCursor(%q)) = %q", tc.in, cursor(e))
		}
	}
}

// FuzzListCursor: a cursor comes from clients; whatever parses formats
// back to itself, and nothing panics.
func FuzzListCursor(f *testing.F) {
	for _, s := range []string{"1733420000000000-6f1c2a", "0-x", "-", "1-", "a-b", "1--"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := parseCursor(s)
		if err != nil {
			if !errors.Is(err, ErrBadCursor) {
				t.Fatalf("parseCursor(%q): %v", s, err)
			}
			return
		}
		if got := cursor(e); got != s {
			t.Fatalf("cursor(parseCursor(%q)) = %q", s, got)
		}
	})
}
