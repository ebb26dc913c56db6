package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"taskstream/client"
	"taskstream/cmd/internal/machine"
	"taskstream/wire"
)

// job is one submitted job as its watcher sees it. Its fields are written
// by the one goroutine that reads its group's events (fed in order), and
// read after done is closed.
type job struct {
	group     string
	submitted time.Time // when the submit was due (open loop), or just before it went out (closed loop)
	done      chan struct{}

	lastSeq  int64
	active   time.Time // the ts of its "state active" event (the first one)
	endTS    time.Time // the ts of its "result" event
	received time.Time // when the watcher got its "result" event
	failure  string    // why it does not count as finished ("" when it does)
	detail   string    // the event that broke the stream, for the report
	over     bool

	settled func() // called once, when done closes (nil: nothing)
	once    sync.Once
}

// feed checks one event of the job's group and reports whether the job is
// over (its last event, or a broken stream). The order is the protocol's:
// seqs 1, 2, … from the start of the history (the watch starts at the zero
// position), nothing skipped, "state pending" first, "result" last.
func (j *job) feed(ev client.Event, now time.Time) bool {
	if j.over {
		return true
	}
	defer func() {
		if j.failure != "" && j.detail == "" {
			j.detail = fmt.Sprintf("%s seq %d (after %d) skipped %d: %s %s", ev.Group, ev.Seq, j.lastSeq, ev.Skipped, ev.Event, ev.Data)
		}
	}()
	switch {
	case ev.Skipped != 0:
		return j.fail("events skipped")
	case ev.Seq != j.lastSeq+1:
		return j.fail("events out of order or missing")
	}
	j.lastSeq = ev.Seq
	var st struct {
		State string `json:"state"`
	}
	if ev.Event == wire.EventState {
		if err := json.Unmarshal(ev.Data, &st); err != nil {
			return j.fail("undecodable state event")
		}
	}
	switch {
	case ev.Seq == 1 && (ev.Event != wire.EventState || st.State != wire.StatePending):
		return j.fail("first event not state pending")
	case ev.Event == wire.EventState && st.State == wire.StateActive && j.active.IsZero():
		j.active = ev.Time()
	case ev.Event == wire.EventResult:
		if j.active.IsZero() {
			return j.fail("result without state active")
		}
		j.endTS, j.received = ev.Time(), now
		j.over = true
		return true
	case ev.Final():
		return j.fail("job ended " + ev.Event + " " + string(ev.Data))
	}
	return false
}

func (j *job) fail(why string) bool {
	if j.failure == "" {
		j.failure = why
	}
	j.over = true
	return true
}

// finish marks the job settled (once, whoever calls it first).
func (j *job) finish() {
	j.once.Do(func() {
		close(j.done)
		if j.settled != nil {
			j.settled()
		}
	})
}

// watchers spreads job groups over a fixed set of sockets (WatchMany),
// routing each event to its job.
type watchers struct {
	ws   []*client.Watcher
	next atomic.Uint64
	mu   sync.Mutex
	jobs map[string]*job
	wg   sync.WaitGroup
}

func newWatchers(ctx context.Context, c *client.Client, n int) *watchers {
	w := &watchers{jobs: map[string]*job{}}
	for range n {
		wm := c.WatchMany(ctx)
		w.ws = append(w.ws, wm)
		w.wg.Add(1)
		go func() { defer w.wg.Done(); w.read(ctx, wm) }()
	}
	return w
}

// add watches j's group on the next socket, round robin.
func (w *watchers) add(j *job) error {
	w.mu.Lock()
	w.jobs[j.group] = j
	w.mu.Unlock()
	wm := w.ws[w.next.Add(1)%uint64(len(w.ws))]
	return wm.Add(j.group, client.Position{})
}

