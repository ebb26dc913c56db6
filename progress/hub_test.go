package progress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// ---- a recording Sink ----

// item is one call a sink received: a SyncInfo or an event.
type item struct {
	sync *SyncInfo
	ev   *Event
}

func (it item) String() string {
	if it.sync != nil {
		return fmt.Sprintf("sync%+v", *it.sync)
	}
	return fmt.Sprintf("ev(%d@%s)", it.ev.Seq, it.ev.Epoch)
}

// recSink records what the hub delivers, in order. It can refuse events
// after a number of them, or refuse its SyncInfo, as a full send queue does.
type recSink struct {
	refuseAfter int  // Send refuses once this many events were accepted (0: never)
	refuseSync  bool // Synced refuses

	mu       sync.Mutex
	items    []item
	nEvents  int
	refusals int // Send/Synced calls that returned false
	calls    int // every Synced/Send call, refused ones included
	lagged   int
	failed   []error // Failed calls
}

func (s *recSink) Synced(info SyncInfo) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.refuseSync {
		s.refusals++
		return false
	}
	s.items = append(s.items, item{sync: &info})
	return true
}

func (s *recSink) Send(ev *Event) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.refuseAfter > 0 && s.nEvents >= s.refuseAfter {
		s.refusals++
		return false
	}
	s.items = append(s.items, item{ev: ev})
	s.nEvents++
	return true
}

func (s *recSink) Lagged() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lagged++
}

func (s *recSink) Failed(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failed = append(s.failed, err)
}

// Failures returns the errors the sink was failed with.
func (s *recSink) Failures() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]error(nil), s.failed...)
}

func (s *recSink) Items() []item {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]item(nil), s.items...)
}

func (s *recSink) Events() []*Event {
	var evs []*Event
	for _, it := range s.Items() {
		if it.ev != nil {
			evs = append(evs, it.ev)
		}
	}
	return evs
}

func (s *recSink) Syncs() []SyncInfo {
	var out []SyncInfo
	for _, it := range s.Items() {
		if it.sync != nil {
			out = append(out, *it.sync)
		}
	}
	return out
}

func (s *recSink) NumEvents() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nEvents
}

func (s *recSink) NumCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func (s *recSink) NumLagged() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lagged
}

// Last returns the last event received, or nil.
func (s *recSink) Last() *Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.items) - 1; i >= 0; i-- {
		if s.items[i].ev != nil {
			return s.items[i].ev
		}
	}
	return nil
}

// reached reports whether the sink's last event is seq of epoch (any epoch
// when epoch is "").
func (s *recSink) reached(seq int64, epoch string) bool {
	ev := s.Last()
	return ev != nil && ev.Seq >= seq && (epoch == "" || ev.Epoch == epoch)
}

func (s *recSink) dump() string {
	items := s.Items()
	parts := make([]string, 0, len(items))
	for i, it := range items {
		if len(items) > 60 && i == 30 {
			parts = append(parts, "…")
		}
		if len(items) > 60 && i >= 30 && i < len(items)-30 {
			continue
		}
		parts = append(parts, it.String())
	}
	return strings.Join(parts, " ")
}

// checkDelivery checks the whole stream a subscriber saw when nothing was
// lost: one initial, recovered SyncInfo announcing the replay of
// after+1..LastSeq, then exactly the events after+1..last in order.
func checkDelivery(t testing.TB, name string, s *recSink, after, last int64, epoch string) {
	t.Helper()
	items := s.Items()
	if len(items) == 0 || items[0].sync == nil {
		t.Fatalf("%s: first delivery is not a SyncInfo: %s", name, s.dump())
	}
	info := *items[0].sync
	if !info.Initial || !info.Recovered || info.Epoch != epoch && info.LastSeq > 0 {
		t.Fatalf("%s: first SyncInfo %+v, want initial, recovered, epoch %q", name, info, epoch)
	}
	if info.LastSeq < after || int64(info.Replayed) != info.LastSeq-after {
		t.Fatalf("%s: SyncInfo %+v after %d: Replayed must be LastSeq-after", name, info, after)
	}
	var evs []*Event
	for _, it := range items[1:] {
		if it.sync != nil {
			t.Fatalf("%s: unexpected second SyncInfo %+v: %s", name, *it.sync, s.dump())
		}
		evs = append(evs, it.ev)
	}
	checkContiguous(t, name, evs, after+1, last, epoch)
}

// ---- a gate that holds back the hub's reads of one group ----

// readGate is a go-redis hook for the client behind the hub's Log. When
// armed, it lets the next pipeline that touches key run on Redis, then
// holds its result back until release is closed, so a test can act while
// the hub's read of the log is in flight. Everything else passes through.
type readGate struct {
	key string

	mu      sync.Mutex
	armed   bool
	held    chan struct{}
	release chan struct{}
}

func (g *readGate) arm() (held, release chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.armed, g.held, g.release = true, make(chan struct{}), make(chan struct{})
	return g.held, g.release
}

func (g *readGate) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (g *readGate) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (g *readGate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		g.mu.Lock()
		catch := g.armed && touches(cmds, g.key)
		held, release := g.held, g.release
		if catch {
			g.armed = false
		}
		g.mu.Unlock()
		if catch {
			close(held)
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return err
	}
}

func touches(cmds []redis.Cmder, key string) bool {
	for _, c := range cmds {
		for _, a := range c.Args() {
			if s, ok := a.(string); ok && s == key {
				return true
			}
		}
	}
	return false
}

func waitChan(t testing.TB, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitTimeout):
		t.Fatalf("timed out after %v waiting for %s", waitTimeout, what)
	}
}

// ---- hub setup ----

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func shutdownHub(t testing.TB, h *Hub) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := h.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// newTestHub returns a Log and a Hub on srv, each with its own client, and
// shuts the hub down when the test ends.
func newTestHub(t testing.TB, srv *progresstest.Server, lcfg LogConfig, hcfg HubConfig) (*Log, *Hub) {
	t.Helper()
	l := NewLog(srv.Client(t), lcfg)
	if hcfg.Logger == nil {
		hcfg.Logger = testLogger(t)
	}
	h := NewHub(srv.Client(t), l, hcfg)
	t.Cleanup(func() { shutdownHub(t, h) })
	return l, h
}

