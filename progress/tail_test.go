package progress

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"taskstream/progress/progresstest"
)

// groupTail returns group's tail on h (nil when it has none) and its
// generation, for tests that check when the hub drops it.
func groupTail(h *Hub, group string) (*tail, uint64) {
	h.mu.Lock()
	g := h.groups[group]
	h.mu.Unlock()
	if g == nil {
		return nil, 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tail, g.gen
}

// dropGroupTail drops group's tail on h, so the next subscriber reads
// the log, as it does when the hub has no tail (after a reconnect).
func dropGroupTail(h *Hub, group string) {
	h.mu.Lock()
	g := h.groups[group]
	h.mu.Unlock()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dropTail()
}

// Once a group is live on a hub, later subscribers whose position lies in
// the tail are served from memory: no read of the log, the same *Event
// objects, and exactly what a read would give. Positions outside it (a
// stale epoch) still go to Redis.
func TestHubTailServesLiveGroupWithoutRead(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
		const group = "job:tail"
		var epoch string
		for i := 1; i <= 30; i++ {
			epoch = mustPublish(t, l, group, "progress", i).Epoch
		}
		first := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", first).Close()
		waitFor(t, "the first replay", func() bool { return first.reached(30, "") })
		waitForTail(t, h, group)
		reads := h.Counters().HistoryReads

		type later struct {
			sink  *recSink
			after int64
		}
		var subs []later
		subscribe := func(n int, upTo int64) {
			for i := range n {
				after := rand.Int64N(upTo + 1)
				if i == 0 {
					after = 0
				}
				ep := epoch
				if i%2 == 1 {
					ep = "" // a client that does not send its epoch
				}
				s := &recSink{}
				t.Cleanup(mustSubscribe(t, h, group, after, ep, s).Close)
				subs = append(subs, later{s, after})
			}
		}
		subscribe(10, 30)
		for i := 31; i <= 40; i++ {
			mustPublish(t, l, group, "progress", i)
		}
		waitFor(t, "the live events", func() bool { return first.reached(40, "") })
		subscribe(10, 40)
		for i := 41; i <= 45; i++ {
			mustPublish(t, l, group, "progress", i)
		}
		for i, s := range subs {
			waitFor(t, "every event", func() bool { return s.sink.reached(45, "") })
			checkDelivery(t, fmt.Sprintf("subscriber %d after %d", i, s.after), s.sink, s.after, 45, epoch)
		}
		c := h.Counters()
		if c.HistoryReads != reads || c.TailSyncs < uint64(len(subs)) {
			t.Fatalf("history reads %d → %d, tail syncs %d: want no read and %d tail syncs", reads, c.HistoryReads, c.TailSyncs, len(subs))
		}
		// Replay from the tail shares the hub's *Event objects.
		a, b := subs[0].sink.Events(), subs[10].sink.Events()
		if a[0] != first.Events()[0] || a[30] != b[30] {
			t.Fatalf("replayed events are copies, not the shared *Event")
		}

		// A position of another epoch is not the tail's: Redis decides.
		stale := &recSink{}
		defer mustSubscribe(t, h, group, 10, "older", stale).Close()
		waitFor(t, "the stale subscriber's replay", func() bool { return stale.reached(45, "") })
		if info := stale.Syncs()[0]; info.Recovered || info.Replayed != 45 {
			t.Fatalf("stale subscriber's SyncInfo %+v, want the whole log, not recovered", info)
		}
		if got := h.Counters().HistoryReads; got != reads+1 {
			t.Fatalf("history reads %d, want %d", got, reads+1)
		}
	})
}

