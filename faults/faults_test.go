//go:build faults

package faults

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The population of every scenario: users (the first three guests with a
// cookie, the other two signed in and using bearer tokens), two tabs
// (watchers) per user, one on each API, and two jobs per user, each
// watched by both tabs of its owner.
const (
	nUsers      = 5
	bearerFrom  = 3 // users from this index on use a bearer token
	tabsPerUser = 2
	jobsPerUser = 2
	jobSteps    = 30
	jobInterval = 200 // ms: a job runs about 6 s
)

// Bounds of each phase of a scenario: every wait ends.
const (
	runningWithin = 20 * time.Second // all jobs running and reporting
	finishWithin  = 45 * time.Second // after the fault: every watcher has every job's final event
	settle        = time.Second      // after that, for late (duplicate) frames to show
	apiAnswer     = 15 * time.Second // GET /api/jobs/ID of every job, retried while they err
	movedWithin   = 15 * time.Second // watchers of a dead API reconnected elsewhere
	redisDowntime = 3 * time.Second  // how long a killed Redis stays down before its restart
)

// scenario is one fault and what it must not break.
type scenario struct {
	name       string
	sentinel   bool // Redis is a primary, a replica and a sentinel
	cookieOnly bool // no bearer users (their tokens live in Redis)
	slowReader bool // the first watcher gets a tiny receive buffer
	// inject causes the fault, sets r.faultStart and r.faultEnd, and puts
	// the cluster back to full strength (restarts what it stopped).
	inject func(r *run)
	// check adds scenario-specific problems once the jobs are done.
	check func(r *run, t *tally)
}

// run is one scenario's state.
type run struct {
	t        *testing.T
	c        *cluster
	users    []*user
	watchers []*watcher
	jobs     []jobRef

	faultStart, faultEnd time.Time
	// recovery, when set, replaces the default time-to-recover measure.
	recovery func() (time.Duration, bool)
	// extraDone, when set, must also hold before the ledger is checked.
	extraDone func() bool
	marker    string // the flood's end marker (slow-reader scenario)
	notes     []string
}

type jobRef struct {
	id       string
	owner    *user
	watchers []*watcher
}

func (r *run) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func TestFaults(t *testing.T) {
	for _, sc := range []scenario{
		{name: "api kill -9", inject: apiFault(syscall.SIGKILL)},
		{name: "api SIGTERM", inject: apiFault(syscall.SIGTERM), check: closedWith(0, 1001)},
		{name: "worker kill -9", inject: workerFault(syscall.SIGKILL), check: retriedAfterKill},
		{name: "worker SIGTERM", inject: workerFault(syscall.SIGTERM)},
		{name: "Redis kill -9 + restart, AOF", inject: redisRestart(false)},
		{name: "Redis restart, data lost", inject: redisRestart(true), cookieOnly: true},
		{name: "Redis paused 5 s", inject: redisPause(5 * time.Second)},
		{name: "one watcher stops reading", inject: slowReader, check: onlySlowCut, slowReader: true},
		{name: "Sentinel failover", sentinel: true, inject: sentinelFailover(false)},
		{name: "Sentinel: primary kill -9", sentinel: true, inject: sentinelFailover(true)},
	} {
		t.Run(strings.NewReplacer(" ", "_", "+", "", ",", "", ":", "").Replace(sc.name), func(t *testing.T) { runScenario(t, sc) })
	}
	tbl := table()
	t.Logf("fault suite ledger (%s):\n%s", time.Now().UTC().Format("2006-01-02"), tbl)
	fmt.Print("\n" + tbl)
}

func runScenario(t *testing.T, sc scenario) {
	began := time.Now()
	added := false
	defer func() {
		if !added { // stopped by t.Fatal before its ledger: the table says so
			addRow(row{scenario: sc.name, aborted: true})
		}
	}()
	h := newHarness(t)
	c := h.startCluster(sc.sentinel)
	r := &run{t: t, c: c}

	for i := range nUsers {
		u, err := c.newUser(i, !sc.cookieOnly && i >= bearerFrom)
		if err != nil {
			t.Fatal(err)
		}
		r.users = append(r.users, u)
		for tab := range tabsPerUser {
			w := c.newWatcher(len(r.watchers), u, (i+tab)%2)
			w.small = sc.slowReader && i == 0 && tab == 0
			w.start()
			t.Cleanup(w.stop)
			r.watchers = append(r.watchers, w)
		}
	}
	if !waitFor(10*time.Second, func() bool {
		for _, w := range r.watchers {
			if w.connectedTo() < 0 {
				return false
			}
		}
		return true
	}) {
		t.Fatal("watchers could not connect")
	}
	for i, u := range r.users {
		for j := range jobsPerUser {
			id, err := c.submitJob(u, (i+j)%2, jobSteps, jobInterval)
			if err != nil {
				t.Fatal(err)
			}
			ref := jobRef{id: id, owner: u}
			for _, w := range r.watchers {
				if w.u == u {
					w.watch("job:" + id)
					ref.watchers = append(ref.watchers, w)
				}
			}
			r.jobs = append(r.jobs, ref)
		}
	}
	// Mid-job: every watcher has seen progress of every job.
	if !waitFor(runningWithin, func() bool { return r.allSeen(func(e received) bool { return e.name == "progress" }) }) {
		t.Fatalf("jobs did not all start within %v:\n%s", runningWithin, r.progressReport())
	}

	sc.inject(r)
	if r.faultStart.IsZero() {
		t.Fatal("the scenario did not inject its fault")
	}
	if r.faultEnd.IsZero() {
		r.faultEnd = r.faultStart
	}
	finished := waitFor(finishWithin, func() bool {
		return r.allSeen(func(e received) bool { return finalState(e) != "" }) && (r.extraDone == nil || r.extraDone())
	})
	if finished {
		time.Sleep(settle)
	}
	for _, w := range r.watchers {
		w.stop()
	}

	var tl tally
	if !finished {
		tl.problem("not every watcher saw every job end within %v of the fault:\n%s", finishWithin, r.progressReport())
	}
	tl.problems = append(tl.problems, r.notes...)
	apiDeadline := time.Now().Add(apiAnswer)
	for _, j := range r.jobs {
		view, err := r.getJob(j, apiDeadline)
		for _, w := range j.watchers {
			checkJob(&tl, w, j.id, view, err)
		}
	}
	if sc.check != nil {
		sc.check(r, &tl)
	}
	rec := "not recovered"
	if d, ok := r.recoveryTime(); ok {
		rec = fmt.Sprintf("%.2f s", d.Seconds())
	}
	addRow(row{scenario: sc.name, jobs: len(r.jobs), watchers: len(r.watchers), tally: tl, recover: rec})
	added = true
	t.Logf("%s: %d jobs, %d watchers, %d events checked, %d lost, %d duplicated, %d told recovered:false, recovered in %s (scenario took %.1f s)",
		sc.name, len(r.jobs), len(r.watchers), tl.events, tl.lost, tl.dups, tl.told, rec, time.Since(began).Seconds())
	if problems := tl.report(); len(problems) > 0 {
		const maxShown = 40
		shown := problems
		if len(shown) > maxShown {
			shown = append(shown[:maxShown:maxShown], fmt.Sprintf("… and %d more", len(problems)-maxShown))
		}
		t.Errorf("ledger of %q: %d problems:\n  %s", sc.name, len(problems), strings.Join(shown, "\n  "))
	}
}

// allSeen reports whether every watcher of every job holds an event for
// which ok holds in its current history of the job.
func (r *run) allSeen(ok func(received) bool) bool {
	for _, j := range r.jobs {
		for _, w := range j.watchers {
			g := w.snapshot("job:" + j.id)
			s := g.current()
			if s == nil || len(s.events) == 0 {
				return false
			}
			found := false
			for _, e := range s.events {
				if ok(e) {
					found = true
				}
			}
			if !found {
				return false
			}
		}
	}
	return true
}

// progressReport says where each unfinished job stands at each of its
// watchers, for a failure message.
func (r *run) progressReport() string {
	var b strings.Builder
	for _, j := range r.jobs {
		finished := true
		for _, w := range j.watchers {
			s := w.snapshot("job:" + j.id).current()
			if s == nil || len(s.events) == 0 || finalState(s.events[len(s.events)-1]) == "" {
				finished = false
			}
		}
		if finished {
			continue
		}
		fmt.Fprintf(&b, "    job %s:", j.id)
		for _, w := range j.watchers {
			g := w.snapshot("job:" + j.id)
			s := g.current()
			switch {
			case s == nil || len(s.events) == 0:
				fmt.Fprintf(&b, " %v: nothing;", w)
			default:
				e := s.events[len(s.events)-1]
				fmt.Fprintf(&b, " %v: seq %d %s at %s;", w, e.seq, describe(e), e.at.Format("15:04:05.000"))
			}
		}
		b.WriteString("\n")
	}
	return strings.TrimRight(b.String(), "\n")
}

// getJob asks the API (either replica) for the job as its owner, retrying
// server errors until deadline: Redis may still be coming back.
func (r *run) getJob(j jobRef, deadline time.Time) (*jobView, error) {
	var view jobView
	var err error
	for i := 0; ; i++ {
		err = j.owner.do("GET", r.c.base(i%2)+"/api/jobs/"+j.id, nil, &view)
		var ae *apiError
		if err == nil || (errors.As(err, &ae) && ae.status < 500) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	return &view, nil
}

// recoveryTime is, unless the scenario measures it otherwise, the longest
// time from the end of the fault until a watcher got its next event of a
// job that was still running when the fault began.
func (r *run) recoveryTime() (time.Duration, bool) {
	if r.recovery != nil {
		return r.recovery()
	}
	var worst time.Duration
	for _, j := range r.jobs {
		for _, w := range j.watchers {
			g := w.snapshot("job:" + j.id)
			ended, next := false, time.Time{}
			for _, s := range g.segs {
				for _, e := range s.events {
					if e.at.Before(r.faultStart) && finalState(e) != "" {
						ended = true
					}
					if next.IsZero() && e.at.After(r.faultEnd) {
						next = e.at
					}
				}
			}
			if ended {
				continue
			}
			if next.IsZero() {
				return 0, false
			}
			worst = max(worst, next.Sub(r.faultEnd))
		}
	}
	return worst, true
}

// apiFault stops API 0 with sig; its watchers must move to API 1 and
// resume there. API 0 is restarted once they have.
func apiFault(sig syscall.Signal) func(r *run) {
	return func(r *run) {
		api := r.c.apis[0]
		r.faultStart = time.Now()
		api.signal(sig)
		if !api.wait(30 * time.Second) {
			r.note("api0 did not exit within 30 s of %v", sig)
			api.kill()
		}
		r.faultEnd = r.faultStart
		if !waitFor(movedWithin, func() bool {
			for _, w := range r.watchers {
				if w.connectedTo() != 1 {
					return false
				}
			}
			return true
		}) {
			var where []string
			for _, w := range r.watchers {
				where = append(where, fmt.Sprintf("%v→%d", w, w.connectedTo()))
			}
			r.note("watchers did not all move to api1 within %v: %s", movedWithin, strings.Join(where, " "))
		}
		r.c.startAPI(0)
	}
}

// closedWith checks that every socket API api had open when the fault
// began was closed with code (1001 for a graceful shutdown).
func closedWith(api, code int) func(r *run, t *tally) {
	return func(r *run, t *tally) {
		for _, w := range r.watchers {
			for _, c := range w.connections() {
				if c.api == api && c.opened.Before(r.faultStart) && !c.byUs && c.closeCode != code {
					t.problem("%v: its socket to api%d ended with %d (%s), want %d", w, api, c.closeCode, c.closeErr, code)
				}
			}
		}
	}
}

// workerFault stops worker 0 with sig mid-job and starts it again at once,
// as a supervisor would. Its jobs must run again (on either worker) and end.
func workerFault(sig syscall.Signal) func(r *run) {
	return func(r *run) {
		wk := r.c.workers[0]
		r.faultStart = time.Now()
		wk.signal(sig)
		if !wk.wait(30 * time.Second) {
			r.note("worker0 did not exit within 30 s of %v", sig)
			wk.kill()
		}
		r.faultEnd = r.faultStart
		r.c.startWorker(0)
	}
}

// retriedAfterKill: a job whose worker was killed must tell its watchers
// "state retry" before its next attempt (issue 7, 6a).
func retriedAfterKill(r *run, t *tally) {
	for _, j := range r.jobs {
		for _, w := range j.watchers {
			s := w.snapshot("job:" + j.id).current()
			if s == nil {
				continue
			}
			actives, retried := 0, false
			for _, e := range s.events {
				if e.name != "state" {
					continue
				}
				switch stateOf(e) {
				case "active":
					actives++
					if actives > 1 && !retried {
						t.about("job "+j.id, w, "attempt %d began with no state retry after the kill", actives)
					}
					retried = false
				case "retry":
					retried = true
				}
			}
		}
	}
}

// redisRestart kills Redis mid-job and, after redisDowntime (clients
// meanwhile must be told 503, see probeAPI), starts it again on the same port:
// with its AOF (fsync always: nothing acknowledged is lost), or on an
// empty data directory (everything is lost).
func redisRestart(wipe bool) func(r *run) {
	return func(r *run) {
		rd := r.c.redis
		r.faultStart = time.Now()
		rd.proc.kill()
		if wipe {
			if err := rd.wipe(); err != nil {
				r.t.Fatal(err)
			}
		}
		finish := r.probeAPI("down")
		time.Sleep(redisDowntime)
		downUntil := time.Now()
		if err := rd.restart(); err != nil {
			r.t.Fatalf("restart redis: %v", err)
		}
		r.faultEnd = time.Now()
		finish(downUntil)
	}
}

// redisPause stops Redis (SIGSTOP) for d: connections stay open, nothing
// answers.
func redisPause(d time.Duration) func(r *run) {
	return func(r *run) {
		rd := r.c.redis
		r.faultStart = time.Now()
		rd.proc.signal(syscall.SIGSTOP)
		finish := r.probeAPI("stopped")
		time.Sleep(d)
		downUntil := time.Now()
		rd.proc.signal(syscall.SIGCONT)
		r.faultEnd = time.Now()
		finish(downUntil)
	}
}

// probeAPI starts asking both APIs for a job, as a client would while
// Redis is down; the returned func, called once Redis is back, stops and
// checks the answers: one given before downUntil (when Redis was started
// or continued again) must be 503 unavailable with Retry-After (issue 7,
// item 5), and none may be a 500.
func (r *run) probeAPI(how string) (finish func(downUntil time.Time)) {
	j := r.jobs[0]
	stop := make(chan struct{})
	var once sync.Once
	halt := func() { once.Do(func() { close(stop) }) }
	r.t.Cleanup(halt) // the probe ends even when the scenario stops early
	probed := make(chan []probe, 1)
	go func() { probed <- probeWhile(r.c, j, stop) }()
	return func(downUntil time.Time) {
		halt()
		probes := <-probed
		var seen []string
		for _, p := range probes {
			seen = append(seen, fmt.Sprintf("api%d %d in %.1f s", p.api, p.status, p.answered.Sub(p.asked).Seconds()))
		}
		r.t.Logf("requests while Redis was %s: %s", how, strings.Join(seen, ", "))
		for _, p := range probes {
			during := p.answered.Before(downUntil)
			switch {
			case p.err != nil:
				r.note("GET /api/jobs/%s on api%d while Redis was %s: %v", j.id, p.api, how, p.err)
			case p.status == 500 || (during && p.status != 503):
				r.note("GET /api/jobs/%s on api%d answered %d %s after %.1f s, while Redis was %s; want 503 unavailable with Retry-After",
					j.id, p.api, p.status, p.body, p.answered.Sub(p.asked).Seconds(), how)
			case p.status == 503 && p.retryAfter == "":
				r.note("GET /api/jobs/%s on api%d answered 503 without Retry-After", j.id, p.api)
			}
		}
	}
}

// probe is one HTTP request made while Redis was stopped.
type probe struct {
	api             int
	asked, answered time.Time
	status          int
	body            string
	retryAfter      string
	err             error
}

// probeWhile asks both APIs in turn for job j until stop is closed, and
// returns every answer. Each request ends with the client's timeout.
func probeWhile(c *cluster, j jobRef, stop <-chan struct{}) []probe {
	var out []probe
	for i := 0; ; i++ {
		select {
		case <-stop:
			return out
		default:
		}
		p := probe{api: i % 2, asked: time.Now()}
		req, _ := http.NewRequest("GET", c.base(p.api)+"/api/jobs/"+j.id, nil)
		if j.owner.bearer != "" {
			req.Header.Set("Authorization", "Bearer "+j.owner.bearer)
		}
		res, err := j.owner.client.Do(req)
		p.answered, p.err = time.Now(), err
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(res.Body, 300))
			res.Body.Close()
			p.status, p.body, p.retryAfter = res.StatusCode, strings.TrimSpace(string(b)), res.Header.Get("Retry-After")
		}
		out = append(out, p)
		select {
		case <-stop:
			return out
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// The slow-reader scenario: three watchers on a chat room (the slow one
// and another on api0, one on api1); the slow one stops reading and the
// room is flooded until the server cuts it (its "leave" is published),
// then an end marker is posted and the slow one reads again.
const (
	floodRoom     = "chat:flood"
	floodMax      = 6000 // messages at most: more than the send queue and socket buffers hold
	floodWithin   = 60 * time.Second
	floodTextSize = 1900 // characters per message (the limit is 2,000)
)

func slowReader(r *run) {
	slow, same, other := r.watchers[0], r.watchers[3], r.watchers[5] // u0 tab0 (api0), u1 tab1 (api0), u2 tab1 (api1)
	room := []*watcher{slow, same, other}
	for _, w := range room {
		w.watch(floodRoom)
	}
	if !waitFor(10*time.Second, func() bool {
		for _, w := range room {
			if w.snapshot(floodRoom).current() == nil {
				return false
			}
		}
		return true
	}) {
		r.t.Fatal("room watchers did not subscribe")
	}
	flooder, err := r.c.newUser(100, false)
	if err != nil {
		r.t.Fatal(err)
	}
	post := func(text string) error {
		return flooder.do("POST", r.c.base(0)+"/api/groups/"+floodRoom+"/messages", map[string]string{"text": text}, nil)
	}
	slowLeft := func() bool {
		s := same.snapshot(floodRoom).current()
		for _, e := range s.events {
			if e.name == "leave" && strings.Contains(string(e.data), `"id":"`+slow.u.id+`"`) {
				return true
			}
		}
		return false
	}

	r.faultStart = time.Now()
	slow.pause()
	pad := strings.Repeat("x", floodTextSize)
	deadline := time.Now().Add(floodWithin)
	sent := 0
	for sent < floodMax && time.Now().Before(deadline) && !slowLeft() {
		if err := post(strconv.Itoa(sent) + " " + pad); err != nil {
			r.t.Fatalf("flood message %d: %v", sent, err)
		}
		sent++
	}
	cut := slowLeft() || waitFor(15*time.Second, slowLeft)
	if !cut {
		r.note("the slow watcher was never cut: no leave after %d messages of %d bytes", sent, floodTextSize)
	}
	marker := fmt.Sprintf("END-%d", time.Now().UnixNano())
	if err := post(marker); err != nil {
		r.t.Fatalf("end marker: %v", err)
	}
	r.t.Logf("flooded %s with %d messages of %d bytes; slow watcher cut: %v", floodRoom, sent, floodTextSize, cut)
	if !waitFor(20*time.Second, func() bool {
		return hasMessage(same.snapshot(floodRoom).current().events, marker) && hasMessage(other.snapshot(floodRoom).current().events, marker)
	}) {
		r.note("the watchers that kept reading did not get the end marker")
	}
	r.faultEnd = time.Now()
	slow.resume()
	r.extraDone = func() bool {
		s := slow.snapshot(floodRoom).current()
		return s != nil && hasMessage(s.events, marker)
	}
	r.marker = marker
	// Time to recover: from reading again until the slow watcher holds an
	// event received on a new socket.
	r.recovery = func() (time.Duration, bool) {
		conns := slow.connections()
		first := -1
		for i, c := range conns {
			if c.opened.After(r.faultEnd) {
				first = i
				break
			}
		}
		if first < 0 {
			return 0, false
		}
		var at time.Time
		for _, g := range slow.groupNames() {
			for _, s := range slow.snapshot(g).segs {
				for _, e := range s.events {
					if e.conn >= first && (at.IsZero() || e.at.Before(at)) {
						at = e.at
					}
				}
			}
		}
		if at.IsZero() {
			return 0, false
		}
		return at.Sub(r.faultEnd), true
	}
}

// onlySlowCut: the flood room's watchers that kept reading saw every
// message and kept their sockets; the slow one was cut and, reading again,
// caught up (its history of the room may be told lost: the room keeps the
// last CHAT_HISTORY events).
func onlySlowCut(r *run, t *tally) {
	slow := r.watchers[0]
	for _, w := range r.watchers {
		cut := 0
		for _, c := range w.connections() {
			if !c.byUs {
				cut++
			}
		}
		if w == slow {
			if cut == 0 {
				t.problem("%v (the slow reader) was never cut", w)
			}
			continue
		}
		if cut > 0 {
			t.problem("%v kept reading but lost its socket %d times", w, cut)
		}
	}
	for i, w := range []*watcher{slow, r.watchers[3], r.watchers[5]} {
		checkRoom(t, w, floodRoom, r.marker, i > 0)
	}
}

// sentinelFailover moves the primary role to the replica mid-job: by
// asking the sentinel (SENTINEL FAILOVER: the replica is caught up first,
// nothing acknowledged is lost), or by killing the primary (the sentinel
// notices after down-after-milliseconds, 1 s here, and promotes the
// replica; writes not yet replicated would be lost). It waits until the
// sentinel names the new primary.
func sentinelFailover(kill bool) func(r *run) {
	return func(r *run) {
		s := r.c.sentinel
		r.faultStart = time.Now()
		if kill {
			r.c.primary.proc.kill()
		} else {
			sc := s.client()
			defer sc.Close()
			if err := sc.Failover(context.Background(), "mymaster").Err(); err != nil {
				r.t.Fatalf("SENTINEL FAILOVER: %v", err)
			}
		}
		want := r.c.replica.addr()
		if !waitFor(30*time.Second, func() bool { a, err := s.masterAddr(); return err == nil && a == want }) {
			r.note("the sentinel did not promote %s within 30 s", want)
		}
		r.faultEnd = time.Now()
	}
}