func mustSubscribe(t testing.TB, h *Hub, group string, after int64, epoch string, sink Sink) *Subscription {
	t.Helper()
	sub, err := h.Subscribe(group, after, epoch, sink)
	if err != nil {
		t.Fatalf("Subscribe(%s, %d, %q): %v", group, after, epoch, err)
	}
	return sub
}

func numSub(t testing.TB, rdb *redis.Client, channel string) int64 {
	t.Helper()
	m, err := rdb.PubSubNumSub(context.Background(), channel).Result()
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB: %v", err)
	}
	return m[channel]
}

// ---- tests ----

func TestHubReplayThenLive(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
		const group, n = "job:replay", 20
		var epoch string
		for i := 1; i <= n; i++ {
			epoch = mustPublish(t, l, group, "progress", i).Epoch
		}
		sink := &recSink{}
		sub := mustSubscribe(t, h, group, 0, "", sink)
		defer sub.Close()
		if sub.Group() != group {
			t.Fatalf("Group() = %q", sub.Group())
		}
		waitFor(t, "the replay", func() bool { return sink.reached(n, "") })
		if got, want := sink.Syncs()[0], (SyncInfo{Epoch: epoch, LastSeq: n, Replayed: n, Recovered: true, Initial: true}); !reflect.DeepEqual(got, want) {
			t.Fatalf("SyncInfo %+v, want %+v", got, want)
		}
		// Live events continue the replay with no gap and no duplicate.
		for i := n + 1; i <= 2*n+10; i++ {
			mustPublish(t, l, group, "progress", i)
		}
		waitFor(t, "the live events", func() bool { return sink.reached(2*n+10, "") })
		checkDelivery(t, "subscriber", sink, 0, 2*n+10, epoch)
		for _, ev := range sink.Events() {
			if string(ev.Data) != fmt.Sprint(ev.Seq) || ev.Name != "progress" || ev.Group != group {
				t.Fatalf("event %d: %s %s %s", ev.Seq, ev.Group, ev.Name, ev.Data)
			}
		}
	})
}

func TestHubSubscribePosition(t *testing.T) {
	const n = 10
	wrongEpoch := func(string) string { return "00000000deadbeef" }
	rightEpoch := func(e string) string { return e }
	noEpoch := func(string) string { return "" }
	tests := []struct {
		name      string
		history   int64 // events in the log before subscribing
		after     int64
		epoch     func(actual string) string
		recovered bool
		wantFrom  int64 // first seq delivered
	}{
		{"after 0 without epoch", n, 0, noEpoch, true, 1},
		{"negative after", n, -3, noEpoch, true, 1},
		{"after 0 right epoch", n, 0, rightEpoch, true, 1},
		{"resume mid-log right epoch", n, 4, rightEpoch, true, 5},
		{"resume mid-log without epoch", n, 4, noEpoch, true, 5},
		{"resume at the end", n, n, rightEpoch, true, n + 1},
		{"resume mid-log wrong epoch", n, 4, wrongEpoch, false, 1},
		{"after 0 wrong epoch", n, 0, wrongEpoch, false, 1},
		{"at the end wrong epoch", n, n, wrongEpoch, false, 1},
		{"beyond the log right epoch", n, n + 5, rightEpoch, false, 1},
		{"beyond the log without epoch", n, n + 5, noEpoch, false, 1},
		{"empty group", 0, 0, noEpoch, true, 1},
		{"empty group with a stale position", 0, 7, wrongEpoch, false, 1},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
		for i, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				group := fmt.Sprintf("job:pos%d", i)
				var epoch string
				for j := int64(1); j <= tc.history; j++ {
					epoch = mustPublish(t, l, group, "state", j).Epoch
				}
				sink := &recSink{}
				sub := mustSubscribe(t, h, group, tc.after, tc.epoch(epoch), sink)
				defer sub.Close()
				waitFor(t, "the SyncInfo", func() bool { return len(sink.Syncs()) > 0 })
				waitFor(t, "the replay", func() bool { return tc.history < tc.wantFrom || sink.reached(tc.history, "") })
				want := SyncInfo{Epoch: epoch, LastSeq: tc.history, Replayed: int(tc.history - tc.wantFrom + 1),
					Recovered: tc.recovered, Initial: true}
				if got := sink.Items()[0]; got.sync == nil || !reflect.DeepEqual(*got.sync, want) {
					t.Fatalf("first delivery %v, want sync%+v", got, want)
				}
				// Live events follow with no gap and no duplicate.
				for j := tc.history + 1; j <= tc.history+3; j++ {
					ev := mustPublish(t, l, group, "state", j)
					epoch = ev.Epoch
				}
				waitFor(t, "the live events", func() bool { return sink.reached(tc.history+3, "") })
				evs := sink.Events()
				checkContiguous(t, "delivered", evs, tc.wantFrom, tc.history+3, epoch)
				if s := sink.Syncs(); len(s) != 1 {
					t.Fatalf("got %d SyncInfos, want 1: %s", len(s), sink.dump())
				}
			})
		}
	})
}

