package dashboard

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/wire"
)

// maxPoints caps the chart points kept, whatever Window/Interval says,
// so a short interval cannot make a snapshot huge.
const maxPoints = 3600

// point is one chart point as kept in Redis.
type point struct {
	T         int64              `json:"t"`  // unix ms
	DT        int64              `json:"dt"` // ms the rates cover, up to T
	Finished  map[string]float64 `json:"f"`  // jobs per second by outcome
	Delivered float64            `json:"d"`  // events per second
	Sockets   map[string]int     `json:"s"`  // open sockets by api process label
}

// totals are the processes' cumulative counts at a point, kept in Redis
// so the next publisher computes its first rates from the last ones.
type totals struct {
	At    int64                 `json:"at"` // unix ms
	Procs map[string]procTotals `json:"procs"`
}

type procTotals struct {
	Started   int64             `json:"started"`        // unix ms
	Seen      int64             `json:"seen,omitempty"` // unix ms of its last report
	Delivered uint64            `json:"delivered"`
	Finished  map[string]uint64 `json:"finished"`
}

// Series are the charts' data on the wire: one value per Interval (StepMS)
// over the window, oldest first, the last at End (unix ms); null where no
// publisher ran.
type Series struct {
	StepMS    int64                 `json:"step_ms"`
	End       int64                 `json:"end"`
	Completed []*float64            `json:"completed"`
	Failed    []*float64            `json:"failed"`
	Canceled  []*float64            `json:"canceled"`
	Delivered []*float64            `json:"delivered"`
	Sockets   map[string][]*float64 `json:"sockets"` // by api process (HOST:PID)
}

// charts is the publisher's state: the points of the window and the last
// totals.
type charts struct {
	points []point
	last   *totals
	// procRates are the events delivered per second of each process over
	// the last step, by process id.
	procRates map[string]float64
	// carry is how long the totals of a process whose report is missing
	// are kept (the window): a report that expired in a stall longer than
	// ReportTTL (a GC pause, a slow Redis) comes back counted from where
	// it was, instead of being taken for an unseen process and its
	// finished jobs dropped from the charts. Zero keeps none.
	carry time.Duration
}

func (db *Dashboard) points() int {
	n := int(db.cfg.Window / db.cfg.Interval)
	return min(max(n, 2), maxPoints)
}

// loadCharts reads the series and totals the previous publisher left.
func (db *Dashboard) loadCharts(ctx context.Context) *charts {
	c := &charts{carry: db.cfg.Window}
	raw, err := db.d.Redis.LRange(ctx, db.seriesKey(), int64(-db.points()), -1).Result()
	if err != nil {
		db.cfg.Logger.Warn("dashboard: reading the chart series failed; starting afresh", "err", err)
	}
	for _, r := range raw {
		var p point
		if json.Unmarshal([]byte(r), &p) == nil {
			c.points = append(c.points, p)
		}
	}
	tr, err := db.d.Redis.Get(ctx, db.totalsKey()).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		db.cfg.Logger.Warn("dashboard: reading the last totals failed", "err", err)
	}
	if tr != "" {
		var t totals
		if json.Unmarshal([]byte(tr), &t) == nil {
			c.last = &t
		}
	}
	return c
}

// advance adds the point for procs at now: rates from the change of each
// process's counts since the last totals. A process missing from them
// counts from zero if it started since (its whole count is new), else it
// is only recorded (its earlier counts were made before any publisher
// looked). It reports false for the very first totals (no rate yet).
func (c *charts) advance(procs []Process, now time.Time) (point, totals, bool) {
	cur := totals{At: now.UnixMilli(), Procs: map[string]procTotals{}}
	p := point{T: cur.At, Finished: map[string]float64{}, Sockets: map[string]int{}}
	for _, o := range Outcomes {
		p.Finished[o] = 0
	}
	finished := map[string]uint64{}
	procDelivered := map[string]uint64{}
	var delivered uint64
	for _, pr := range procs {
		pt := procTotals{Started: pr.Started.UnixMilli(), Seen: cur.At, Delivered: pr.Delivered, Finished: pr.Finished}
		cur.Procs[pr.ID] = pt
		if pr.Role == RoleAPI {
			p.Sockets[pr.Label()] = pr.OpenSockets()
		}
		if c.last == nil {
			continue
		}
		prev, seen := c.last.Procs[pr.ID]
		if !seen {
			if pt.Started < c.last.At {
				continue
			}
			prev = procTotals{Finished: map[string]uint64{}}
		}
		d := sub(pt.Delivered, prev.Delivered)
		procDelivered[pr.ID] = d
		delivered += d
		for _, o := range Outcomes {
			finished[o] += sub(pt.Finished[o], prev.Finished[o])
		}
	}
	if c.last != nil {
		for id, prev := range c.last.Procs {
			if _, back := cur.Procs[id]; back {
				continue
			}
			if seen := cmp.Or(prev.Seen, c.last.At); cur.At-seen < c.carry.Milliseconds() {
				prev.Seen = seen
				cur.Procs[id] = prev
			}
		}
	}
	if c.last == nil || cur.At <= c.last.At {
		c.last, c.procRates = &cur, nil
		return p, cur, false
	}
	p.DT = cur.At - c.last.At
	secs := float64(p.DT) / 1000
	for _, o := range Outcomes {
		p.Finished[o] = float64(finished[o]) / secs
	}
	p.Delivered = float64(delivered) / secs
	c.procRates = map[string]float64{}
	for id, d := range procDelivered {
		c.procRates[id] = round3(float64(d) / secs)
	}
	c.last = &cur
	return p, cur, true
}

