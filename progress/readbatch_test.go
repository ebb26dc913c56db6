package progress

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// logReads is a go-redis hook that records, for every pipeline sent, the
// groups whose log it reads (an XRANGE of a group's stream): one entry
// per round trip.
type logReads struct {
	l *Log

	mu    sync.Mutex
	trips [][]string
}

func (r *logReads) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (r *logReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (r *logReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var groups []string
		for _, c := range cmds {
			args := c.Args()
			if len(args) < 2 || !strings.EqualFold(fmt.Sprint(args[0]), "xrange") {
				continue
			}
			key := fmt.Sprint(args[1])
			if rest, ok := strings.CutPrefix(key, r.l.cfg.Prefix+":{"); ok {
				if group, ok := strings.CutSuffix(rest, "}:log"); ok {
					groups = append(groups, group)
				}
			}
		}
		if len(groups) > 0 {
			r.mu.Lock()
			r.trips = append(r.trips, groups)
			r.mu.Unlock()
		}
		return next(ctx, cmds)
	}
}

// Trips returns the groups read by each round trip so far, in order.
func (r *logReads) Trips() [][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]string(nil), r.trips...)
}

// readsQueued is how many group reads wait for the hub's read batcher.
func readsQueued(h *Hub) int { return len(h.batcher.reqs) }

// batchedHub is a hub whose log reads go through a client with a
// logReads counter and a readGate on first's meta key, with the hub's
// shutdown registered as a cleanup.
func batchedHub(t *testing.T, srv *progresstest.Server, first string, cfg HubConfig) (*Log, *Hub, *logReads, *readGate) {
	t.Helper()
	pub := NewLog(srv.Client(t), LogConfig{})
	rdb := srv.Client(t)
	counted := &logReads{l: pub}
	gate := &readGate{key: pub.metaKey(first)}
	rdb.AddHook(counted)
	rdb.AddHook(gate)
	cfg.Logger = testLogger(t)
	h := NewHub(srv.Client(t), NewLog(rdb, LogConfig{}), cfg)
	t.Cleanup(func() { shutdownHub(t, h) })
	return pub, h, counted, gate
}

// The reads of groups requested while another read is in flight go out
// together, in one round trip once it is back, at most ReadBatch of them;
// each subscriber still gets exactly its own group's history, then live
// events. A read requested while none is in flight goes out alone.
func TestHubReadsOfManyGroupsShareRoundTrips(t *testing.T) {
	cases := []struct {
		name      string
		readBatch int
		groups    int // subscribed while the first group's read is held
		wantFirst int // groups read by the first round trip after it
	}{
		{"a lone read goes out alone", 64, 0, 0},
		{"every queued read in one round trip", 64, 20, 20},
		{"bounded by ReadBatch", 8, 20, 8},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				first := fmt.Sprintf("job:first%d", i)
				pub, h, counted, gate := batchedHub(t, srv, first, HubConfig{ReadBatch: tc.readBatch})
				names := []string{first}
				for j := range tc.groups {
					names = append(names, fmt.Sprintf("job:batch%d-%d", i, j))
				}
				epochs := map[string]string{}
				for j, name := range names {
					for range j%3 + 1 { // histories of different lengths
						epochs[name] = mustPublish(t, pub, name, "state", name).Epoch
					}
				}

				held, release := gate.arm()
				sinks := make([]*recSink, len(names))
				for j, name := range names {
					sinks[j] = &recSink{}
					defer mustSubscribe(t, h, name, 0, "", sinks[j]).Close()
					if j == 0 {
						waitChan(t, "the first group's read", held)
					}
				}
				queued := min(tc.groups, tc.readBatch) // the queue holds ReadBatch
				waitFor(t, fmt.Sprintf("%d reads queued", queued), func() bool { return readsQueued(h) == queued })
				close(release)
				for j, s := range sinks {
					waitFor(t, names[j]+"'s history", func() bool { return s.reached(int64(j%3+1), "") })
				}

				trips := counted.Trips()
				if len(trips) == 0 || len(trips[0]) != 1 || trips[0][0] != first {
					t.Fatalf("round trips %v: want the first group's read alone first", trips)
				}
				if tc.groups > 0 && len(trips[1]) != tc.wantFirst {
					t.Fatalf("the round trip after the held one read %d groups, want %d: %v", len(trips[1]), tc.wantFirst, trips)
				}
				seen := map[string]int{}
				for _, trip := range trips {
					if len(trip) > tc.readBatch {
						t.Fatalf("a round trip read %d groups, more than ReadBatch %d: %v", len(trip), tc.readBatch, trips)
					}
					for _, g := range trip {
						seen[g]++
					}
				}
				for _, name := range names {
					if seen[name] != 1 {
						t.Fatalf("%s read %d times, want once: %v", name, seen[name], trips)
					}
				}
				if tc.groups > 0 && len(trips) >= 1+tc.groups {
					t.Fatalf("%d round trips for 1+%d groups: no read was shared", len(trips), tc.groups)
				}
				for j, s := range sinks {
					last := mustPublish(t, pub, names[j], "state", "live")
					waitFor(t, names[j]+"'s live event", func() bool { return s.reached(last.Seq, last.Epoch) })
					checkDelivery(t, names[j], s, 0, last.Seq, epochs[names[j]])
				}
			})
		}
	})
}