func (w *watchers) read(ctx context.Context, wm *client.Watcher) {
	for {
		ev, err := wm.Next(ctx)
		var refused *client.Error
		switch {
		case errors.As(err, &refused) && refused.Group != "":
			w.settle(refused.Group, func(j *job) bool { return j.fail("watch refused: " + refused.Code) })
			continue
		case err != nil:
			var nr *client.NotRecoveredError
			if errors.As(err, &nr) {
				continue // the watches start at the zero position: nothing to recover
			}
			if ctx.Err() == nil { // not the end of the run
				w.failAll("socket ended: " + err.Error())
			}
			return
		}
		now := time.Now()
		w.settle(ev.Group, func(j *job) bool { return j.feed(ev, now) })
	}
}

// settle applies f to the job of group and finishes it when f says so.
func (w *watchers) settle(group string, f func(*job) bool) {
	w.mu.Lock()
	j := w.jobs[group]
	over := j != nil && f(j)
	if over {
		delete(w.jobs, group)
	}
	w.mu.Unlock()
	if over {
		j.finish()
	}
}

func (w *watchers) failAll(why string) {
	w.mu.Lock()
	var left []*job
	for g, j := range w.jobs {
		j.fail(why)
		left = append(left, j)
		delete(w.jobs, g)
	}
	w.mu.Unlock()
	for _, j := range left {
		j.finish()
	}
}

func (w *watchers) close() {
	for _, wm := range w.ws {
		_ = wm.Close()
	}
	w.wg.Wait()
}

const (
	// submitters is how many submits an open loop makes at once: the
	// transport's connections (MaxConnsPerHost).
	submitters = 128
	// submitQueue bounds the due submits waiting for a submitter (each
	// counted as submitted from when it was due).
	submitQueue = 4096
)

