package dashboard

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/jobs"
	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// replica is one api process's dashboard on a shared Redis.
type replica struct {
	db  *Dashboard
	log *progress.Log
}

func newReplica(t *testing.T, rdb redis.UniversalClient, cfg Config) *replica {
	t.Helper()
	reg, err := jobs.NewRegistry(jobs.Builtin()...)
	if err != nil {
		t.Fatal(err)
	}
	log := progress.NewLog(rdb, progress.LogConfig{})
	svc := jobs.NewService(rdb, reg, log, jobs.Config{ArtifactDir: t.TempDir()})
	counts := NewJobCounts(nil)
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	db, err := New(Deps{Redis: rdb, Log: log, Jobs: svc, Counts: counts}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	db.Start()
	t.Cleanup(func() { db.Stop(context.Background()) })
	return &replica{db: db, log: log}
}

// snapshots reads the dashboard group's snapshots after seq.
func snapshots(t *testing.T, log *progress.Log, after int64) ([]Snapshot, int64) {
	t.Helper()
	snap, err := log.Read(context.Background(), wire.DashboardGroup().String(), after)
	if err != nil {
		t.Fatal(err)
	}
	var out []Snapshot
	last := after
	for _, ev := range snap.Events {
		var s Snapshot
		if err := json.Unmarshal(ev.Data, &s); err != nil {
			t.Fatalf("snapshot %d: %v", ev.Seq, err)
		}
		out = append(out, s)
		last = ev.Seq
	}
	return out, last
}

// waitSnapshots waits until cond holds for the snapshots published after
// seq (read afresh each time), and returns them.
func waitSnapshots(t *testing.T, log *progress.Log, after int64, what string, cond func([]Snapshot) bool) ([]Snapshot, int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ss, last := snapshots(t, log, after)
		if cond(ss) {
			return ss, last
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s (%d snapshots)", what, len(ss))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func publishers(ss []Snapshot) []string {
	var out []string
	for _, s := range ss {
		if len(out) == 0 || out[len(out)-1] != s.Publisher {
			out = append(out, s.Publisher)
		}
	}
	return out
}

func nonNull(v []*float64) int {
	n := 0
	for _, x := range v {
		if x != nil {
			n++
		}
	}
	return n
}

// Two api replicas: exactly one publishes; when it stops, the other takes
// over, and its charts continue the series the first one left in Redis.
func TestOnePublisherAndTakeover(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		// A lease long enough that renewals never fail under -race on
		// miniredis: the one change of publisher is the one the test makes.
		cfg := Config{Publish: true, Interval: 20 * time.Millisecond, LeaderTTL: 2 * time.Second, Window: 10 * time.Second}
		a := newReplica(t, rdb, cfg)
		b := newReplica(t, rdb, cfg)

		// Many snapshots, all from one of the two, each listing both
		// processes once both have reported.
		ss, last := waitSnapshots(t, a.log, 0, "20 snapshots listing both replicas", func(ss []Snapshot) bool {
			n := 0
			for _, s := range ss {
				if len(s.Processes) == 2 {
					n++
				}
			}
			return n >= 20
		})
		pubs := publishers(ss)
		if len(pubs) != 1 || (pubs[0] != a.db.ID() && pubs[0] != b.db.ID()) {
			t.Fatalf("publishers while both run: %v (replicas %s, %s)", pubs, a.db.ID(), b.db.ID())
		}
		leader, other := a, b
		if pubs[0] == b.db.ID() {
			leader, other = b, a
		}
		before := nonNull(ss[len(ss)-1].Series.Delivered)
		if before < 10 {
			t.Fatalf("the series has %d points after %d snapshots", before, len(ss))
		}

		leader.db.Stop(context.Background())
		stopped := time.Now()
		ss, _ = waitSnapshots(t, a.log, last, "snapshots from the other replica", func(ss []Snapshot) bool {
			pubs := publishers(ss)
			return len(pubs) > 0 && pubs[len(pubs)-1] == other.db.ID() && len(ss[len(ss)-1].Processes) == 1
		})
		for _, s := range ss {
			if s.Publisher == leader.db.ID() && s.At.After(stopped) {
				t.Fatalf("the stopped replica published a snapshot taken at %v, after its Stop returned at %v", s.At, stopped)
			}
		}
		lastSnap := ss[len(ss)-1]
		if got := nonNull(lastSnap.Series.Delivered); got < before {
			t.Fatalf("the new publisher's series has %d points, the old one's had %d: not continued", got, before)
		}
		if lastSnap.Processes[0].ID != other.db.ID() {
			t.Fatalf("processes after the leader stopped: %+v", lastSnap.Processes)
		}
		// Nothing from the stopped replica after its Stop returned.
		_, last = snapshots(t, a.log, 0)
		ss, _ = waitSnapshots(t, a.log, last, "five more snapshots", func(ss []Snapshot) bool { return len(ss) >= 5 })
		if pubs := publishers(ss); len(pubs) != 1 || pubs[0] != other.db.ID() {
			t.Fatalf("publishers after the takeover: %v", pubs)
		}
	})
}