// The tail never claims history Redis may have trimmed: it holds at most
// the log's bound, and serves a subscriber from the start only while it
// starts at seq 1. Every subscriber gets exactly what a read gives.
func TestHubTailBoundedByLogLength(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		const maxLen = 5
		l, h := newTestHub(t, srv, LogConfig{KindMaxLen: map[string]int64{"job": maxLen}}, HubConfig{})
		const group = "job:bounded"
		for i := 1; i <= 3; i++ {
			mustPublish(t, l, group, "progress", i)
		}
		first := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", first).Close()
		waitForTail(t, h, group)
		if tl, _ := groupTail(h, group); tl.first != 1 {
			t.Fatalf("tail starts at %d, want 1", tl.first)
		}
		reads := h.Counters().HistoryReads
		fresh := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", fresh).Close()
		waitFor(t, "the fresh subscriber", func() bool { return fresh.reached(3, "") })
		if got := h.Counters().HistoryReads; got != reads {
			t.Fatalf("a subscriber from the start of an untrimmed log caused %d reads", got-reads)
		}

		for i := 4; i <= 20; i++ {
			mustPublish(t, l, group, "progress", i)
		}
		waitFor(t, "the live events", func() bool { return first.reached(20, "") })
		tl, _ := groupTail(h, group)
		if tl == nil || tl.first != 20-maxLen+1 || len(tl.events) != maxLen {
			t.Fatalf("tail %+v, want the newest %d events", tl, maxLen)
		}
		// From inside the tail: no read.
		inside := &recSink{}
		defer mustSubscribe(t, h, group, 20-maxLen, "", inside).Close()
		waitFor(t, "the inside subscriber", func() bool { return inside.reached(20, "") })
		checkDelivery(t, "inside", inside, 20-maxLen, 20, first.Last().Epoch)
		// From the start or before the tail: Redis, which may retain more
		// (MAXLEN ~) and says whether anything was lost.
		for _, after := range []int64{0, 3} {
			s := &recSink{}
			defer mustSubscribe(t, h, group, after, "", s).Close()
			waitFor(t, "the subscriber before the tail", func() bool { return s.reached(20, "") })
			snap, err := l.Read(t.Context(), group, after)
			if err != nil {
				t.Fatal(err)
			}
			want := SyncInfo{Epoch: snap.Epoch, LastSeq: 20, Replayed: len(snap.Events), Recovered: snap.Events[0].Seq == after+1, Initial: true}
			if got := s.Syncs()[0]; !reflect.DeepEqual(got, want) {
				t.Fatalf("after %d: SyncInfo %+v, want %+v (what Redis holds)", after, got, want)
			}
		}
		if got := h.Counters().HistoryReads; got != reads+2 {
			t.Fatalf("history reads %d, want %d: the two subscribers before the tail read Redis", got, reads+2)
		}
	})
}

// A lost log (both keys deleted, its meta deleted, FLUSHALL) shows as a
// new epoch on the next event: the tail is dropped, existing subscribers
// get Recovered false, and the next subscriber reads the new log.
func TestHubTailDroppedOnNewEpoch(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		for _, tc := range []struct {
			name string
			lose func(ctx context.Context, l *Log, group string) error
		}{
			{"keys deleted", func(ctx context.Context, l *Log, group string) error {
				return rdb.Del(ctx, l.metaKey(group), l.streamKey(group)).Err()
			}},
			{"meta deleted", func(ctx context.Context, l *Log, group string) error { return rdb.Del(ctx, l.metaKey(group)).Err() }},
			{"flushall", func(ctx context.Context, _ *Log, _ string) error { return rdb.FlushAll(ctx).Err() }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				l, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
				group := "job:lost-" + tc.name[:4]
				for i := 1; i <= 5; i++ {
					mustPublish(t, l, group, "progress", i)
				}
				old := &recSink{}
				defer mustSubscribe(t, h, group, 0, "", old).Close()
				waitFor(t, "the tail", func() bool { tl, _ := groupTail(h, group); return tl != nil && tl.last == 5 })
				if err := tc.lose(t.Context(), l, group); err != nil {
					t.Fatal(err)
				}
				var epoch string
				for i := 1; i <= 3; i++ {
					epoch = mustPublish(t, l, group, "progress", i).Epoch
				}
				waitFor(t, "the new log", func() bool { return old.reached(3, epoch) })
				if syncs := old.Syncs(); len(syncs) != 2 || syncs[1].Recovered || syncs[1].Epoch != epoch {
					t.Fatalf("existing subscriber's syncs %+v, want a second one, not recovered, epoch %s", syncs, epoch)
				}
				if tl, _ := groupTail(h, group); tl != nil && tl.epoch != epoch {
					t.Fatalf("the old epoch's tail is kept")
				}
				s := &recSink{}
				defer mustSubscribe(t, h, group, 0, "", s).Close()
				waitFor(t, "the new subscriber", func() bool { return s.reached(3, epoch) })
				checkDelivery(t, "new subscriber", s, 0, 3, epoch)
			})
		}
	})
}