// The race this package exists for: subscribers join at random points
// while a publisher runs flat out, each with after=0 or a random position,
// and each must see exactly after+1..M, in order, once.
func TestHubSubscribeWhilePublishing(t *testing.T) {
	iterations, m, subscribers := 50, int64(200), 6
	if testing.Short() {
		iterations = 10
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		pub := NewLog(srv.Client(t), LogConfig{})
		_, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
		seed := rand.Uint64()
		t.Logf("seed %d", seed)
		rng := rand.New(rand.NewPCG(seed, 1))
		for it := range iterations {
			group := fmt.Sprintf("job:race%d", it)
			var published atomic.Int64
			var epoch atomic.Value
			pubErr := make(chan error, 1)
			go func() {
				defer close(pubErr)
				for i := int64(1); i <= m; i++ {
					ev, err := pub.Publish(context.Background(), group, "progress", i)
					if err != nil {
						pubErr <- err
						return
					}
					if i == 1 {
						epoch.Store(ev.Epoch)
					}
					published.Store(i)
				}
			}()
			type racer struct {
				sink  *recSink
				sub   *Subscription
				after int64
				err   error
			}
			racers := make([]*racer, subscribers)
			var wg sync.WaitGroup
			for k := range racers {
				r := &racer{sink: &recSink{}}
				racers[k] = r
				at := rng.Int64N(m + 1)       // join once this many events are out
				withAfter := rng.IntN(2) == 0 // resume from a position, or from 0
				frac := rng.Float64()         // which position
				wg.Go(func() {
					for published.Load() < at {
						time.Sleep(20 * time.Microsecond)
					}
					var ep string
					if p := published.Load(); withAfter && p > 0 {
						r.after = min(int64(frac*float64(p+1)), p)
						ep = epoch.Load().(string)
					}
					r.sub, r.err = h.Subscribe(group, r.after, ep, r.sink)
				})
			}
			wg.Wait()
			if err := <-pubErr; err != nil {
				t.Fatalf("publish: %v", err)
			}
			for k, r := range racers {
				if r.err != nil {
					t.Fatalf("subscriber %d: %v", k, r.err)
				}
				waitFor(t, fmt.Sprintf("iteration %d subscriber %d (after %d) to reach seq %d", it, k, r.after, m),
					func() bool { return len(r.sink.Syncs()) > 0 && (r.after >= m || r.sink.reached(m, "")) })
			}
			for k, r := range racers {
				checkDelivery(t, fmt.Sprintf("iteration %d subscriber %d (after %d)", it, k, r.after),
					r.sink, r.after, m, epoch.Load().(string))
				r.sub.Close()
			}
		}
		waitFor(t, "all groups to be released", func() bool { return h.Stats() == HubStats{} })
	})
}

// The first events of a brand-new group, published while subscribers are
// joining, must arrive without waiting for a later event.
func TestHubFirstEventsOfNewGroup(t *testing.T) {
	iterations := 100
	if testing.Short() {
		iterations = 20
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		pub := NewLog(srv.Client(t), LogConfig{})
		_, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
		for it := range iterations {
			group := fmt.Sprintf("job:first%d", it)
			events := int64(1 + it%3)
			delay := time.Duration(rand.IntN(1500)) * time.Microsecond
			done := make(chan error, 1)
			go func() {
				time.Sleep(delay)
				for range events {
					if _, err := pub.Publish(context.Background(), group, "state", "x"); err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
			a, b := &recSink{}, &recSink{}
			start := time.Now()
			defer func() {
				if d := time.Since(start); d > 500*time.Millisecond {
					t.Logf("slow iteration %d took %v: a=%s b=%s", it, d, a.dump(), b.dump())
				}
			}()
			subA := mustSubscribe(t, h, group, 0, "", a)
			subB := mustSubscribe(t, h, group, 0, "", b)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			for _, s := range []*recSink{a, b} {
				waitFor(t, fmt.Sprintf("iteration %d: seq %d", it, events), func() bool { return s.reached(events, "") })
				checkDelivery(t, fmt.Sprintf("iteration %d", it), s, 0, events, s.Last().Epoch)
			}
			subA.Close()
			subB.Close()
		}
	})
}

// Deterministic form of the case above: an event published while a new
// subscriber's first read of a still-empty log is in flight reaches the
// live path (the subscriber's pending buffer) with an epoch the read
// did not see. It must be delivered, not dropped.
func TestHubEventDuringFirstReadOfEmptyLog(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		const group = "job:empty"
		pub := NewLog(srv.Client(t), LogConfig{})
		gated := srv.Client(t)
		gate := &readGate{key: pub.metaKey(group)}
		gated.AddHook(gate)
		h := NewHub(srv.Client(t), NewLog(gated, LogConfig{}), HubConfig{Logger: testLogger(t)})
		t.Cleanup(func() { shutdownHub(t, h) })

		b := &recSink{} // a live subscriber: when it has an event, so has a's buffer
		defer mustSubscribe(t, h, group, 0, "", b).Close()
		waitFor(t, "b's SyncInfo", func() bool { return len(b.Syncs()) == 1 })

		// b's read left an empty tail that would serve a without a read;
		// without one (as after a reconnect) a reads the log.
		dropGroupTail(h, group)
		held, release := gate.arm()
		a := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", a).Close()
		waitChan(t, "a's read of the log", held) // it has run: the log was empty
		ev := mustPublish(t, pub, group, "state", "first")
		waitFor(t, "b to get the event", func() bool { return b.reached(1, ev.Epoch) })
		close(release)
		waitFor(t, "a to get the event published during its read", func() bool { return a.reached(1, ev.Epoch) })
		checkDelivery(t, "a", a, 0, 1, ev.Epoch)
		checkDelivery(t, "b", b, 0, 1, ev.Epoch)
		if got, want := a.Syncs()[0], (SyncInfo{Recovered: true, Initial: true}); !reflect.DeepEqual(got, want) {
			t.Fatalf("a's SyncInfo %+v, want %+v", got, want)
		}
	})
}

// A subscription confirmation for a group whose subscribers are already
// live (a reconnect, or a repeated SUBSCRIBE) starts a catch-up read.
// Live events delivered while that read is in flight must neither be
// duplicated nor make the read look like lost history.
func TestHubCatchupReadWithLiveEvents(t *testing.T) {
	triggers := []struct {
		name      string
		realOnly  bool
		confirmOn func(t *testing.T, h *Hub, rdb *redis.Client, channel string)
	}{
		{"repeated SUBSCRIBE", false, func(t *testing.T, h *Hub, _ *redis.Client, channel string) {
			h.mu.Lock()
			ps := h.feeds[""].ps
			h.mu.Unlock()
			if err := ps.Subscribe(context.Background(), channel); err != nil {
				t.Fatal(err)
			}
		}},
		{"CLIENT KILL TYPE pubsub", true, func(t *testing.T, _ *Hub, rdb *redis.Client, _ string) {
			n, err := rdb.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Result()
			if err != nil || n != 1 {
				t.Fatalf("CLIENT KILL TYPE pubsub = %d, %v; want 1 connection killed", n, err)
			}
		}},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		for i, tc := range triggers {
			t.Run(tc.name, func(t *testing.T) {
				if tc.realOnly && srv.Miniredis() != nil {
					t.Skip("miniredis has no CLIENT KILL")
				}
				group := fmt.Sprintf("job:catchup%d", i)
				rdb := srv.Client(t)
				pub := NewLog(rdb, LogConfig{})
				gated := srv.Client(t)
				gate := &readGate{key: pub.metaKey(group)}
				gated.AddHook(gate)
				h := NewHub(srv.Client(t), NewLog(gated, LogConfig{}), HubConfig{Logger: testLogger(t)})
				defer shutdownHub(t, h)

				a := &recSink{}
				subA := mustSubscribe(t, h, group, 0, "", a)
				defer subA.Close()
				for range 3 {
					mustPublish(t, pub, group, "state", "before")
				}
				waitFor(t, "seq 3", func() bool { return a.reached(3, "") })

				held, release := gate.arm()
				tc.confirmOn(t, h, rdb, pub.Channel(group))
				waitChan(t, "the catch-up read", held) // it read seq 1..3
				mustPublish(t, pub, group, "state", "during")
				last := mustPublish(t, pub, group, "state", "during")
				// The hub holds both back for a until the read is applied.
				// (Not a marker group's event on the same connection: after
				// CLIENT KILL the marker's catch-up read shares the held
				// read's round trip, so it is held too.)
				waitFor(t, "the events published during the read", func() bool { return pendingOf(subA) == 2 })
				close(release)
				waitFor(t, "seq 5", func() bool { return a.reached(5, "") })
				// One more live event proves nothing is stuck.
				mustPublish(t, pub, group, "state", "after")
				waitFor(t, "seq 6", func() bool { return a.reached(6, "") })
				checkDelivery(t, "a", a, 0, 6, last.Epoch)
			})
		}
	})
}

