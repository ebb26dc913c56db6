package progress

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// newTestPresence returns a Presence on log whose own loop never ticks
// within a test (unless cfg says otherwise): the test flushes it, so the
// order of events is known. It is shut down when the test ends.
func newTestPresence(t *testing.T, srv *progresstest.Server, log *Log, cfg PresenceConfig) *Presence {
	t.Helper()
	if cfg.ListInterval == 0 {
		cfg.ListInterval = time.Hour
	}
	if cfg.TTL == 0 {
		cfg.TTL = time.Hour
	}
	cfg.Logger = testLogger(t)
	p := NewPresence(srv.Client(t), log, cfg)
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	return p
}

func mustFlush(t *testing.T, p *Presence) {
	t.Helper()
	if err := p.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// eventNames returns the names of group's events, in order, and the user
// ids of its joins and leaves as "join:ID".
func eventNames(t *testing.T, log *Log, group string) (names []string, diffs []string) {
	t.Helper()
	snap, err := log.Read(t.Context(), group, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range snap.Events {
		names = append(names, ev.Name)
		if ev.Name == wire.EventJoin || ev.Name == wire.EventLeave {
			var d struct{ User Member }
			if err := json.Unmarshal(ev.Data, &d); err != nil {
				t.Fatal(err)
			}
			diffs = append(diffs, ev.Name+":"+d.User.ID)
		}
	}
	return names, diffs
}

// Join and Leave racing a fast heartbeat: a left entry is never brought
// back by a heartbeat, whether its join had reached Redis or not.
func TestPresenceHeartbeatDoesNotResurrect(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		log := NewLog(srv.Client(t), LogConfig{})
		p := newTestPresence(t, srv, log, PresenceConfig{TTL: time.Minute, Heartbeat: time.Millisecond})
		ctx := t.Context()
		for i := range 100 {
			conn := fmt.Sprint("c", i)
			if err := p.Join(ctx, "chat:ghosts", Member{ID: "u1", Name: "ada"}, conn); err != nil {
				t.Fatal(err)
			}
			if i%2 == 0 {
				mustFlush(t, p) // the join reaches Redis before the leave
			}
			if err := p.Leave(ctx, "chat:ghosts", "u1", conn); err != nil {
				t.Fatal(err)
			}
			mustFlush(t, p)
			list, err := p.List(ctx, "chat:ghosts")
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 0 {
				t.Fatalf("round %d: %v present after leaving", i, list)
			}
		}
	})
}

// Two tabs count once; the user leaves with the last one; a rename
// reaches the list. The history holds the diffs only: no full list.
func TestPresenceCountsOnceAndRenames(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		log := NewLog(srv.Client(t), LogConfig{})
		p := newTestPresence(t, srv, log, PresenceConfig{})
		ctx := t.Context()
		const g = "chat:once"
		ada := Member{ID: "u1", Name: "ada"}
		for _, conn := range []string{"tab1", "tab2"} {
			if err := p.Join(ctx, g, ada, conn); err != nil {
				t.Fatal(err)
			}
		}
		if !p.Has(g, "u1") || p.Has(g, "u2") || p.Has("chat:other", "u1") {
			t.Fatal("Has does not match the joins")
		}
		if list, _ := p.List(ctx, g); len(list) != 0 {
			t.Fatalf("before the flush Redis has %v", list)
		}
		mustFlush(t, p)
		if err := p.Rename(ctx, Member{ID: "u1", Name: "Ada L."}); err != nil {
			t.Fatal(err)
		}
		list, _ := p.List(ctx, g)
		if len(list) != 1 || list[0].Name != "Ada L." {
			t.Fatalf("list %v, want one Ada L.", list)
		}
		_ = p.Leave(ctx, g, "u1", "tab1")
		mustFlush(t, p)
		if list, _ := p.List(ctx, g); len(list) != 1 {
			t.Fatalf("with one tab left: %v", list)
		}
		_ = p.Leave(ctx, g, "u1", "tab2")
		mustFlush(t, p)
		if list, _ := p.List(ctx, g); len(list) != 0 {
			t.Fatalf("after both tabs: %v", list)
		}
		if p.Has(g, "u1") {
			t.Fatal("Has after the last leave")
		}
		names, _ := eventNames(t, log, g)
		if got, want := fmt.Sprint(names), "[join rename leave]"; got != want {
			t.Fatalf("events %s, want %s", got, want)
		}
	})
}