// A pub/sub connection that breaks may have lost events: the tail is
// dropped, and only a read after the resubscription establishes another.
func TestHubTailDroppedOnReconnect(t *testing.T) {
	srv := progresstest.Real(t) // CLIENT KILL: real redis-server only
	rdb := srv.Client(t)
	l, h := newTestHub(t, srv, LogConfig{}, HubConfig{Logger: quietLogger()})
	const group = "job:reconnect"
	for i := 1; i <= 5; i++ {
		mustPublish(t, l, group, "progress", i)
	}
	s := &recSink{}
	defer mustSubscribe(t, h, group, 0, "", s).Close()
	waitForTail(t, h, group)
	before, gen := groupTail(h, group)
	reads := h.Counters().HistoryReads
	if err := rdb.ClientKillByFilter(t.Context(), "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the catch-up read", func() bool { return h.Counters().HistoryReads > reads })
	waitFor(t, "a new tail", func() bool { tl, _ := groupTail(h, group); return tl != nil && tl != before })
	if _, g2 := groupTail(h, group); g2 == gen {
		t.Fatalf("the tail's generation did not change across the reconnect")
	}
}

// waitForTail waits until the hub holds a tail of group.
func waitForTail(t *testing.T, h *Hub, group string) {
	t.Helper()
	waitFor(t, "the tail", func() bool { tl, _ := groupTail(h, group); return tl != nil })
}

// Many subscribers join at random positions while events are published
// concurrently (on a real Redis, while the hub's pub/sub connection is
// killed now and then): each sees a gapless, duplicate-free stream with a
// recovered first SyncInfo, whether served from the tail or from Redis.
func TestHubTailConcurrentSubscribers(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		l, h := newTestHub(t, srv, LogConfig{KindMaxLen: map[string]int64{"job": 50}}, HubConfig{Logger: quietLogger()})
		const group, total = "job:storm", 400
		first := mustPublish(t, l, group, "progress", 1)
		anchor := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", anchor).Close()
		waitFor(t, "the first replay", func() bool { return anchor.reached(1, "") })

		stop := make(chan struct{})
		var bg sync.WaitGroup
		bg.Go(func() {
			for i := 2; i <= total; i++ {
				mustPublish(t, l, group, "progress", i)
			}
		})
		if srv.Miniredis() == nil {
			bg.Go(func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(time.Duration(rand.IntN(20)) * time.Millisecond):
					}
					_ = rdb.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Err()
				}
			})
		}
		type later struct {
			sink  *recSink
			after int64
		}
		var subs []later
		for range 200 {
			// A position the subscriber saw: one the anchor delivered.
			after := int64(0)
			if last := anchor.Last(); last != nil && rand.IntN(4) > 0 {
				after = max(last.Seq-rand.Int64N(60), 0)
			}
			s := &recSink{}
			defer mustSubscribe(t, h, group, after, first.Epoch, s).Close()
			subs = append(subs, later{s, after})
			if rand.IntN(4) == 0 {
				time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
			}
		}
		close(stop)
		bg.Wait()
		snap, err := l.Read(t.Context(), group, 0)
		if err != nil {
			t.Fatal(err)
		}
		retained := snap.Events[0].Seq
		for i, s := range subs {
			name := fmt.Sprintf("subscriber %d after %d", i, s.after)
			// A subscriber placed at the head (after == total, when the
			// anchor had every event by then) is done once it is synced:
			// it has nothing to receive.
			done := func() bool {
				if s.after >= total {
					return len(s.sink.Syncs()) > 0
				}
				return s.sink.reached(total, "")
			}
			waitForDiag(t, "every event", done, func() string {
				return fmt.Sprintf("%s: failures %v, lagged %d, hub %+v, stats %+v: %s",
					name, s.sink.Failures(), s.sink.NumLagged(), h.Counters(), h.Stats(), s.sink.dump())
			})
			items := s.sink.Items()
			info := items[0].sync
			evs := s.sink.Events()
			if info == nil || !info.Initial {
				t.Fatalf("%s: %s", name, s.sink.dump())
			}
			if len(evs) == 0 {
				if s.after != total || !info.Recovered || info.LastSeq != total || len(items) != 1 {
					t.Fatalf("%s: no event received: %s", name, s.sink.dump())
				}
				continue
			}
			// A position the log still holds is never called lost; an
			// older one may have been trimmed before it subscribed, and
			// Recovered says whether it was: its replay starts right after
			// the position, or there was nothing to replay. (Events lost
			// with a killed connection later are announced by another
			// SyncInfo, which checkAnnounced checks.)
			recovered := info.LastSeq == s.after
			if info.Replayed > 0 {
				recovered = len(items) > 1 && items[1].ev != nil && items[1].ev.Seq == s.after+1
			}
			if s.after+1 >= retained && !info.Recovered || info.Recovered != recovered {
				t.Fatalf("%s: first SyncInfo %+v (the log retains %d..): %s", name, *info, retained, s.sink.dump())
			}
			if srv.Miniredis() != nil && len(s.sink.Syncs()) != 1 {
				t.Fatalf("%s: more than one SyncInfo with no connection lost: %s", name, s.sink.dump())
			}
			checkAnnounced(t, name, items, total, first.Epoch)
		}
		t.Logf("history reads %d, tail syncs %d", h.Counters().HistoryReads, h.Counters().TailSyncs)
	})
}