// pendingOf is how many live events the hub holds back for sub while it
// waits for a read of the log.
func pendingOf(sub *Subscription) int {
	sub.group.mu.Lock()
	defer sub.group.mu.Unlock()
	return len(sub.pending)
}

func TestHubManySubscribersShareOneRedisSubscription(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		l, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
		const group, n = "chat:big", 500
		channel := l.Channel(group)
		mustPublish(t, l, group, "message", "hello")
		sinks := make([]*recSink, n)
		subs := make([]*Subscription, n)
		var wg sync.WaitGroup
		for i := range subs {
			sinks[i] = &recSink{}
			wg.Go(func() {
				var err error
				if subs[i], err = h.Subscribe(group, 0, "", sinks[i]); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		waitFor(t, "NUMSUB 1", func() bool { return numSub(t, rdb, channel) == 1 })
		if st := h.Stats(); st != (HubStats{Groups: 1, Subscribers: n}) {
			t.Fatalf("Stats %+v", st)
		}
		for i, s := range sinks {
			waitFor(t, fmt.Sprintf("subscriber %d's replay", i), func() bool { return s.reached(1, "") })
		}
		last := mustPublish(t, l, group, "message", "everyone")
		for i, s := range sinks {
			waitFor(t, fmt.Sprintf("subscriber %d", i), func() bool { return s.reached(2, "") })
			checkDelivery(t, fmt.Sprintf("subscriber %d", i), s, 0, 2, last.Epoch)
		}
		// The shared event is encoded once for everyone.
		if &sinks[0].Last().Frame()[0] != &sinks[n-1].Last().Frame()[0] {
			t.Fatal("subscribers got different *Event values for one live event")
		}
		if numSub(t, rdb, channel) != 1 {
			t.Fatal("more than one Redis subscription")
		}
		for i, sub := range subs {
			wg.Go(func() {
				sub.Close()
				sub.Close() // idempotent
			})
			if i == n/2 {
				wg.Wait()
				if st := h.Stats(); st != (HubStats{Groups: 1, Subscribers: n - n/2 - 1}) {
					t.Fatalf("Stats %+v after closing half", st)
				}
			}
		}
		wg.Wait()
		if st := h.Stats(); st != (HubStats{}) {
			t.Fatalf("Stats %+v after closing all, want zero", st)
		}
		waitFor(t, "NUMSUB 0", func() bool { return numSub(t, rdb, channel) == 0 })
	})
}

// Subscribing and closing the same group over and over (and from several
// goroutines) interleaves SUBSCRIBE and UNSUBSCRIBE for one channel; the
// subscriber that stays must still get every event, and every short-lived
// one a gap-free prefix.
func TestHubResubscribeLoop(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		pub := NewLog(rdb, LogConfig{})
		_, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
		const group, m = "job:flap", int64(300)
		pubDone := make(chan error, 1)
		go func() {
			for i := int64(1); i <= m; i++ {
				if _, err := pub.Publish(context.Background(), group, "progress", i); err != nil {
					pubDone <- err
					return
				}
				if i%10 == 0 {
					time.Sleep(100 * time.Microsecond) // spread the events over the loop
				}
			}
			pubDone <- nil
		}()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var flappers []*recSink
		for w := range 3 {
			wg.Go(func() {
				for i := range 60 {
					s := &recSink{}
					sub, err := h.Subscribe(group, 0, "", s)
					if err != nil {
						t.Error(err)
						return
					}
					if (i+w)%3 == 0 {
						runtime.Gosched()
					} else if (i+w)%3 == 1 {
						time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
					}
					sub.Close()
					mu.Lock()
					flappers = append(flappers, s)
					mu.Unlock()
				}
			})
		}
		final := &recSink{}
		var finalSub *Subscription
		wg.Go(func() {
			time.Sleep(time.Millisecond)
			var err error
			if finalSub, err = h.Subscribe(group, 0, "", final); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		if err := <-pubDone; err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			t.FailNow()
		}
		defer finalSub.Close()
		waitFor(t, "the final subscriber to get every event", func() bool { return final.reached(m, "") })
		epoch := final.Last().Epoch
		for i := m + 1; i <= m+5; i++ {
			mustPublish(t, pub, group, "progress", i)
		}
		waitFor(t, "the live events after the loop", func() bool { return final.reached(m+5, "") })
		checkDelivery(t, "final", final, 0, m+5, epoch)
		for i, s := range flappers {
			// A closed subscription saw a prefix: maybe nothing, else the
			// SyncInfo and then 1..k with no gap and no duplicate.
			items := s.Items()
			if len(items) == 0 {
				continue
			}
			evs := s.Events()
			checkDelivery(t, fmt.Sprintf("short-lived subscriber %d", i), s, 0, int64(len(evs)), epoch)
		}
		waitFor(t, "one Redis subscription", func() bool { return numSub(t, rdb, pub.Channel(group)) == 1 })
		if st := h.Stats(); st != (HubStats{Groups: 1, Subscribers: 1}) {
			t.Fatalf("Stats %+v, want 1 group, 1 subscriber", st)
		}
	})
}