func sub(a, b uint64) uint64 {
	if a < b { // cannot happen for one process run; never go negative
		return 0
	}
	return a - b
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// add appends p, keeping the window's points.
func (c *charts) add(p point, n int) {
	c.points = append(c.points, p)
	if len(c.points) > n {
		c.points = c.points[len(c.points)-n:]
	}
}

// save stores p (when ok) and cur for the next publisher.
func (db *Dashboard) save(ctx context.Context, p point, cur totals, ok bool) error {
	tr, err := json.Marshal(cur)
	if err != nil {
		return fmt.Errorf("dashboard: encode totals: %w", err)
	}
	var pr []byte
	if ok {
		if pr, err = json.Marshal(p); err != nil {
			return fmt.Errorf("dashboard: encode point: %w", err)
		}
	}
	_, err = db.d.Redis.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		if ok {
			pipe.RPush(ctx, db.seriesKey(), pr)
			pipe.LTrim(ctx, db.seriesKey(), int64(-db.points()), -1)
			pipe.Expire(ctx, db.seriesKey(), db.cfg.Window)
		}
		pipe.Set(ctx, db.totalsKey(), tr, db.cfg.Window)
		return nil
	})
	if err != nil {
		return fmt.Errorf("dashboard: save the chart series: %w", err)
	}
	return nil
}

// wire lays the points out on the grid of n steps of size step ending at
// the last point. Each point's counts are spread over the buckets of the
// time its rates cover (DT: a late tick, or a new publisher's first point,
// covers more than one step), so the buckets add up to the jobs and events
// counted; the socket counts (a gauge) fill the same buckets. A bucket no
// point covers is null.
func (c *charts) wire(step time.Duration, n int) Series {
	stepMS := step.Milliseconds()
	s := Series{StepMS: stepMS, Completed: make([]*float64, n), Failed: make([]*float64, n),
		Canceled: make([]*float64, n), Delivered: make([]*float64, n), Sockets: map[string][]*float64{}}
	if len(c.points) == 0 || stepMS <= 0 {
		return s
	}
	s.End = c.points[len(c.points)-1].T
	// bucket k covers (End-(n-k)·step, End-(n-1-k)·step].
	bucketEnd := func(k int) int64 { return s.End - int64(n-1-k)*stepMS }
	add := func(col []*float64, k int, v float64) {
		if col[k] == nil {
			col[k] = new(float64)
		}
		*col[k] += v
	}
	for _, p := range c.points {
		dt := p.DT
		if dt <= 0 {
			dt = stepMS
		}
		from, to := p.T-dt, p.T
		first := n - 1 - int((s.End-from)/stepMS)
		for k := max(first, 0); k < n; k++ {
			hi, lo := bucketEnd(k), bucketEnd(k)-stepMS
			if lo >= to {
				break
			}
			overlap := min(hi, to) - max(lo, from)
			if overlap <= 0 {
				continue
			}
			// Per second over the bucket: rate × covered share.
			share := float64(overlap) / float64(stepMS)
			add(s.Completed, k, p.Finished[wireCompleted]*share)
			add(s.Failed, k, p.Finished[wireFailed]*share)
			add(s.Canceled, k, p.Finished[wireCanceled]*share)
			add(s.Delivered, k, p.Delivered*share)
			for label, v := range p.Sockets {
				col := s.Sockets[label]
				if col == nil {
					col = make([]*float64, n)
					s.Sockets[label] = col
				}
				col[k] = ptr(float64(v))
			}
		}
	}
	for _, col := range [][]*float64{s.Completed, s.Failed, s.Canceled, s.Delivered} {
		for _, v := range col {
			if v != nil {
				*v = round3(*v)
			}
		}
	}
	return s
}

const (
	wireCompleted = wire.StateCompleted
	wireFailed    = wire.StateFailed
	wireCanceled  = wire.StateCanceled
)

func ptr(v float64) *float64 { return &v }

// publish is the publisher's work while it holds the lease: every
// Interval, a snapshot with the next chart point, published on the
// dashboard group.
func (db *Dashboard) publish(ctx context.Context) {
	c := db.loadCharts(ctx)
	n := db.points()
	t := time.NewTicker(db.cfg.Interval)
	defer t.Stop()
	group := wire.DashboardGroup().String()
	failing := false
	for {
		snap := db.collect(ctx)
		p, cur, ok := c.advance(snap.Processes, snap.At)
		if ok {
			c.add(p, n)
		}
		if err := db.save(ctx, p, cur, ok); err != nil && ctx.Err() == nil {
			snap.Problems = append(snap.Problems, err.Error())
		}
		snap.Rates = Rates{Finished: map[string]float64{}, Delivered: round3(p.Delivered)}
		for o, v := range p.Finished {
			snap.Rates.Finished[o] = round3(v)
		}
		for _, v := range p.Sockets {
			snap.Rates.Sockets += v
		}
		for i := range snap.Processes {
			snap.Processes[i].DeliveredPerS = c.procRates[snap.Processes[i].ID]
		}
		snap.Series = c.wire(db.cfg.Interval, n)
		if ctx.Err() != nil {
			return
		}
		if _, err := db.d.Log.Publish(ctx, group, wire.EventStats, snap); err != nil && ctx.Err() == nil {
			if !failing {
				db.cfg.Logger.Warn("dashboard: publishing a snapshot failed", "err", err)
			}
			failing = true
		} else {
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