// A chat group's member list served from the tail is exact: after rounds
// of joins, leaves and renames, a subscriber served once the hub has the
// room's newest event gets, with no read, the list Presence.List reads
// from Redis (names included), and every subscriber converges on it.
func TestHubTailMemberList(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l := NewLog(srv.Client(t), LogConfig{})
		p := newTestPresence(t, srv, l, PresenceConfig{})
		_, h := newTestHub(t, srv, LogConfig{}, HubConfig{Presence: p})
		ctx := t.Context()
		const g = "chat:tail"
		for i := range 10 {
			_ = p.Join(ctx, g, Member{ID: fmt.Sprint("u", i), Name: fmt.Sprint("user", i)}, "tab")
		}
		mustFlush(t, p)
		anchor := &recSink{}
		defer mustSubscribe(t, h, g, 0, "", anchor).Close()
		waitFor(t, "the tail", func() bool { tl, _ := groupTail(h, g); return tl != nil })
		reads := h.Counters().HistoryReads
		for round := range 5 {
			for i := range 12 {
				id := fmt.Sprint("u", i)
				if (i+round)%3 == 0 {
					_ = p.Leave(ctx, g, id, "tab")
				} else {
					_ = p.Join(ctx, g, Member{ID: id, Name: fmt.Sprint("user", i)}, "tab")
				}
			}
			mustFlush(t, p)
			if err := p.Rename(ctx, Member{ID: fmt.Sprint("u", round+1), Name: fmt.Sprint("renamed", round)}); err != nil {
				t.Fatal(err)
			}
			snap, err := l.Read(ctx, g, 0)
			if err != nil {
				t.Fatal(err)
			}
			want, err := p.List(ctx, g)
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the room's newest event", func() bool { return anchor.reached(snap.LastSeq, "") })
			for _, after := range []int64{0, snap.LastSeq / 2, snap.LastSeq} {
				s := &recSink{}
				defer mustSubscribe(t, h, g, after, "", s).Close()
				waitFor(t, "the subscriber's sync", func() bool { return len(s.Syncs()) == 1 && (after == snap.LastSeq || s.reached(snap.LastSeq, "")) })
				info := s.Syncs()[0]
				if info.LastSeq != snap.LastSeq || !info.Recovered || !reflect.DeepEqual(info.Members, want) {
					t.Fatalf("round %d after %d: SyncInfo %+v, want LastSeq %d and members %v", round, after, info, snap.LastSeq, want)
				}
			}
		}
		if got := h.Counters().HistoryReads; got != reads {
			t.Fatalf("history reads %d → %d: subscribers of the live room read Redis", reads, got)
		}
	})
}