// A burst of N arrivals, then of departures, in one interval each: N
// joins and N leaves in the order of the changes, one event per user
// change and no full list in the history.
func TestPresenceBatchesDiffsInOrder(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		log := NewLog(srv.Client(t), LogConfig{})
		p := newTestPresence(t, srv, log, PresenceConfig{})
		ctx := t.Context()
		const g, n = "chat:burst", 50
		var want []string
		for i := range n {
			id := fmt.Sprint("u", i)
			// Two tabs per user: the second changes nothing.
			for _, tab := range []string{"a", "b"} {
				if err := p.Join(ctx, g, Member{ID: id, Name: fmt.Sprint("user", i)}, tab); err != nil {
					t.Fatal(err)
				}
			}
			want = append(want, "join:"+id)
		}
		mustFlush(t, p)
		for i := n - 1; i >= 0; i-- {
			id := fmt.Sprint("u", i)
			for _, tab := range []string{"a", "b"} {
				_ = p.Leave(ctx, g, id, tab)
			}
			want = append(want, "leave:"+id)
		}
		mustFlush(t, p)
		names, diffs := eventNames(t, log, g)
		if len(names) != 2*n || slices.Contains(names, wire.EventPresence) {
			t.Fatalf("events %v, want %d joins and leaves and nothing else", names, 2*n)
		}
		if !slices.Equal(diffs, want) {
			t.Fatalf("diffs %v\nwant  %v", diffs, want)
		}
	})
}

// A tab that joins and leaves within one interval costs nothing: no
// Redis entry, no event.
func TestPresenceJoinLeftBeforeFlushIsDropped(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		log := NewLog(srv.Client(t), LogConfig{})
		p := newTestPresence(t, srv, log, PresenceConfig{})
		ctx := t.Context()
		const g = "chat:blink"
		_ = p.Join(ctx, g, Member{ID: "u1", Name: "ada"}, "tab")
		_ = p.Leave(ctx, g, "u1", "tab")
		_ = p.Join(ctx, g, Member{ID: "u2", Name: "bob"}, "tab")
		mustFlush(t, p)
		_, diffs := eventNames(t, log, g)
		if got := fmt.Sprint(diffs); got != "[join:u2]" {
			t.Fatalf("diffs %s, want only bob's join", got)
		}
	})
}

// A join or leave overtaken by a newer change of the same user (another
// replica published first) is not appended: for each user the last event
// in the log is their last change.
func TestPresenceStaleDiffIsDropped(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		log := NewLog(srv.Client(t), LogConfig{})
		p := newTestPresence(t, srv, log, PresenceConfig{})
		const g = "chat:race"
		ada := Member{ID: "u1", Name: "ada"}
		// Versions 1 (join), 2 (leave), 3 (join) were given in that order by
		// Redis; they reach the log as 1, 3, 2.
		err := p.publish(t.Context(), []announcement{
			p.announcement(g, wire.EventJoin, ada, 1),
			p.announcement(g, wire.EventJoin, ada, 3),
			p.announcement(g, wire.EventLeave, ada, 2),
			p.announcement(g, wire.EventLeave, Member{ID: "u2", Name: "bob"}, 4),
		})
		if err != nil {
			t.Fatal(err)
		}
		_, diffs := eventNames(t, log, g)
		if got := fmt.Sprint(diffs); got != "[join:u1 join:u1 leave:u2]" {
			t.Fatalf("diffs %s, want the stale leave of u1 dropped", got)
		}
	})
}

// Without a grace, Shutdown removes every entry of the replica in one go
// and announces each user who leaves with it; users with a tab on another
// replica stay.
func TestPresenceShutdownLeaves(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		log := NewLog(srv.Client(t), LogConfig{})
		a := newTestPresence(t, srv, log, PresenceConfig{ShutdownGrace: -1})
		b := newTestPresence(t, srv, log, PresenceConfig{})
		ctx := t.Context()
		const g = "chat:restart"
		for i := range 20 {
			_ = a.Join(ctx, g, Member{ID: fmt.Sprint("u", i), Name: fmt.Sprint("user", i)}, fmt.Sprint("c", i))
		}
		_ = b.Join(ctx, g, Member{ID: "u0", Name: "user0"}, "other")
		mustFlush(t, a)
		mustFlush(t, b)
		a.Shutdown(ctx)
		list, err := b.List(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].ID != "u0" {
			t.Fatalf("after a's shutdown: %v, want u0 alone", list)
		}
		_, diffs := eventNames(t, log, g)
		leaves := 0
		for _, d := range diffs {
			if strings.HasPrefix(d, "leave:") {
				leaves++
			}
		}
		if leaves != 19 || slices.Contains(diffs, "leave:u0") {
			t.Fatalf("diffs %v, want 19 leaves and u0 staying", diffs)
		}
	})
}