// A Redis restart without persistence loses every log. The hub must
// reconnect by itself; a live subscriber learns that history is gone
// (Recovered false) and continues with the new epoch from seq 1.
func TestHubRedisRestart(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
		const group = "job:restart"
		sink := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", sink).Close()
		var old *Event
		for range 5 {
			old = mustPublish(t, l, group, "state", "before")
		}
		waitFor(t, "the events before the restart", func() bool { return sink.reached(5, old.Epoch) })

		srv.Restart(t)

		check := srv.Client(t)
		var numsub map[string]int64
		var nsErr error
		waitForDiag(t, "the hub to resubscribe after the restart", func() bool {
			numsub, nsErr = check.PubSubNumSub(context.Background(), l.Channel(group)).Result()
			return nsErr == nil && numsub[l.Channel(group)] == 1
		}, func() string {
			return fmt.Sprintf("NUMSUB %v %v, stats %+v, sink %s", numsub, nsErr, h.Stats(), sink.dump())
		})
		var first *Event
		waitFor(t, "a publish to succeed after the restart", func() bool {
			var err error
			first, err = l.Publish(context.Background(), group, "state", "after")
			return err == nil
		})
		if first.Seq != 1 || first.Epoch == old.Epoch {
			t.Fatalf("first event after the restart: seq %d epoch %q (old %q)", first.Seq, first.Epoch, old.Epoch)
		}
		for range 4 {
			mustPublish(t, l, group, "state", "after")
		}
		waitForDiag(t, "the events after the restart", func() bool { return sink.reached(5, first.Epoch) }, func() string {
			return fmt.Sprintf("new epoch %s, stats %+v, NUMSUB %d, sink %s", first.Epoch, h.Stats(), numSub(t, check, l.Channel(group)), sink.dump())
		})

		items := sink.Items()
		// Before: the initial SyncInfo and old 1..5.
		var before []*Event
		i := 1
		for ; i < len(items) && items[i].ev != nil && items[i].ev.Epoch == old.Epoch; i++ {
			before = append(before, items[i].ev)
		}
		checkContiguous(t, "before the restart", before, 1, 5, old.Epoch)
		// Then one SyncInfo saying history is gone, then new 1..5.
		if i >= len(items) || items[i].sync == nil {
			t.Fatalf("no SyncInfo after the restart: %s", sink.dump())
		}
		info := *items[i].sync
		if info.Recovered || info.Initial || (info.Epoch != "" && info.Epoch != first.Epoch) {
			t.Fatalf("SyncInfo after the restart %+v, want Recovered false for the new log: %s", info, sink.dump())
		}
		var after []*Event
		for _, it := range items[i+1:] {
			if it.sync != nil {
				t.Fatalf("second SyncInfo after the restart: %s", sink.dump())
			}
			after = append(after, it.ev)
		}
		checkContiguous(t, "after the restart", after, 1, 5, first.Epoch)
		if n := numSub(t, check, l.Channel(group)); n != 1 {
			t.Fatalf("NUMSUB %d after the restart", n)
		}

		// A new subscriber after the restart sees the new log.
		fresh := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", fresh).Close()
		waitFor(t, "a fresh subscriber", func() bool { return fresh.reached(5, first.Epoch) })
		checkDelivery(t, "fresh", fresh, 0, 5, first.Epoch)
	})
}

// A sink that refuses stops receiving; it neither blocks nor disturbs the
// other subscribers of its group.
func TestHubRefusingSinkDoesNotAffectOthers(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
		const group, n = "chat:slow", int64(50)
		mustPublish(t, l, group, "message", 1)
		normal1, normal2 := &recSink{}, &recSink{}
		refuseAt3 := &recSink{refuseAfter: 3}
		refuseSync := &recSink{refuseSync: true}
		for _, s := range []*recSink{normal1, refuseAt3, refuseSync, normal2} {
			defer mustSubscribe(t, h, group, 0, "", s).Close()
		}
		waitFor(t, "the SyncInfos", func() bool { return normal1.reached(1, "") && normal2.reached(1, "") })
		var last *Event
		for i := int64(2); i <= n; i++ {
			last = mustPublish(t, l, group, "message", i)
		}
		for _, s := range []*recSink{normal1, normal2} {
			waitFor(t, "every event", func() bool { return s.reached(n, "") })
			checkDelivery(t, "normal subscriber", s, 0, n, last.Epoch)
		}
		// The refusing sinks were asked once more, then never again.
		if evs := refuseAt3.Events(); len(evs) != 3 || refuseAt3.NumCalls() != 1+4 {
			t.Fatalf("refusing sink: %d events, %d calls (want 3 events, 5 calls): %s", len(evs), refuseAt3.NumCalls(), refuseAt3.dump())
		}
		checkContiguous(t, "refusing sink", refuseAt3.Events(), 1, 3, last.Epoch)
		if refuseSync.NumCalls() != 1 || len(refuseSync.Items()) != 0 {
			t.Fatalf("sink that refused its SyncInfo: %d calls, items %s", refuseSync.NumCalls(), refuseSync.dump())
		}
		if st := h.Stats(); st.Subscribers != 4 {
			t.Fatalf("Stats %+v: a refused subscription stays until the caller closes it", st)
		}
	})
}

// A subscriber whose live buffer overflows while its history is being read
// is dropped with one Lagged call; the others are not affected.
func TestHubLaggedSubscriber(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		const group, limit = "job:lag", 4
		pub := NewLog(srv.Client(t), LogConfig{})
		gated := srv.Client(t)
		gate := &readGate{key: pub.metaKey(group)}
		gated.AddHook(gate)
		h := NewHub(srv.Client(t), NewLog(gated, LogConfig{}), HubConfig{PendingLimit: limit, Logger: testLogger(t)})
		t.Cleanup(func() { shutdownHub(t, h) })

		live := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", live).Close()
		waitFor(t, "the live subscriber's SyncInfo", func() bool { return len(live.Syncs()) == 1 })
		dropGroupTail(h, group) // so the slow subscriber reads the log
		held, release := gate.arm()
		slow := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", slow).Close()
		waitChan(t, "the slow subscriber's read", held)
		var last *Event
		for range limit + 3 {
			last = mustPublish(t, pub, group, "state", "x")
		}
		waitFor(t, "the live subscriber", func() bool { return live.reached(last.Seq, "") })
		if slow.NumLagged() != 1 {
			t.Fatalf("Lagged called %d times, want 1", slow.NumLagged())
		}
		close(release)
		mustPublish(t, pub, group, "state", "y")
		waitFor(t, "the live subscriber", func() bool { return live.reached(last.Seq+1, "") })
		checkDelivery(t, "live", live, 0, last.Seq+1, last.Epoch)
		if slow.NumCalls() != 0 || slow.NumLagged() != 1 {
			t.Fatalf("dropped subscriber got %d calls, %d Lagged: %s", slow.NumCalls(), slow.NumLagged(), slow.dump())
		}
	})
}

