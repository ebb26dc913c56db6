package progress

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"taskstream/progress/progresstest"
)

// Join and Leave racing a fast heartbeat: a left entry is never brought
// back by a heartbeat that held a stale copy of it.
func TestPresenceHeartbeatDoesNotResurrect(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		log := NewLog(rdb, LogConfig{})
		p := NewPresence(rdb, log, PresenceConfig{TTL: time.Minute, Heartbeat: time.Millisecond})
		t.Cleanup(func() { p.Shutdown(context.Background()) })
		ctx := context.Background()
		for i := range 100 {
			conn := fmt.Sprint("c", i)
			if err := p.Join(ctx, "chat:ghosts", Member{ID: "u1", Name: "ada"}, conn); err != nil {
				t.Fatal(err)
			}
			if err := p.Leave(ctx, "chat:ghosts", "u1", conn); err != nil {
				t.Fatal(err)
			}
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
// reaches the list; each change is followed by one presence list.
func TestPresenceCountsOnceAndRenames(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		log := NewLog(rdb, LogConfig{})
		p := NewPresence(rdb, log, PresenceConfig{})
		t.Cleanup(func() { p.Shutdown(context.Background()) })
		ctx := context.Background()
		const g = "chat:once"
		ada := Member{ID: "u1", Name: "ada"}
		// publishLists stands in for the ListInterval tick, so the order
		// of events is known.
		flush := func() {
			if err := p.publishLists(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for _, conn := range []string{"tab1", "tab2"} {
			if err := p.Join(ctx, g, ada, conn); err != nil {
				t.Fatal(err)
			}
		}
		flush()
		if err := p.Rename(ctx, Member{ID: "u1", Name: "Ada L."}); err != nil {
			t.Fatal(err)
		}
		flush()
		list, _ := p.List(ctx, g)
		if len(list) != 1 || list[0].Name != "Ada L." {
			t.Fatalf("list %v, want one Ada L.", list)
		}
		_ = p.Leave(ctx, g, "u1", "tab1")
		if list, _ := p.List(ctx, g); len(list) != 1 {
			t.Fatalf("with one tab left: %v", list)
		}
		_ = p.Leave(ctx, g, "u1", "tab2")
		if list, _ := p.List(ctx, g); len(list) != 0 {
			t.Fatalf("after both tabs: %v", list)
		}
		flush()
		snap, err := log.Read(ctx, g, 0)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, ev := range snap.Events {
			names = append(names, ev.Name)
		}
		if got, want := fmt.Sprint(names), "[join presence rename presence leave presence]"; got != want {
			t.Fatalf("events %s, want %s", got, want)
		}
	})
}

// A burst of arrivals costs one event each plus one list, not a list per
// arrival.
func TestPresenceCoalescesLists(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		log := NewLog(rdb, LogConfig{})
		p := NewPresence(rdb, log, PresenceConfig{ListInterval: time.Hour})
		t.Cleanup(func() { p.Shutdown(context.Background()) })
		ctx := context.Background()
		const g, n = "chat:burst", 50
		for i := range n {
			if err := p.Join(ctx, g, Member{ID: fmt.Sprint("u", i), Name: fmt.Sprint("user", i)}, "tab"); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.publishLists(ctx); err != nil {
			t.Fatal(err)
		}
		snap, err := log.Read(ctx, g, 0)
		if err != nil {
			t.Fatal(err)
		}
		counts := map[string]int{}
		for _, ev := range snap.Events {
			counts[ev.Name]++
		}
		if counts["join"] != n || counts["presence"] != 1 {
			t.Fatalf("events %v, want %d joins and one presence list", counts, n)
		}
		if last := snap.Events[len(snap.Events)-1]; last.Name != "presence" || strings.Count(string(last.Data), `"id"`) != n {
			t.Fatalf("the list %s should hold all %d users", last.Data, n)
		}
	})
}