// applyDiffs is what a client does: the list of its SyncInfo, then each
// join, leave and rename as a set operation. It returns the ids, sorted.
func applyDiffs(t *testing.T, list []Member, evs []*Event) []string {
	t.Helper()
	set := map[string]string{}
	for _, m := range list {
		set[m.ID] = m.Name
	}
	for _, ev := range evs {
		var d struct{ User Member }
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			t.Fatal(err)
		}
		switch ev.Name {
		case wire.EventJoin:
			set[d.User.ID] = d.User.Name
		case wire.EventLeave:
			delete(set, d.User.ID)
		}
	}
	var ids []string
	for id := range set {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// A hub with Presence gives each chat subscriber the members as of its
// SyncInfo: a late subscriber starts from the list, subscribers at every
// position while joins and leaves keep coming converge on the same
// members as Redis, and non-chat groups carry no list.
func TestPresenceListInSyncInfo(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l := NewLog(srv.Client(t), LogConfig{})
		p := newTestPresence(t, srv, l, PresenceConfig{})
		_, h := newTestHub(t, srv, LogConfig{}, HubConfig{Presence: p})
		ctx := t.Context()
		const g = "chat:late"
		for i := range 10 {
			_ = p.Join(ctx, g, Member{ID: fmt.Sprint("u", i), Name: fmt.Sprint("user", i)}, "tab")
		}
		mustFlush(t, p)

		late := &recSink{}
		mustSubscribe(t, h, g, 0, "", late)
		waitFor(t, "the late subscriber's sync", func() bool { return len(late.Syncs()) == 1 && late.reached(10, "") })
		if got := applyDiffs(t, late.Syncs()[0].Members, nil); len(got) != 10 {
			t.Fatalf("late subscriber's list %v, want 10 users", got)
		}
		if _, err := l.Publish(ctx, "job:x", "note", 1); err != nil {
			t.Fatal(err)
		}
		job := &recSink{}
		mustSubscribe(t, h, "job:x", 0, "", job)
		waitFor(t, "the job subscriber's sync", func() bool { return len(job.Syncs()) == 1 })
		if m := job.Syncs()[0].Members; m != nil {
			t.Fatalf("a job group got members %v", m)
		}

		// Subscribers arrive between rounds of changes, some replaying
		// from the start, some from the newest seq; each must end with
		// Redis's members.
		var sinks []*recSink
		for round := range 6 {
			for i := range 10 {
				id := fmt.Sprint("u", i)
				if (i+round)%3 == 0 {
					_ = p.Leave(ctx, g, id, "tab")
				} else {
					_ = p.Join(ctx, g, Member{ID: id, Name: fmt.Sprint("user", i)}, "tab")
				}
			}
			s := &recSink{}
			after := int64(0)
			if round%2 == 1 {
				snap, err := l.Read(ctx, g, 0)
				if err != nil {
					t.Fatal(err)
				}
				after = snap.LastSeq
			}
			mustSubscribe(t, h, g, after, "", s)
			sinks = append(sinks, s)
			mustFlush(t, p)
		}
		want, err := p.List(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		snap, err := l.Read(ctx, g, 0)
		if err != nil {
			t.Fatal(err)
		}
		wantIDs := applyDiffs(t, want, nil)
		for i, s := range sinks {
			waitFor(t, "every event", func() bool { return s.reached(snap.LastSeq, "") })
			if len(s.Syncs()) != 1 || s.Syncs()[0].Members == nil {
				t.Fatalf("subscriber %d: syncs %v", i, s.Syncs())
			}
			if got := applyDiffs(t, s.Syncs()[0].Members, s.Events()); !slices.Equal(got, wantIDs) {
				t.Fatalf("subscriber %d converged on %v, want %v", i, got, wantIDs)
			}
		}
	})
}