func TestHubCloseStopsDelivery(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		l, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
		const group = "user:u1"
		a, b := &recSink{}, &recSink{}
		subA := mustSubscribe(t, h, group, 0, "", a)
		defer mustSubscribe(t, h, group, 0, "", b).Close()
		mustPublish(t, l, group, "notification", 1)
		waitFor(t, "both", func() bool { return a.reached(1, "") && b.reached(1, "") })
		subA.Close()
		n := a.NumCalls()
		last := mustPublish(t, l, group, "notification", 2)
		waitFor(t, "b", func() bool { return b.reached(2, "") })
		if a.NumCalls() != n {
			t.Fatalf("a closed subscription still receives: %s", a.dump())
		}
		checkDelivery(t, "b", b, 0, 2, last.Epoch)
		if st := h.Stats(); st != (HubStats{Groups: 1, Subscribers: 1}) {
			t.Fatalf("Stats %+v", st)
		}
	})
}

func TestHubShutdown(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		l := NewLog(rdb, LogConfig{})
		h := NewHub(srv.Client(t), l, HubConfig{Logger: testLogger(t)})
		if _, err := h.Subscribe("not a group", 0, "", &recSink{}); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Subscribe(invalid) = %v, want ErrInvalid", err)
		}
		const group = "job:sd"
		sink := &recSink{}
		sub := mustSubscribe(t, h, group, 0, "", sink)
		mustPublish(t, l, group, "state", 1)
		waitFor(t, "the event", func() bool { return sink.reached(1, "") })

		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() { shutdownHub(t, h) })
		}
		wg.Wait()
		shutdownHub(t, h)
		// Already stopped: even a cancelled context does not make it fail.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		for range 20 {
			if err := h.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown(cancelled) after the hub stopped = %v, want nil", err)
			}
		}
		if _, err := h.Subscribe(group, 0, "", &recSink{}); !errors.Is(err, ErrClosed) {
			t.Fatalf("Subscribe after Shutdown = %v, want ErrClosed", err)
		}
		// No more events after Shutdown: its goroutines are gone.
		n := sink.NumCalls()
		mustPublish(t, l, group, "state", 2)
		waitFor(t, "NUMSUB 0", func() bool { return numSub(t, rdb, l.Channel(group)) == 0 })
		if sink.NumCalls() != n {
			t.Fatalf("delivery after Shutdown: %s", sink.dump())
		}
		sub.Close()
		sub.Close()
		if st := h.Stats(); st != (HubStats{}) {
			t.Fatalf("Stats %+v", st)
		}
	})
}

// Shutdown waits for a hub's goroutines: after it, and after the clients
// are closed, the process is back to the goroutines it had before.
func TestHubNoGoroutineLeak(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		pub := srv.Client(t)
		if err := pub.Ping(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		base := runtime.NumGoroutine()

		hubRdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
		logRdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
		l := NewLog(logRdb, LogConfig{})
		pl := NewLog(pub, LogConfig{})
		h := NewHub(hubRdb, l, HubConfig{Logger: testLogger(t)})
		var sinks []*recSink
		var subs []*Subscription
		for i := range 20 {
			s := &recSink{}
			sinks = append(sinks, s)
			subs = append(subs, mustSubscribe(t, h, fmt.Sprintf("job:leak%d", i%7), 0, "", s))
		}
		for i := range 7 {
			mustPublish(t, pl, fmt.Sprintf("job:leak%d", i), "state", i)
		}
		for _, s := range sinks {
			waitFor(t, "delivery", func() bool { return s.reached(1, "") })
		}
		// Close some, leave the rest to Shutdown.
		for _, sub := range subs[:10] {
			sub.Close()
		}
		shutdownHub(t, h)
		for _, sub := range subs[10:] {
			sub.Close()
		}
		_ = hubRdb.Close()
		_ = logRdb.Close()
		const slack = 2
		var now int
		waitFor(t, "the goroutines to end", func() bool {
			now = runtime.NumGoroutine()
			return now <= base+slack
		})
		t.Logf("goroutines: %d before, %d after", base, now)
	})
}

// blackholeProxy forwards TCP connections to a Redis server. Blackhole
// makes every connection open so far go silent in both directions without
// closing it, as a network partition or a vanished host does (a half-open
// connection); connections made later work normally.
type blackholeProxy struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	conns []*proxiedConn
	wg    sync.WaitGroup
}

type proxiedConn struct {
	client, server net.Conn
	silent         atomic.Bool
}

func newBlackholeProxy(t testing.TB, target string) *blackholeProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{l: l, target: target}
	p.wg.Go(p.serve)
	t.Cleanup(p.Close)
	return p
}

func (p *blackholeProxy) Addr() string { return p.l.Addr().String() }

func (p *blackholeProxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		pc := &proxiedConn{client: c, server: s}
		p.mu.Lock()
		p.conns = append(p.conns, pc)
		p.mu.Unlock()
		p.wg.Go(func() { pc.pipe(c, s) })
		p.wg.Go(func() { pc.pipe(s, c) })
	}
}