// A group with no log yet gets an empty tail, which takes the epoch of
// the log's first event: subscribers before and after that event are
// served without a read, and see the log from seq 1.
func TestHubTailOfEmptyGroup(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
		const group = "job:empty-tail"
		first := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", first).Close()
		waitForTail(t, h, group)
		reads := h.Counters().HistoryReads
		early := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", early).Close()
		waitFor(t, "the early subscriber's sync", func() bool { return len(early.Syncs()) == 1 })
		if info := early.Syncs()[0]; !reflect.DeepEqual(info, SyncInfo{Recovered: true, Initial: true}) {
			t.Fatalf("early SyncInfo %+v, want an empty, recovered one", info)
		}
		var epoch string
		for i := 1; i <= 3; i++ {
			epoch = mustPublish(t, l, group, "progress", i).Epoch
		}
		waitFor(t, "the events", func() bool { return first.reached(3, epoch) && early.reached(3, epoch) })
		late := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", late).Close()
		waitFor(t, "the late subscriber", func() bool { return late.reached(3, epoch) })
		for name, s := range map[string]*recSink{"first": first, "early": early, "late": late} {
			checkDelivery(t, name, s, 0, 3, epoch)
		}
		if got := h.Counters().HistoryReads; got != reads {
			t.Fatalf("history reads %d → %d", reads, got)
		}
	})
}

// readAnswer is what a subscriber at (after, epoch) gets from a read of
// the log now, with no tail: its first SyncInfo and the events after it
// (Subscription.apply's rules, a lost position read again from the start).
func readAnswer(t *testing.T, l *Log, group string, after int64, epoch string) (SyncInfo, []*Event) {
	t.Helper()
	snap, err := l.Read(t.Context(), group, after)
	if err != nil {
		t.Fatal(err)
	}
	lost := (epoch != "" && epoch != snap.Epoch) || after > snap.LastSeq
	if lost {
		after = 0
		if snap, err = l.Read(t.Context(), group, 0); err != nil {
			t.Fatal(err)
		}
	}
	recovered := !lost
	if len(snap.Events) > 0 && snap.Events[0].Seq != after+1 || len(snap.Events) == 0 && snap.LastSeq > after {
		recovered = false
	}
	return SyncInfo{Epoch: snap.Epoch, LastSeq: snap.LastSeq, Replayed: len(snap.Events), Recovered: recovered, Initial: true}, snap.Events
}