// run submits and watches jobs as cfg says and returns the report.
func run(ctx context.Context, cfg config, logger *slog.Logger) (*report, error) {
	jar, _ := cookiejar.New(nil)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// Keep-alive connections for every concurrent submit (the default 2
	// per host would open and close one per submit), under the api's
	// MAX_CONNS_PER_IP (256 by default) with room for the sockets.
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost, tr.MaxConnsPerHost = submitters, submitters, submitters
	c, err := client.New(client.Config{
		BaseURL: cfg.URL, Token: cfg.Token,
		HTTPClient: &http.Client{Jar: jar, Transport: tr},
		Watch:      client.WatchConfig{Logger: logger},
	})
	if err != nil {
		return nil, err
	}
	if err := c.Health(ctx); err != nil {
		return nil, fmt.Errorf("the api at %s does not answer: %w", cfg.URL, err)
	}
	rep := &report{cfg: cfg, LoadBefore: machine.LoadAverage(), Failures: map[string]int{}}
	// Watches and waits end at the drain deadline; submits at Duration.
	waitCtx, cancelWait := context.WithTimeout(ctx, cfg.Duration+cfg.Drain)
	defer cancelWait()
	var ws *watchers
	if cfg.Sockets > 0 {
		ws = newWatchers(waitCtx, c, cfg.Sockets)
	}
	params := map[string]int{"steps": cfg.Steps, "interval_ms": cfg.IntervalMS}
	var (
		mu        sync.Mutex
		all       []*job
		pending   atomic.Int64
		wg        sync.WaitGroup
		watchWG   sync.WaitGroup // the sockets of their own (Sockets 0)
		logSubmit sync.Once
	)
	fail := func(kind string) {
		mu.Lock()
		rep.Failures[kind]++
		mu.Unlock()
	}
	// submit submits a job (counted as submitted at when) and has it
	// watched; it returns nil when the submit failed (counted). The job's
	// done closes once its watcher has seen its end, and then (or on a
	// failed submit) pending goes down by one.
	submit := func(when time.Time) *job {
		j := &job{submitted: when, done: make(chan struct{}), settled: func() { pending.Add(-1) }}
		sub, err := c.Submit(waitCtx, client.SubmitRequest{Type: "steps", Params: params})
		if err != nil {
			pending.Add(-1)
			var ce *client.Error
			switch {
			case errors.As(err, &ce):
				fail("submit " + ce.Code)
			case waitCtx.Err() != nil:
				fail("submit not answered within -duration + -drain")
			default:
				fail("submit error")
				logSubmit.Do(func() { logger.Warn("submit failed (the first; the others are counted)", "err", err) })
			}
			return nil
		}
		j.group = sub.Group()
		mu.Lock()
		all = append(all, j)
		mu.Unlock()
		if ws != nil {
			if err := ws.add(j); err != nil {
				j.fail("watch: " + err.Error())
				j.finish()
			}
		} else {
			watchWG.Add(1)
			go func() { defer watchWG.Done(); watchOne(waitCtx, c, j) }()
		}
		return j
	}
	// wait waits until j's watcher has seen its end or the drain is over.
	wait := func(j *job) {
		select {
		case <-j.done:
		case <-waitCtx.Done():
		}
	}
	cpu0, _ := machine.SelfCPU()
	rep.Start = time.Now()
	end := rep.Start.Add(cfg.Duration)
	// take reserves the next submit; false once -jobs have been.
	var taken atomic.Int64
	take := func() bool { return cfg.Jobs == 0 || taken.Add(1) <= int64(cfg.Jobs) }
	if cfg.Rate > 0 {
		// Open loop: the i-th submit is due at start + i/rate, whatever
		// the earlier ones are doing. A fixed pool of submitters makes
		// them (as many as the transport has connections: more could only
		// wait for one), each taking the time it was due to go out; their
		// stacks grow once, not once per submit as a goroutine per submit
		// did (copystack was 6.6 % of this tool's CPU at 1,000/s).
		due := make(chan time.Time, submitQueue)
		for range submitters {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for when := range due {
					submit(when)
				}
			}()
		}
		for i := 0; ; i++ {
			at := rep.Start.Add(time.Duration(float64(i) / cfg.Rate * float64(time.Second)))
			if !at.Before(end) || !take() || !sleepUntil(ctx, at) {
				break
			}
			if pending.Load() >= int64(cfg.MaxPending) {
				fail("backlog (max-pending reached, not submitted)")
				continue
			}
			pending.Add(1)
			// From when it was due: a submit that waits for a submitter
			// (the api is slower than the rate) is late by that much.
			due <- at
		}
		close(due)
		rep.SubmitEnd = time.Now()
		wg.Wait()
		mu.Lock()
		submittedJobs := slices.Clone(all)
		mu.Unlock()
		for _, j := range submittedJobs {
			wait(j)
		}
	} else {
		for range cfg.Inflight {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) && ctx.Err() == nil && take() {
					pending.Add(1)
					if j := submit(time.Now()); j != nil {
						wait(j)
					}
				}
			}()
		}
		rep.SubmitEnd = time.Now()
		wg.Wait()
	}
	rep.LoadAfter = machine.LoadAverage()
	cpu1, _ := machine.SelfCPU()
	rep.CPU = cpu1 - cpu0
	// Every watcher stops before the jobs are read.
	cancelWait()
	watchWG.Wait()
	if ws != nil {
		ws.close()
	}
	for _, j := range all {
		select {
		case <-j.done:
		default:
			j.fail("not finished within -drain")
		}
		rep.add(j)
	}
	return rep, nil
}

// watchOne watches j's group on a socket of its own until its last event.
func watchOne(ctx context.Context, c *client.Client, j *job) {
	defer j.finish()
	w, err := c.Watch(ctx, j.group, client.Position{})
	if err != nil {
		j.fail("watch: " + err.Error())
		return
	}
	defer w.Close()
	for {
		ev, err := w.Next(ctx)
		switch {
		case errors.Is(err, io.EOF):
			if !j.over {
				j.fail("watch ended before the result")
			}
			return
		case err != nil:
			var nr *client.NotRecoveredError
			if errors.As(err, &nr) {
				continue
			}
			j.fail("watch: " + err.Error())
			return
		}
		if j.feed(ev, time.Now()) {
			return
		}
	}
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}