// With a grace, a replica that drains and shuts down leaves its entries
// for the grace: users who reconnect elsewhere meanwhile are neither
// announced as leaving nor as joining again (a restart costs no presence
// events); once the grace is over the sweep announces those who did not.
func TestPresenceShutdownGrace(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		for _, tc := range []struct {
			name     string
			grace    time.Duration
			back     int    // users who reconnect to the other replica
			wantList int    // members after the hand-over (and a sweep)
			want     string // the diffs after the first 20 joins
		}{
			{"everyone back within the grace", time.Hour, 20, 20, "[]"},
			{"half back, grace over", time.Millisecond, 10, 10, "[leave:u10 leave:u11 leave:u12 leave:u13 leave:u14 leave:u15 leave:u16 leave:u17 leave:u18 leave:u19]"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				// A prefix of its own: the sweeper lock of another test's
				// replica must not hold this one's sweep back.
				log := NewLog(srv.Client(t), LogConfig{Prefix: fmt.Sprint("grace", tc.back)})
				a := newTestPresence(t, srv, log, PresenceConfig{ShutdownGrace: tc.grace})
				b := newTestPresence(t, srv, log, PresenceConfig{})
				ctx := t.Context()
				const g = "chat:grace"
				for i := range 20 {
					_ = a.Join(ctx, g, Member{ID: fmt.Sprint("u", i), Name: fmt.Sprint("user", i)}, "c")
				}
				mustFlush(t, a)
				_, before := eventNames(t, log, g)
				a.Drain()
				for i := range 10 { // sockets closed after Drain
					_ = a.Leave(ctx, g, fmt.Sprint("u", i), "c")
				}
				a.Shutdown(ctx)
				for i := range tc.back {
					_ = b.Join(ctx, g, Member{ID: fmt.Sprint("u", i), Name: fmt.Sprint("user", i)}, "c")
				}
				mustFlush(t, b)
				if tc.grace < time.Second {
					time.Sleep(2 * tc.grace) // the grace is over
				}
				if err := b.sweep(ctx); err != nil {
					t.Fatal(err)
				}
				list, err := b.List(ctx, g)
				if err != nil {
					t.Fatal(err)
				}
				if len(list) != tc.wantList {
					t.Fatalf("members %v, want %d", list, tc.wantList)
				}
				_, diffs := eventNames(t, log, g)
				if got := fmt.Sprint(diffs[len(before):]); got != tc.want {
					t.Fatalf("diffs after the hand-over %s, want %s", got, tc.want)
				}
			})
		}
	})
}

// Of many connections of a user entering at once exactly one is first,
// and its join is held: the others' joins go out (the user joins through
// them), a held join goes out once settled, and one left before that
// never reaches Redis.
func TestPresenceEnterHoldsTheFirstJoin(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		log := NewLog(srv.Client(t), LogConfig{})
		p := newTestPresence(t, srv, log, PresenceConfig{})
		ctx := t.Context()
		const g = "chat:enter"
		ada := Member{ID: "u1", Name: "ada"}
		firsts := 0
		for i := range 5 {
			first, err := p.Enter(g, ada, fmt.Sprint("c", i))
			if err != nil {
				t.Fatal(err)
			}
			if first {
				firsts++
			}
		}
		if firsts != 1 {
			t.Fatalf("%d firsts of 5, want 1", firsts)
		}
		// Bob's only socket is held, then refused (left); Cy's settled
		// under a newer name.
		if first, _ := p.Enter(g, Member{ID: "u2", Name: "bob"}, "b"); !first {
			t.Fatal("bob's only socket is not first")
		}
		if first, _ := p.Enter(g, Member{ID: "u3", Name: "cy"}, "c"); !first {
			t.Fatal("cy's only socket is not first")
		}
		mustFlush(t, p)
		list, _ := p.List(ctx, g)
		if len(list) != 1 || list[0].ID != "u1" {
			t.Fatalf("with bob's and cy's joins held: %v, want ada alone", list)
		}
		_ = p.Leave(ctx, g, "u2", "b")
		p.Settle(g, Member{ID: "u3", Name: "Cy Young"}, "c")
		p.Settle(g, Member{ID: "u1", Name: "ada"}, "c0") // ada's held one
		mustFlush(t, p)
		list, _ = p.List(ctx, g)
		if got := fmt.Sprint(list); got != "[{u3 Cy Young} {u1 ada}]" {
			t.Fatalf("members %s", got)
		}
		_, diffs := eventNames(t, log, g)
		if got := fmt.Sprint(diffs); got != "[join:u1 join:u3]" {
			t.Fatalf("diffs %s: bob's refused join must not show", got)
		}
	})
}