// A process that dies without removing its report leaves the dashboard
// when the report's TTL runs out.
func TestReportExpires(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		a := newReplica(t, rdb, Config{Publish: true, Interval: 20 * time.Millisecond, LeaderTTL: 2 * time.Second})
		// A process that reports until the publisher has listed it, then
		// is killed: its last report is never renewed. (Renewed until then,
		// so a publisher slowed by a busy machine still sees it once.)
		dead := &Dashboard{d: Deps{Redis: rdb}, cfg: Config{Interval: 20 * time.Millisecond, ReportTTL: 200 * time.Millisecond}.withDefaults()}
		dead.self = Process{ID: "deadhost:1:x", Role: RoleAPI, Host: "deadhost", PID: 1, Started: time.Now()}
		_, last := waitSnapshots(t, a.log, 0, "both processes listed", func(ss []Snapshot) bool {
			if len(ss) > 0 && len(ss[len(ss)-1].Processes) == 2 {
				return true
			}
			if err := dead.writeReport(context.Background(), dead.current()); err != nil {
				t.Fatal(err)
			}
			return false
		})
		waitSnapshots(t, a.log, last, "the dead process gone", func(ss []Snapshot) bool {
			return len(ss) > 0 && len(ss[len(ss)-1].Processes) == 1 && ss[len(ss)-1].Processes[0].ID == a.db.ID()
		})
		if n, err := rdb.ZCard(context.Background(), a.db.procsKey()).Result(); err != nil || n != 1 {
			t.Fatalf("process index after expiry: %d, %v", n, err)
		}
	})
}

// The rates come from the change of each process's counts: a process
// that started after the last totals counts from zero, one the publisher
// had not seen before that only seeds.
func TestChartsAdvance(t *testing.T) {
	t0 := time.UnixMilli(1_000_000)
	proc := func(id string, role string, started time.Time, delivered uint64, completed uint64) Process {
		return Process{ID: id, Role: role, Host: "h", PID: len(id), Started: started, Delivered: delivered,
			Sockets:  map[string]int{"websocket": 2},
			Finished: map[string]uint64{jobs.StateCompleted: completed}}
	}
	cases := []struct {
		name          string
		last          *totals
		procs         []Process
		ok            bool
		delivered     float64
		completed     float64
		socketsLabels int
	}{
		{name: "first ever", procs: []Process{proc("a", RoleAPI, t0, 10, 1)}, ok: false, socketsLabels: 1},
		{name: "steady", last: &totals{At: t0.UnixMilli(), Procs: map[string]procTotals{"a": {Delivered: 10, Finished: map[string]uint64{jobs.StateCompleted: 1}}}},
			procs: []Process{proc("a", RoleAPI, t0.Add(-time.Hour), 30, 3)}, ok: true, delivered: 10, completed: 1, socketsLabels: 1},
		{name: "new process counts from zero", last: &totals{At: t0.UnixMilli(), Procs: map[string]procTotals{}},
			procs: []Process{proc("b", RoleWorker, t0.Add(time.Second), 0, 4)}, ok: true, completed: 2},
		{name: "unseen old process seeds", last: &totals{At: t0.UnixMilli(), Procs: map[string]procTotals{}},
			procs: []Process{proc("c", RoleAPI, t0.Add(-time.Hour), 500, 50)}, ok: true, socketsLabels: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch := &charts{last: c.last}
			p, cur, ok := ch.advance(c.procs, t0.Add(2*time.Second))
			if ok != c.ok || p.Delivered != c.delivered || p.Finished[jobs.StateCompleted] != c.completed || len(p.Sockets) != c.socketsLabels {
				t.Fatalf("got ok %v delivered %v completed %v sockets %v", ok, p.Delivered, p.Finished[jobs.StateCompleted], p.Sockets)
			}
			if len(cur.Procs) != len(c.procs) || ch.last.At != cur.At {
				t.Fatalf("totals not kept: %+v", cur)
			}
		})
	}
}

// A process whose report expired for a while (a stall longer than
// ReportTTL) and comes back is counted from its last totals: the jobs it
// finished meanwhile reach the charts. One gone longer than the window is
// forgotten.
func TestChartsCarryAMissingProcess(t *testing.T) {
	t0 := time.UnixMilli(1_000_000)
	proc := func(completed uint64) Process {
		return Process{ID: "a", Role: RoleWorker, Host: "h", PID: 1, Started: t0.Add(-time.Hour),
			Finished: map[string]uint64{jobs.StateCompleted: completed}}
	}
	cases := []struct {
		name      string
		gone      time.Duration // how long its report is missing
		completed float64       // the rate when it is back: the jobs it finished meanwhile, over one second
	}{
		{name: "back within the window", gone: 2 * time.Second, completed: 2},
		{name: "back after the window", gone: 2 * time.Minute, completed: 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch := &charts{carry: time.Minute}
			ch.advance([]Process{proc(1)}, t0)
			ch.advance([]Process{proc(2)}, t0.Add(time.Second))
			ch.advance(nil, t0.Add(time.Second+c.gone)) // its report expired
			at := t0.Add(2*time.Second + c.gone)
			p, _, ok := ch.advance([]Process{proc(2 + uint64(c.gone/time.Second))}, at)
			if !ok || p.Finished[jobs.StateCompleted] != c.completed {
				t.Fatalf("ok %v, completed %v per second, want %v", ok, p.Finished[jobs.StateCompleted], c.completed)
			}
		})
	}
}