// The bug that had the first tail reverted (TestBrowserJobPageHistoryLost
// caught it): a group's log changes in Redis while no event tells the hub
// (deleted, flushed, expired, only its meta or only its events evicted,
// trimmed harder by another process, an event lost on the way), and a
// subscriber arrives before the group's next event. It must get what a
// read of the log gives (the history lost, Recovered false), never the
// tail's history as recovered; positions the log still holds may come
// from the tail.
func TestHubTailCheckedAgainstLog(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		type pos struct {
			after    int64
			oldEpoch bool // the position's epoch: the old log's, or none (a client that sends none)
			fromTail bool // served from the tail: the log still holds what it serves
		}
		for _, tc := range []struct {
			name string
			lose func(ctx context.Context, l *Log, group string) error
			subs []pos
		}{
			{"keys deleted", func(ctx context.Context, l *Log, group string) error {
				return rdb.Del(ctx, l.metaKey(group), l.streamKey(group)).Err()
			}, []pos{{2, true, false}, {5, true, false}, {0, false, true}}},
			{"flushall", func(ctx context.Context, _ *Log, _ string) error { return rdb.FlushAll(ctx).Err() },
				[]pos{{5, true, false}, {0, false, true}}},
			{"expired", func(ctx context.Context, l *Log, group string) error {
				if err := rdb.PExpire(ctx, l.metaKey(group), time.Millisecond).Err(); err != nil {
					return err
				}
				if err := rdb.PExpire(ctx, l.streamKey(group), time.Millisecond).Err(); err != nil {
					return err
				}
				if m := srv.Miniredis(); m != nil {
					m.FastForward(time.Second)
				}
				for rdb.Exists(ctx, l.metaKey(group), l.streamKey(group)).Val() != 0 {
					time.Sleep(time.Millisecond)
				}
				return nil
			}, []pos{{3, true, false}, {0, false, true}}},
			{"meta evicted", func(ctx context.Context, l *Log, group string) error { return rdb.Del(ctx, l.metaKey(group)).Err() },
				[]pos{{5, true, false}, {0, false, false}}},
			{"meta of another epoch", func(ctx context.Context, l *Log, group string) error {
				return rdb.HSet(ctx, l.metaKey(group), "epoch", "another").Err()
			}, []pos{{5, true, false}}},
			{"events evicted", func(ctx context.Context, l *Log, group string) error { return rdb.Del(ctx, l.streamKey(group)).Err() },
				[]pos{{2, true, false}, {5, true, true}, {5, false, true}}},
			{"trimmed by another process", func(ctx context.Context, l *Log, group string) error {
				return rdb.XTrimMaxLen(ctx, l.streamKey(group), 2).Err()
			}, []pos{{1, true, false}, {0, false, false}, {3, true, true}, {4, false, true}}},
			{"an event lost on the way", func(ctx context.Context, l *Log, group string) error {
				return rdb.HIncrBy(ctx, l.metaKey(group), "seq", 1).Err()
			}, []pos{{2, true, false}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				l, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
				group := "job:checked-" + strings.ReplaceAll(tc.name, " ", "-")
				var epoch string
				for i := 1; i <= 5; i++ {
					epoch = mustPublish(t, l, group, "progress", i).Epoch
				}
				anchor := &recSink{}
				defer mustSubscribe(t, h, group, 0, "", anchor).Close()
				waitFor(t, "the tail", func() bool { tl, _ := groupTail(h, group); return tl != nil && tl.last == 5 })
				if err := tc.lose(t.Context(), l, group); err != nil {
					t.Fatal(err)
				}
				for i, p := range tc.subs {
					ep := ""
					if p.oldEpoch {
						ep = epoch
					}
					wantInfo, wantEvs := readAnswer(t, l, group, p.after, ep)
					before := h.Counters()
					s := &recSink{}
					defer mustSubscribe(t, h, group, p.after, ep, s).Close()
					waitFor(t, "the subscriber's answer", func() bool { return len(s.Syncs()) > 0 && s.NumEvents() >= len(wantEvs) })
					name := fmt.Sprintf("subscriber %d after %d epoch %q", i, p.after, ep)
					if got := s.Syncs(); len(got) != 1 || !reflect.DeepEqual(got[0], wantInfo) {
						t.Fatalf("%s: SyncInfo %v, want %+v (what a read gives)", name, got, wantInfo)
					}
					evs := s.Events()
					if len(evs) != len(wantEvs) {
						t.Fatalf("%s: %d events, want %d: %s", name, len(evs), len(wantEvs), s.dump())
					}
					for j, ev := range evs {
						if w := wantEvs[j]; ev.Seq != w.Seq || ev.Epoch != w.Epoch || string(ev.Data) != string(w.Data) {
							t.Fatalf("%s: event %d is %d@%s %s, want %d@%s %s", name, j, ev.Seq, ev.Epoch, ev.Data, w.Seq, w.Epoch, w.Data)
						}
					}
					after := h.Counters()
					if after.TailChecks == before.TailChecks && i == 0 {
						t.Fatalf("%s: the first subscriber after the change was not checked against the log", name)
					}
					if served := after.HistoryReads == before.HistoryReads; served != p.fromTail {
						t.Fatalf("%s: served from the tail %v, want %v (reads %d → %d)", name, served, p.fromTail, before.HistoryReads, after.HistoryReads)
					}
				}
			})
		}
	})
}