// A flush of many rooms on a Redis that lost the presence scripts (a new
// Redis, a restart, SCRIPT FLUSH) loads each missing script once and sends
// the rooms' changes again by digest, in one pipeline: a fixed number of
// round trips and no EVAL, however many rooms. Only a load that fails, or
// a cache lost again after the load, sends the sources (EVAL per change).
// Either way every change lands once, in order.
func TestPresenceFlushLoadsMissingScriptsOnce(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		const rooms = 40
		// Per room, b joins and, in every other room, a leaves: n changes
		// (each one announced).
		const n = rooms + rooms/2
		for i, tc := range []struct {
			name  string
			flush bool // SCRIPT FLUSH before the counted flush
			fault loadFault
			want  scriptCounts
		}{
			// SADD; the changes; their announcements.
			{name: "scripts cached", want: scriptCounts{Trips: 3, EvalShas: 2 * n}},
			// SADD; the changes, missing; SCRIPT LOAD of join and of
			// leave, one pipeline; the changes again; the announcements,
			// missing; SCRIPT LOAD of newer; the announcements again.
			{name: "scripts flushed", flush: true, want: scriptCounts{Trips: 7, EvalShas: 4 * n, Loads: 3}},
			// The loads refused: the sources go at once.
			{name: "load refused", flush: true, fault: loadRefused, want: scriptCounts{Trips: 7, Evals: 2 * n, EvalShas: 2 * n, Loads: 3}},
			// By digest, after the loads, then with the sources.
			{name: "scripts lost again after the load", flush: true, fault: loadForgotten, want: scriptCounts{Trips: 9, Evals: 2 * n, EvalShas: 4 * n, Loads: 3}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := t.Context()
				rdb := srv.Client(t)
				log := NewLog(rdb, LogConfig{})
				p := NewPresence(rdb, log, PresenceConfig{ListInterval: time.Hour, TTL: time.Hour, Logger: testLogger(t)})
				t.Cleanup(func() { p.Shutdown(context.Background()) })
				room := func(j int) string { return fmt.Sprintf("chat:noscript%d-%d", i, j) }
				a, b := Member{ID: "ua", Name: "ada"}, Member{ID: "ub", Name: "bob"}
				for j := range rooms {
					if err := p.Join(ctx, room(j), a, "tab"); err != nil {
						t.Fatal(err)
					}
				}
				mustFlush(t, p)
				if tc.flush {
					if err := rdb.ScriptFlush(ctx).Err(); err != nil {
						t.Fatal(err)
					}
				} else if err := loadScripts(ctx, rdb, []*redis.Script{joinScript, leaveScript, newerScript}); err != nil {
					t.Fatal(err)
				}
				traffic := &scriptTraffic{fault: tc.fault, flusher: srv.Client(t)}
				rdb.AddHook(traffic)
				for j := range rooms {
					if err := p.Join(ctx, room(j), b, "tab"); err != nil {
						t.Fatal(err)
					}
					if j%2 == 0 {
						if err := p.Leave(ctx, room(j), a.ID, "tab"); err != nil {
							t.Fatal(err)
						}
					}
				}
				mustFlush(t, p)
				if got := traffic.counts(); got != tc.want {
					t.Errorf("the flush made %+v, want %+v", got, tc.want)
				}
				for j := range rooms {
					want, wantList := "[join:ua join:ub]", "[{ua ada} {ub bob}]"
					if j%2 == 0 {
						want, wantList = "[join:ua join:ub leave:ua]", "[{ub bob}]"
					}
					if _, diffs := eventNames(t, log, room(j)); fmt.Sprint(diffs) != want {
						t.Fatalf("%s: events %v, want %s", room(j), diffs, want)
					}
					list, err := p.List(ctx, room(j))
					if err != nil || fmt.Sprint(list) != wantList {
						t.Fatalf("%s: list %v (%v), want %s", room(j), list, err, wantList)
					}
				}
			})
		}
	})
}