// A group whose read fails for good (its stream key holds a string, so
// XRANGE answers WRONGTYPE) fails only its own subscribers, not those of
// the groups read in the same round trip: it is read again alone before
// it is failed, and the others are served from the shared read.
func TestHubBatchedReadFailsOnlyItsGroup(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		const first, bad = "job:firstread", "job:broken"
		pub, h, counted, gate := batchedHub(t, srv, first, HubConfig{})
		rdb := srv.Client(t)
		if err := rdb.Set(context.Background(), pub.streamKey(bad), "not a stream", 0).Err(); err != nil {
			t.Fatal(err)
		}
		good := []string{"job:fine0", "job:fine1", "job:fine2"}
		for _, name := range append([]string{first}, good...) {
			mustPublish(t, pub, name, "state", name)
		}

		held, release := gate.arm()
		firstSink := &recSink{}
		defer mustSubscribe(t, h, first, 0, "", firstSink).Close()
		waitChan(t, "the first group's read", held)
		badSink := &recSink{}
		defer mustSubscribe(t, h, bad, 0, "", badSink).Close()
		sinks := make([]*recSink, len(good))
		for j, name := range good {
			sinks[j] = &recSink{}
			defer mustSubscribe(t, h, name, 0, "", sinks[j]).Close()
		}
		waitFor(t, "the reads queued", func() bool { return readsQueued(h) == 1+len(good) })
		close(release)

		if _, err := firstAnswer(t, badSink); err == nil || IsUnavailable(err) || !strings.Contains(err.Error(), "WRONGTYPE") {
			t.Fatalf("the broken group's subscriber: err %v, want its own permanent WRONGTYPE error", err)
		}
		for j, s := range append([]*recSink{firstSink}, sinks...) {
			info, err := firstAnswer(t, s)
			if err != nil || !info.Recovered || info.Replayed != 1 {
				t.Fatalf("subscriber %d of a group read with the broken one: %+v, %v", j, info, err)
			}
		}
		var shared, alone int
		for _, trip := range counted.Trips() {
			for _, g := range trip {
				if g == bad && len(trip) > 1 {
					shared++
				} else if g == bad {
					alone++
				}
			}
		}
		if shared != 1 || alone != 1 {
			t.Fatalf("the broken group was read %d times with others and %d alone, want once each: %v", shared, alone, counted.Trips())
		}
	})
}

// Shutdown stops the read batcher, also with a batch in flight that Redis
// has not answered and reads queued behind it.
func TestHubShutdownStopsReadBatcher(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		const first = "job:stuck"
		_, h, _, gate := batchedHub(t, srv, first, HubConfig{})
		held, _ := gate.arm() // never released: only the hub's end frees it
		defer mustSubscribe(t, h, first, 0, "", &recSink{}).Close()
		waitChan(t, "the first group's read", held)
		for j := range 5 {
			defer mustSubscribe(t, h, fmt.Sprintf("job:behind%d", j), 0, "", &recSink{}).Close()
		}
		waitFor(t, "the reads queued", func() bool { return readsQueued(h) == 5 })
		shutdownHub(t, h) // fails the test unless every hub goroutine ends
	})
}