// checkAnnounced checks a subscriber's stream when its pub/sub connection
// may have been lost for longer than the log retains: events in seq order
// up to last, of epoch, no duplicate, and a gap only right after a
// non-initial SyncInfo with Recovered false (a catch-up that found the
// subscriber's position trimmed), which only a real gap follows.
func checkAnnounced(t *testing.T, name string, items []item, last int64, epoch string) {
	t.Helper()
	cursor := int64(-1)
	announced := false
	for i, it := range items {
		if it.sync != nil {
			if i > 0 && (it.sync.Initial || it.sync.Recovered) {
				t.Fatalf("%s: SyncInfo %+v at %d: only an unrecovered catch-up may follow the first", name, *it.sync, i)
			}
			announced = i > 0
			continue
		}
		ev := it.ev
		switch {
		case ev.Epoch != epoch:
			t.Fatalf("%s: event %d of epoch %s, want %s", name, ev.Seq, ev.Epoch, epoch)
		case cursor >= 0 && ev.Seq <= cursor:
			t.Fatalf("%s: event %d after %d: a duplicate or out of order", name, ev.Seq, cursor)
		case cursor >= 0 && ev.Seq != cursor+1 && !announced:
			t.Fatalf("%s: a gap %d → %d not announced", name, cursor, ev.Seq)
		case cursor >= 0 && ev.Seq == cursor+1 && announced:
			t.Fatalf("%s: a loss announced before %d, which follows %d", name, ev.Seq, cursor)
		}
		cursor, announced = ev.Seq, false
	}
	if cursor != last {
		t.Fatalf("%s: last event %d, want %d", name, cursor, last)
	}
}

// A look at the log that shows an event the tail has not heard yet (it is
// still on its way over pub/sub) has the batch wait for it, up to
// HubConfig.TailWait, and then be served from the tail with no read; an
// event that never arrives has them read the log once the wait ran out.
func TestHubTailWaitsForEventsOnTheirWay(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		for _, tc := range []struct {
			name    string
			wait    time.Duration
			arrives bool
		}{
			{"arrives", time.Minute, true},
			{"lost", time.Millisecond, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				rdb := srv.Client(t)
				l, h := newTestHub(t, srv, LogConfig{}, HubConfig{TailWait: tc.wait})
				group := "job:on-the-way-" + tc.name
				var epoch string
				for i := 1; i <= 5; i++ {
					epoch = mustPublish(t, l, group, "progress", i).Epoch
				}
				anchor := &recSink{}
				defer mustSubscribe(t, h, group, 0, "", anchor).Close()
				waitFor(t, "the tail", func() bool { tl, _ := groupTail(h, group); return tl != nil && tl.last == 5 })

				// Event 6 appended as Publish does, but announced on no
				// channel the hub listens to: it is "on its way".
				ts := time.Now().UTC().Format(time.RFC3339Nano)
				args := l.appendArgs(group, "progress", []byte("6"), ts)
				args[6] = "elsewhere"
				if err := appendScript.Run(t.Context(), rdb, l.appendKeys(group), args...).Err(); err != nil {
					t.Fatal(err)
				}
				wantInfo, wantEvs := readAnswer(t, l, group, 2, epoch)
				reads := h.Counters().HistoryReads
				s := &recSink{}
				defer mustSubscribe(t, h, group, 2, epoch, s).Close()
				if tc.arrives {
					waitFor(t, "the batch waiting for event 6", func() bool {
						h.mu.Lock()
						g := h.groups[group]
						h.mu.Unlock()
						g.mu.Lock()
						defer g.mu.Unlock()
						return g.heard != nil && g.heardSeq == 6
					})
					payload := fmt.Sprintf("6\n%s\nprogress\n%s\n6", epoch, ts)
					if err := rdb.Publish(t.Context(), l.Channel(group), payload).Err(); err != nil {
						t.Fatal(err)
					}
				}
				waitFor(t, "the subscriber", func() bool { return s.reached(6, epoch) })
				if got := s.Syncs(); len(got) != 1 || !reflect.DeepEqual(got[0], wantInfo) {
					t.Fatalf("SyncInfo %v, want %+v (what a read gives)", got, wantInfo)
				}
				checkDelivery(t, "subscriber", s, 2, 6, epoch)
				if len(wantEvs) != 4 {
					t.Fatalf("the read gives %d events, want 3..6", len(wantEvs))
				}
				if served := h.Counters().HistoryReads == reads; served != tc.arrives {
					t.Fatalf("served from the tail: %v, want %v", served, tc.arrives)
				}
			})
		}
	})
}