// pipe copies src to dst until either side closes; once the connection is
// silent it keeps reading src (so the sender never blocks) but drops it.
func (pc *proxiedConn) pipe(src, dst net.Conn) {
	defer func() { _ = pc.client.Close(); _ = pc.server.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !pc.silent.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *blackholeProxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pc := range p.conns {
		pc.silent.Store(true)
	}
}

func (p *blackholeProxy) Close() {
	_ = p.l.Close()
	p.mu.Lock()
	for _, pc := range p.conns {
		_ = pc.client.Close()
		_ = pc.server.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// A subscription connection that goes silent without being closed (a
// half-open TCP connection) must be noticed by the ping check and replaced;
// the subscriber then gets the events published meanwhile.
func TestHubReconnectsHalfOpenConnection(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		proxy := newBlackholeProxy(t, srv.Addr)
		viaProxy := redis.NewClient(&redis.Options{Addr: proxy.Addr()})
		t.Cleanup(func() { _ = viaProxy.Close() })
		l := NewLog(srv.Client(t), LogConfig{})
		h := NewHub(viaProxy, l, HubConfig{PingInterval: 100 * time.Millisecond, Logger: testLogger(t)})
		t.Cleanup(func() { shutdownHub(t, h) })

		const group = "job:halfopen"
		sink := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", sink).Close()
		ev := mustPublish(t, l, group, "state", 1)
		waitFor(t, "the first event", func() bool { return sink.reached(1, ev.Epoch) })

		proxy.Blackhole()
		for range 3 {
			ev = mustPublish(t, l, group, "state", "during")
		}
		waitFor(t, "the events published after the connection went silent", func() bool { return sink.reached(4, ev.Epoch) })
		ev = mustPublish(t, l, group, "state", "after")
		waitFor(t, "live delivery on the new connection", func() bool { return sink.reached(5, ev.Epoch) })
		checkDelivery(t, "subscriber", sink, 0, 5, ev.Epoch)
	})
}

// countHandler counts log records by message, and passes them on.
type countHandler struct {
	slog.Handler
	mu     *sync.Mutex
	counts map[string]int
}

func (h countHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	h.counts[r.Message]++
	h.mu.Unlock()
	return h.Handler.Handle(ctx, r)
}

func (h countHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return countHandler{h.Handler.WithAttrs(as), h.mu, h.counts}
}

func (h countHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[msg]
}

// An idle but healthy connection answers the hub's pings: delivery keeps
// working across many ping intervals.
func TestHubIdlePingsKeepConnection(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		counter := countHandler{testLogger(t).Handler(), new(sync.Mutex), map[string]int{}}
		l := NewLog(srv.Client(t), LogConfig{})
		h := NewHub(srv.Client(t), l, HubConfig{PingInterval: 20 * time.Millisecond, Logger: slog.New(counter)})
		t.Cleanup(func() { shutdownHub(t, h) })
		const group = "dashboard"
		sink := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", sink).Close()
		waitFor(t, "the SyncInfo", func() bool { return len(sink.Syncs()) == 1 })
		for i := int64(1); i <= 5; i++ {
			time.Sleep(100 * time.Millisecond) // idle for several ping intervals
			ev := mustPublish(t, l, group, "stats", i)
			waitFor(t, fmt.Sprintf("event %d", i), func() bool { return sink.reached(i, ev.Epoch) })
		}
		checkDelivery(t, "subscriber", sink, 0, 5, sink.Last().Epoch)
		waitFor(t, "NUMSUB 1", func() bool { return numSub(t, rdb, l.Channel(group)) == 1 })
		t.Logf("reconnects while idle: %d", counter.count("redis subscription lost; reconnecting"))
	})
}

// Groups subscribed while the subscription connection is being killed
// (and redialled) must still be subscribed in the end: every subscriber
// gets its SyncInfo and live events.
func TestHubSubscribeDuringConnectionKills(t *testing.T) {
	srv := progresstest.Real(t) // CLIENT KILL: real redis-server only
	rdb := srv.Client(t)
	l, h := newTestHub(t, srv, LogConfig{}, HubConfig{Logger: quietLogger()})
	stop := make(chan struct{})
	var killer sync.WaitGroup
	killer.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = rdb.ClientKillByFilter(context.Background(), "TYPE", "pubsub").Err()
			time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		}
	})
	var sinks []*recSink
	var groups []string
	for i := range 400 {
		g := fmt.Sprintf("job:kill%d", i)
		s := &recSink{}
		defer mustSubscribe(t, h, g, 0, "", s).Close()
		sinks, groups = append(sinks, s), append(groups, g)
		if i%10 == 0 {
			time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
		}
	}
	close(stop)
	killer.Wait()
	for i, s := range sinks {
		waitForDiag(t, fmt.Sprintf("group %s's SyncInfo", groups[i]), func() bool { return len(s.Syncs()) > 0 },
			func() string { return fmt.Sprintf("NUMSUB %d", numSub(t, rdb, l.Channel(groups[i]))) })
	}
	for _, g := range groups {
		mustPublish(t, l, g, "state", "x")
	}
	for i, s := range sinks {
		waitFor(t, "live delivery to "+groups[i], func() bool { return s.reached(1, "") })
	}
}

// Redis may answer a SUBSCRIBE with an error (here an ACL that does not
// yet allow the channel; after a restart, a server that is not ready).
// The hub must not take the group for subscribed: it retries until Redis
// accepts, and the subscriber then gets its history and live events.
func TestHubRetriesRefusedSubscribe(t *testing.T) {
	srv := progresstest.Real(t) // ACL channel permissions: real redis-server only
	admin := srv.Client(t)
	ctx := context.Background()
	const group = "job:acl"
	l := NewLog(admin, LogConfig{})
	if err := admin.Do(ctx, "ACL", "SETUSER", "hub", "on", ">pw", "~*", "+@all", "resetchannels", "&ts:ch:job:other").Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	hubRdb := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "hub", Password: "pw"})
	t.Cleanup(func() { _ = hubRdb.Close() })
	counter := countHandler{testLogger(t).Handler(), new(sync.Mutex), map[string]int{}}
	h := NewHub(hubRdb, NewLog(hubRdb, LogConfig{}), HubConfig{Logger: slog.New(counter)})
	t.Cleanup(func() { shutdownHub(t, h) })

	ev := mustPublish(t, l, group, "state", "x")
	sink := &recSink{}
	defer mustSubscribe(t, h, group, 0, "", sink).Close()
	waitFor(t, "Redis to refuse the SUBSCRIBE (ACL LOG)", func() bool {
		entries, err := admin.Do(ctx, "ACL", "LOG").Slice()
		if err != nil {
			t.Fatalf("ACL LOG: %v", err)
		}
		return strings.Contains(fmt.Sprint(entries), "ts:ch:"+group)
	})
	if n := len(sink.Items()); n != 0 {
		t.Fatalf("a refused subscription delivered %s", sink.dump())
	}
	if err := admin.Do(ctx, "ACL", "SETUSER", "hub", "&ts:ch:"+group).Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	waitFor(t, "the subscription once allowed", func() bool { return sink.reached(1, ev.Epoch) })
	last := mustPublish(t, l, group, "state", "y")
	waitFor(t, "live delivery", func() bool { return sink.reached(2, last.Epoch) })
	checkDelivery(t, "subscriber", sink, 0, 2, last.Epoch)
	t.Logf("refusals logged: %d", counter.count("redis refused a subscription; resubscribing"))
}

// Many groups coming and going, some subscribed again under the same name
// right after their last subscriber left: the hub's Redis subscriptions
// end up exactly the live groups (the control loop looks only at the
// groups that changed, not at every live one), and each live group still
// delivers.
func TestHubSubscriptionsFollowGroupChurn(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		l, h := newTestHub(t, srv, LogConfig{}, HubConfig{})
		const n = 300
		name := func(i int) string { return fmt.Sprintf("job:churn%d", i) }
		channels := func() []string {
			chans, err := rdb.PubSubChannels(context.Background(), l.Channel("job:churn*")).Result()
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(chans)
			return chans
		}
		want := func(live map[int]bool) []string {
			var out []string
			for i := range live {
				out = append(out, l.Channel(name(i)))
			}
			slices.Sort(out)
			return out
		}
		subs := map[int]*Subscription{}
		sinks := map[int]*recSink{}
		live := map[int]bool{}
		for i := 0; i < n; i++ {
			sinks[i] = &recSink{}
			subs[i] = mustSubscribe(t, h, name(i), 0, "", sinks[i])
			live[i] = true
		}
		waitForDiag(t, "every group subscribed", func() bool { return slices.Equal(channels(), want(live)) },
			func() string { return fmt.Sprintf("%d channels subscribed, want %d", len(channels()), len(live)) })
		for i := 0; i < n; i += 2 {
			subs[i].Close()
			delete(live, i)
			if i%4 == 0 { // back at once, under the same name
				sinks[i] = &recSink{}
				subs[i] = mustSubscribe(t, h, name(i), 0, "", sinks[i])
				live[i] = true
			}
		}
		waitForDiag(t, "the subscriptions to follow the groups", func() bool { return slices.Equal(channels(), want(live)) },
			func() string { return fmt.Sprintf("%d channels subscribed, want %d", len(channels()), len(live)) })
		for i := range live {
			ev := mustPublish(t, l, name(i), "note", i)
			waitFor(t, name(i)+"'s event", func() bool { return sinks[i].reached(ev.Seq, ev.Epoch) })
		}
		for i := range live {
			subs[i].Close()
		}
		waitFor(t, "no subscription left", func() bool { return len(channels()) == 0 })
	})
}

// The hub keeps the subscribers that wait for a read of the log apart
// from the others, so that a sync looks at those alone (in a join storm a
// room of thousands gets a sync every few new sockets): none once every
// subscriber is served, only the new one while its read is in flight,
// every one during a catch-up read after a (re)subscription and none
// after it, none kept for a subscriber closed while it waited.
func TestHubSyncLooksAtWaitingSubscribers(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		const group = "job:waiting"
		pub := NewLog(srv.Client(t), LogConfig{})
		gated := srv.Client(t)
		gate := &readGate{key: pub.metaKey(group)}
		gated.AddHook(gate)
		h := NewHub(srv.Client(t), NewLog(gated, LogConfig{}), HubConfig{Logger: testLogger(t)})
		defer shutdownHub(t, h)
		mustPublish(t, pub, group, "state", "first")
		waiting := func() int {
			h.mu.Lock()
			g := h.groups[group]
			h.mu.Unlock()
			g.mu.Lock()
			defer g.mu.Unlock()
			return len(g.syncing)
		}
		synced := func(sinks ...*recSink) func() bool {
			return func() bool {
				for _, s := range sinks {
					if len(s.Syncs()) == 0 {
						return false
					}
				}
				return true
			}
		}
		var sinks []*recSink
		for range 5 {
			s := &recSink{}
			defer mustSubscribe(t, h, group, 0, "", s).Close()
			sinks = append(sinks, s)
		}
		waitFor(t, "every subscriber's SyncInfo", synced(sinks...))
		if n := waiting(); n != 0 {
			t.Fatalf("%d subscribers waiting once all were served", n)
		}

		held, release := gate.arm()
		late := &recSink{}
		defer mustSubscribe(t, h, group, 0, "", late).Close()
		waitChan(t, "the new subscriber's read", held)
		if n := waiting(); n != 1 {
			t.Fatalf("%d subscribers waiting during a new one's read, want 1", n)
		}
		close(release)
		waitFor(t, "the new subscriber's SyncInfo", synced(late))
		sinks = append(sinks, late)
		if n := waiting(); n != 0 {
			t.Fatalf("%d subscribers waiting after the new one was served", n)
		}

		held, release = gate.arm()
		h.mu.Lock()
		ps := h.feeds[""].ps
		h.mu.Unlock()
		if err := ps.Subscribe(context.Background(), pub.Channel(group)); err != nil {
			t.Fatal(err)
		}
		waitChan(t, "the catch-up read", held)
		if n := waiting(); n != len(sinks) {
			t.Fatalf("%d subscribers waiting during a catch-up read, want all %d", n, len(sinks))
		}
		close(release)
		last := mustPublish(t, pub, group, "state", "after")
		for i, s := range sinks {
			waitFor(t, fmt.Sprintf("subscriber %d at seq 2", i), func() bool { return s.reached(2, "") })
			checkDelivery(t, fmt.Sprint("subscriber ", i), s, 0, 2, last.Epoch)
		}
		waitFor(t, "no subscriber waiting after the catch-up", func() bool { return waiting() == 0 })

		held, release = gate.arm()
		gone := mustSubscribe(t, h, group, 0, "", &recSink{})
		waitChan(t, "the read of a subscriber about to close", held)
		gone.Close()
		close(release)
		waitFor(t, "no subscriber waiting after one closed while it waited", func() bool { return waiting() == 0 })
	})
}
