package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"taskstream/cmd/internal/latency"
	"taskstream/cmd/internal/machine"
	"taskstream/progress"
)

// The scenarios, in the order "all" runs them.
var scenarioNames = []string{"join", "idle", "fanout", "latency", "bytes", "restart"}

// params are one scenario's sizes. Each scenario has its defaults
// (scenarioDefaults); a flag given on the command line overrides them
// for every scenario of the run.
type params struct {
	Clients    int           // subscriber sockets
	Users      int           // distinct sessions they belong to (taskstream: guests; gorilla has none)
	Publishers int           // fanout: closed-loop publishers; latency, bytes: workers of the open loop
	Window     int           // fanout: messages each publisher has in flight
	Duration   time.Duration // fanout, latency, bytes: how long to publish
	Rate       float64       // latency, bytes: messages per second; restart: background messages per second
	Payload    int           // bytes of message text
	Settle     time.Duration // pause after the join before measuring (presence traffic and GC settle)
	// ClientProcs is the load client's GOMAXPROCS during the scenario
	// (0: Go's default, every CPU); the servers it starts keep theirs.
	// The client shares the servers' CPUs: fewer Ps take fewer of them at
	// once (BENCHMARKS.md §0 has what one P did to the latency figures).
	ClientProcs int
}

var scenarioDefaults = map[string]params{
	"join":    {Clients: 5000, Users: 250},
	"idle":    {Clients: 10000, Users: 250, Settle: 2 * time.Second},
	"fanout":  {Clients: 1000, Users: 50, Publishers: 16, Window: 1, Duration: 10 * time.Second, Settle: time.Second},
	"latency": {Clients: 1000, Users: 50, Publishers: 16, Duration: 10 * time.Second, Rate: 100, Settle: time.Second},
	"bytes":   {Clients: 1000, Users: 50, Publishers: 16, Duration: 5 * time.Second, Rate: 100, Settle: time.Second},
	"restart": {Clients: 5000, Users: 250, Duration: time.Second, Rate: 20, Settle: time.Second},
}

// paramsFor is scenario's defaults with the flags the command line set.
func paramsFor(scenario string, c config) params {
	p := scenarioDefaults[scenario]
	p.Payload = 100
	if c.set["clients"] {
		p.Clients = c.Clients
	}
	if c.set["users"] {
		p.Users = c.Users
	} else if c.set["clients"] {
		// 20 sockets a user, as the defaults: taskstream lets a user join
		// rooms 1/s with a burst of 20.
		p.Users = (p.Clients + 19) / 20
	}
	p.Users = min(p.Users, p.Clients)
	if c.set["publishers"] {
		p.Publishers = c.Publishers
	}
	if c.set["window"] {
		p.Window = c.Window
	}
	if c.set["duration"] {
		p.Duration = c.Duration
	}
	if c.set["rate"] {
		p.Rate = c.Rate
	}
	if c.set["payload"] {
		p.Payload = c.Payload
	}
	if c.set["settle"] {
		p.Settle = c.Settle
	}
	if c.set["client-procs"] {
		p.ClientProcs = c.ClientProcs
	}
	return p
}

// figure is one measured number of a scenario.
type figure struct {
	Name string
	Val  float64
	Prec int // decimals printed
}

// outcome is a scenario's result on one target.
type outcome struct {
	Figs  []figure
	Notes []string
	Err   error
	Skip  string // why the scenario does not apply to this target
}

func (o *outcome) add(name string, v float64, prec int) {
	o.Figs = append(o.Figs, figure{name, v, prec})
}

func (o *outcome) note(format string, a ...any) {
	o.Notes = append(o.Notes, fmt.Sprintf(format, a...))
}

// joinTimeout bounds the wait for every socket to join.
const joinTimeout = 3 * time.Minute

// runScenario runs one scenario on a fresh process of t.
func runScenario(ctx context.Context, name string, p params, t target, c config) (o outcome) {
	say := func(format string, a ...any) {
		if c.progress != nil {
			fmt.Fprintf(c.progress, "%s %s on %s: %s\n", time.Now().Format("15:04:05"), name, t.Name(), fmt.Sprintf(format, a...))
		}
	}
	defer func() {
		if o.Err != nil {
			say("failed: %v", o.Err)
		} else {
			say("done")
		}
	}()
	if name == "restart" && !t.Protocol() {
		return outcome{Skip: "no resume in the reference"}
	}
	if p.ClientProcs > 0 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(p.ClientProcs))
	}
	if err := t.Start(ctx); err != nil {
		return outcome{Err: err}
	}
	defer t.Stop()
	if err := t.Prepare(ctx, p.Users); err != nil {
		return outcome{Err: err}
	}
	rss0, err := rssOf(t.PID())
	if err != nil {
		return outcome{Err: err}
	}
	var fan *fanout
	if name == "fanout" {
		fan = newFanout(p.Publishers, p.Clients, p.Window)
	}
	sw := newSwarm(ctx, t, p.Clients, p.Users, c.DialConcurrency)
	sw.fan, sw.keepLat, sw.resume = fan, name == "latency", name == "restart"
	defer sw.Close()
	o.note("%s: %s", t.Name(), sw.reader(c.ReadRing && ringsPay(name)))
	say("server pid %d up; opening %d sockets as %d users", t.PID(), p.Clients, p.Users)
	stopJoinProfile := func() error { return nil }
	if name == "join" && c.CPUProfile != "" {
		if stopJoinProfile, err = startCPUProfile(profilePath(c.CPUProfile, name, t.Name())); err != nil {
			return outcome{Err: err}
		}
	}
	t0 := time.Now()
	cpu0 := takeCPU(t.PID())
	sw.start()
	joinCtx, cancelJoin := context.WithTimeout(ctx, joinTimeout)
	end, ok := sw.waitJoined(joinCtx)
	cancelJoin()
	if err := stopJoinProfile(); err != nil {
		return outcome{Err: err}
	}
	joinCPU, joinCPUOK := cpuBetween(cpu0, takeCPU(t.PID()), time.Since(t0))
	say("%d of %d joined after %s", sw.joined.Load(), p.Clients, time.Since(t0).Round(time.Millisecond))
	if !ok {
		sw.Close()
		return outcome{Err: fmt.Errorf("%d of %d sockets joined; %d failed, the first: %s; closes: %s",
			sw.joined.Load(), p.Clients, sw.dialFailed.Load(), sw.firstErr, closesText(sw.closes()))}
	}
	joinTime := end.Sub(t0)
	retried, retries := 0, 0
	for _, s := range sw.socks {
		// Safe to read: a socket writes these only until it joined, and
		// every one has (markJoined orders it before allJoined).
		if s.joined && s.joinRetries > 0 {
			retried++
			retries += s.joinRetries
		}
	}
	if name == "join" {
		o.add("all joined in, s", joinTime.Seconds(), 3)
		o.add("sockets that had to try again", float64(retried), 0)
		if joinCPUOK {
			// Who the join waited for: the server, the load client (which
			// reads each socket's subscribed frame and replay; the
			// reference sends neither), or the rest of the machine.
			o.add("load client CPU, cores", joinCPU.client, 2)
			o.add("server CPU, cores", joinCPU.server, 2)
			o.add("other processes' CPU, cores", joinCPU.others, 2)
		}
		o.note("%s: %s", t.Name(), joinMeaning(t))
	}
	if retried > 0 {
		sw.errMu.Lock()
		why := sw.firstRetry
		sw.errMu.Unlock()
		o.note("%s: %d sockets joined only after %d failed tries (jittered backoff, as a browser); the first failure: %s", t.Name(), retried, retries, why)
	}
	if p.Settle > 0 {
		select {
		case <-time.After(p.Settle):
		case <-ctx.Done():
			return outcome{Err: ctx.Err()}
		}
	}
	if measuring(name) && c.CPUProfile != "" {
		stop, err := startCPUProfile(profilePath(c.CPUProfile, name, t.Name()))
		if err != nil {
			return outcome{Err: err}
		}
		var once sync.Once
		var stopErr error
		sw.measured = func() { once.Do(func() { stopErr = stop() }) }
		defer func() {
			sw.measured()
			if stopErr != nil && o.Err == nil {
				o.Err = stopErr
			}
		}()
	}
	switch name {
	case "idle":
		rss1, err := rssOf(t.PID())
		if err != nil {
			return outcome{Err: err}
		}
		o.add("server RSS per idle socket, KiB", float64(rss1-rss0)/float64(p.Clients)/1024, 1)
		o.note("%s: VmRSS %.1f MiB before the sockets, %.1f MiB with %d subscribed", t.Name(), float64(rss0)/(1<<20), float64(rss1)/(1<<20), p.Clients)
	case "fanout", "latency", "bytes", "restart":
		// These build their own outcome: keep the notes so far.
		notes := o.Notes
		switch name {
		case "fanout":
			o = closedLoop(ctx, sw, t, p)
		case "restart":
			o = restart(ctx, sw, t.(*tsTarget), p)
		default:
			o = openLoop(ctx, sw, t, p, name)
		}
		o.Notes = append(notes, o.Notes...)
	}
	sw.Close()
	if n := sw.dialFailed.Load(); n > 0 {
		o.note("%s: %d sockets could not join, the first: %s", t.Name(), n, sw.firstErr)
	}
	if cl := sw.closes(); len(cl) > 0 && name != "restart" {
		o.note("%s: sockets closed by the server: %s", t.Name(), closesText(cl))
	}
	return o
}

// measuring reports whether scenario has a measuring phase that
// -cpuprofile covers: the publishing and the deliveries. (The join
// scenario's profile covers its join instead.)
func measuring(scenario string) bool {
	return scenario == "fanout" || scenario == "latency" || scenario == "bytes"
}

// ringsPay reports whether a scenario's sockets are read through receive
// rings when -read-ring allows: in fanout, latency and bytes each socket
// receives thousands of messages, and the ring took the client's CPU per
// delivery from about 6 µs to 4.8; in a join a socket receives about three
// times, and attaching it to a ring (a descriptor duplicated, the ring's
// thread woken) cost more than that saves: 5,000 sockets joined in
// 1.93-2.39 s with rings against 1.59-1.61 s with read(2), the reference
// in 1.00-1.06 and 0.85-0.87 s (BENCHMARKS.md §0). Idle and restart are
// joins too.
func ringsPay(scenario string) bool { return measuring(scenario) }

// profilePath is where -cpuprofile path puts the profile of scenario on
// target: "-scenario-target" inserted before path's extension
// (/tmp/lg.prof: /tmp/lg-latency-gorilla.prof).
func profilePath(path, scenario, target string) string {
	ext := filepath.Ext(path)
	return strings.TrimSuffix(path, ext) + "-" + scenario + "-" + target + ext
}

func joinMeaning(t target) string {
	if t.Protocol() {
		return "a socket is joined when its `subscribed` frame arrived (after the upgrade and the subscribe)"
	}
	return "the chat example has no subscribe: a socket is joined when its upgrade is done"
}

func closesText(m map[int]int) string {
	codes := make([]int, 0, len(m))
	for c := range m {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	var parts []string
	for _, c := range codes {
		if c == -1 {
			parts = append(parts, fmt.Sprintf("%d lost without a close frame", m[c]))
		} else {
			parts = append(parts, fmt.Sprintf("%d with %d", m[c], c))
		}
	}
	return strings.Join(parts, ", ")
}

// senders opens n publishers of t; close them with closeAll.
func senders(ctx context.Context, t target, n int) ([]sender, error) {
	out := make([]sender, 0, n)
	for i := range n {
		s, err := t.Sender(ctx, i)
		if err != nil {
			closeAll(out)
			return nil, fmt.Errorf("publisher %d: %w", i, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func closeAll(ss []sender) {
	for _, s := range ss {
		s.close()
	}
}

// stallAfter ends the closed loop when a message has not reached every
// subscriber in this long (a subscriber was closed, or lost it).
const stallAfter = 10 * time.Second

// closedLoop is the fan-out scenario. Rule: each publisher numbers its
// messages from 1 and sends message n only once message n−window reached
// every subscriber (window 1: the previous one), until the duration has
// passed; then it waits for its messages in flight. Deliveries/s =
// stamped messages received by subscribers ÷ (last publisher done − first
// send).
func closedLoop(ctx context.Context, sw *swarm, t target, p params) (o outcome) {
	pubs, err := senders(ctx, t, p.Publishers)
	if err != nil {
		return outcome{Err: err}
	}
	defer closeAll(pubs)
	f := sw.fan
	sw.recording.Store(true)
	published := make([]int64, len(pubs))
	errs := make([]error, len(pubs))
	start := time.Now()
	stop := start.Add(p.Duration)
	var wg sync.WaitGroup
	for i, s := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, p.Payload+64)
			var received int64
			wait := func() bool {
				select {
				case <-f.done[i]:
					received++
					return true
				case <-time.After(stallAfter):
					errs[i] = fmt.Errorf("stalled: a message did not reach every subscriber in %s", stallAfter)
				case <-ctx.Done():
					errs[i] = ctx.Err()
				}
				return false
			}
			for n := int64(1); time.Now().Before(stop); n++ {
				if n > int64(p.Window) && !wait() {
					return
				}
				f.slots[i][n%int64(p.Window)].Store(f.subs)
				buf = stampText(buf, i, n, time.Now(), p.Payload)
				if err := s.send(ctx, buf); err != nil {
					errs[i] = err
					return
				}
				published[i] = n
			}
			for received < published[i] {
				if !wait() {
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	sw.measured()
	sw.Close()
	var delivered, sent int64
	outOfOrder := 0
	for _, s := range sw.socks {
		delivered += s.delivered
		outOfOrder += s.outOfOrder
	}
	for _, n := range published {
		sent += n
	}
	o.add("lossless deliveries/s", float64(delivered)/elapsed.Seconds(), 0)
	o.add("lost deliveries", float64(sent*int64(p.Clients)-delivered), 0)
	o.note("%s: %d publishers × window %d sent %d messages in %s; %d deliveries to %d subscribers; %d out of order",
		t.Name(), len(pubs), p.Window, sent, elapsed.Round(time.Millisecond), delivered, p.Clients, outOfOrder)
	if err := errors.Join(errs...); err != nil {
		o.note("%s: publishers: %v", t.Name(), firstLine(err))
	}
	return o
}

// openLoop is the latency and bytes scenarios: messages go out at rate
// per second for the duration whatever the deliveries, each stamped with
// the time it was due (so a publisher falling behind shows as latency);
// p.Publishers workers send them. Latency = receive time − due time.
// Bytes = bytes read on the subscribers' connections (WebSocket headers,
// pings and other frames included) from just before the first message to
// the last delivery, ÷ deliveries.
//
// The latency scenario also splits the delay (openTimes.figures): when
// each publish was sent against when it was due, the delay from the send,
// how long a message took to reach its first and its last subscriber,
// and the CPU the load client, the server and the rest of the machine
// used meanwhile.
func openLoop(ctx context.Context, sw *swarm, t target, p params, name string) (o outcome) {
	pubs, err := senders(ctx, t, p.Publishers)
	if err != nil {
		return outcome{Err: err}
	}
	defer closeAll(pubs)
	total := max(1, int(p.Rate*p.Duration.Seconds()))
	type job struct {
		n   int64
		due time.Time
	}
	jobs := make(chan job, 1024)
	tm := newOpenTimes(total)
	if sw.keepLat {
		for _, s := range sw.socks {
			// Written by s's reader only once recording is on (below).
			s.got = make([]received, 0, total)
			prefault(s.got[:total])
		}
	}
	b0 := sw.bytesRead()
	sw.recording.Store(true)
	cpu0 := takeCPU(t.PID())
	start := time.Now()
	var wg sync.WaitGroup
	published := make([]int64, len(pubs))
	errs := make([]error, len(pubs))
	for i, s := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, p.Payload+64)
			for j := range jobs {
				if errs[i] != nil {
					continue // drain
				}
				buf = stampText(buf, i, j.n, j.due, p.Payload)
				tm.sent[j.n] = time.Now().UnixNano()
				if err := s.send(ctx, buf); err != nil {
					errs[i] = err
					continue
				}
				tm.done[j.n] = time.Now().UnixNano()
				published[i]++
			}
		}()
	}
	for n := range total {
		d := due(start, n, p.Rate)
		if w := time.Until(d); w > 0 {
			select {
			case <-time.After(w):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		tm.due[n+1] = d.UnixNano()
		jobs <- job{int64(n + 1), d}
	}
	close(jobs)
	wg.Wait()
	pubEnd := time.Since(start)
	var sent int64
	for _, n := range published {
		sent += n
	}
	// Wait for the deliveries, at most 10 s.
	want := sent * int64(p.Clients)
	deadline := time.Now().Add(10 * time.Second)
	for sw.deliveredLive() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	cpu, cpuOK := cpuBetween(cpu0, takeCPU(t.PID()), time.Since(start))
	sw.measured()
	b1 := sw.bytesRead()
	sw.Close()
	var delivered int64
	for _, s := range sw.socks {
		delivered += s.delivered
	}
	switch name {
	case "latency":
		tm.figures(&o, sw.socks)
		if cpuOK {
			o.add("load client CPU, cores", cpu.client, 2)
			o.add("server CPU, cores", cpu.server, 2)
			o.add("other processes' CPU, cores", cpu.others, 2)
		}
		o.note("%s: latency is from the time each message was due; \"from send\" from when its publisher began sending it "+
			"(%s); \"late\" is send − due; first and last subscriber are from the send; CPU is over the %s from the first send "+
			"to the last delivery, in cores of %d (other processes: the rest of the machine%s)",
			t.Name(), sendMeaning(t), cpu.wall.Round(time.Millisecond), runtime.NumCPU(), othersMeaning(t))
	case "bytes":
		if delivered > 0 {
			o.add("bytes read per delivered message", float64(b1-b0)/float64(delivered), 0)
		}
	}
	o.note("%s: %d messages of %d bytes asked at %g/s, %d sent in %s (%.0f/s); %d of %d deliveries",
		t.Name(), total, p.Payload, p.Rate, sent, pubEnd.Round(time.Millisecond), float64(sent)/pubEnd.Seconds(), delivered, want)
	if err := errors.Join(errs...); err != nil {
		o.note("%s: publishers: %v", t.Name(), firstLine(err))
	}
	return o
}

// prefault writes to every page of got, so that the page faults of fresh
// memory happen now rather than in the receive path during the
// measurement.
func prefault(got []received) {
	const perPage = 4096 / 16 // received is 16 bytes
	for i := 0; i < len(got); i += perPage {
		got[i] = received{}
	}
}

func sendMeaning(t target) string {
	if t.Protocol() {
		return "a POST /api/publish, or a Log.Publish into Redis with -publish-via redis"
	}
	return "a WebSocket message on its own socket"
}

func othersMeaning(t target) string {
	if t.Protocol() {
		return ", redis-server included"
	}
	return ""
}

// openTimes are the open loop's times per message n (1..total), in Unix
// nanoseconds: when it was due, when its publisher began sending it and
// when the send returned (0: not sent). Each entry is written by one
// goroutine and read after the publishers ended.
type openTimes struct {
	due, sent, done []int64
}

func newOpenTimes(total int) *openTimes {
	return &openTimes{due: make([]int64, total+1), sent: make([]int64, total+1), done: make([]int64, total+1)}
}

// figures adds the latency scenario's figures from what socks received.
func (tm *openTimes) figures(o *outcome, socks []*sock) {
	n := len(tm.due)
	first, last := make([]int64, n), make([]int64, n)
	var fromDue, fromSend []time.Duration
	for _, s := range socks {
		for _, r := range s.got {
			if r.n < 1 || r.n >= int64(n) || tm.sent[r.n] == 0 {
				continue
			}
			fromDue = append(fromDue, time.Duration(r.at-tm.due[r.n]))
			fromSend = append(fromSend, time.Duration(r.at-tm.sent[r.n]))
			if first[r.n] == 0 || r.at < first[r.n] {
				first[r.n] = r.at
			}
			last[r.n] = max(last[r.n], r.at)
		}
	}
	var late, call, toFirst, toLast []time.Duration
	for i := 1; i < n; i++ {
		if tm.sent[i] == 0 {
			continue
		}
		late = append(late, time.Duration(tm.sent[i]-tm.due[i]))
		if tm.done[i] != 0 {
			call = append(call, time.Duration(tm.done[i]-tm.sent[i]))
		}
		if first[i] != 0 {
			toFirst = append(toFirst, time.Duration(first[i]-tm.sent[i]))
			toLast = append(toLast, time.Duration(last[i]-tm.sent[i]))
		}
	}
	d, s := latency.Summarize(fromDue), latency.Summarize(fromSend)
	l, c := latency.Summarize(late), latency.Summarize(call)
	f, z := latency.Summarize(toFirst), latency.Summarize(toLast)
	o.add("latency p50, ms", ms(d.P50), 1)
	o.add("latency p95, ms", ms(d.P95), 1)
	o.add("latency p99, ms", ms(d.P99), 1)
	o.add("from send p50, ms", ms(s.P50), 1)
	o.add("from send p99, ms", ms(s.P99), 1)
	o.add("publisher late p50, ms", ms(l.P50), 2)
	o.add("publisher late p99, ms", ms(l.P99), 2)
	o.add("publish call p50, ms", ms(c.P50), 2)
	o.add("first subscriber p50, ms", ms(f.P50), 1)
	o.add("last subscriber p50, ms", ms(z.P50), 1)
	o.add("last subscriber p99, ms", ms(z.P99), 1)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// restart: with every socket subscribed and messages going into the room
// through Redis at p.Rate (so some are published while the api is down),
// the api gets SIGTERM (it closes every socket with 1001) and is started
// again on the same port. Every socket reconnects with a 50–250 ms
// jittered backoff and resumes with after + epoch. Reported: the time
// from SIGTERM until every socket got `subscribed` with recovered:true
// again, events missed (a seq that does not follow the last one) and
// closes with 1013.
func restart(ctx context.Context, sw *swarm, t *tsTarget, p params) (o outcome) {
	rdb, err := progress.OpenRedis(ctx, t.redisURL, progress.ModeSingle)
	if err != nil {
		return outcome{Err: err}
	}
	defer rdb.Close()
	lg := progress.NewLog(rdb, progress.LogConfig{Prefix: t.prefix})
	pub := logSender{lg, t.group}
	pubCtx, stopPub := context.WithCancel(ctx)
	var pubWG sync.WaitGroup
	var pubErr error
	var sent int64
	pubWG.Add(1)
	go func() {
		defer pubWG.Done()
		buf := make([]byte, 0, p.Payload+64)
		start := time.Now()
		for n := 0; ; n++ {
			select {
			case <-pubCtx.Done():
				return
			case <-time.After(time.Until(due(start, n, p.Rate))):
			}
			buf = stampText(buf, 0, int64(n+1), time.Now(), p.Payload)
			if err := pub.send(pubCtx, buf); err != nil && pubCtx.Err() == nil {
				pubErr = err
				return
			}
			sent++
		}
	}()
	defer func() { stopPub(); pubWG.Wait() }()
	time.Sleep(p.Duration) // messages before the restart
	t0 := time.Now()
	oldExit, err := t.Restart(ctx)
	if err != nil {
		return outcome{Err: err}
	}
	up := time.Since(t0)
	var resumedIn time.Duration
	select {
	case <-sw.allResumed:
		resumedIn = time.Since(t0)
	case <-time.After(60 * time.Second):
	case <-ctx.Done():
	}
	time.Sleep(p.Duration) // messages after the restart
	stopPub()
	pubWG.Wait()
	snap, err := lg.Tail(ctx, t.group, 1)
	if err != nil {
		return outcome{Err: err}
	}
	deadline := time.Now().Add(10 * time.Second)
	for sw.behind(snap.LastSeq) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	behind := sw.behind(snap.LastSeq)
	sw.Close()
	gaps, dups, notRecov, tryAgain, refusals := 0, 0, 0, 0, 0
	for _, s := range sw.socks {
		refusals += s.refusals
		gaps += s.gaps
		dups += s.dups
		tryAgain += s.tryAgain
		if s.notRecov {
			notRecov++
		}
	}
	if resumedIn > 0 {
		o.add("every socket resumed in, s", resumedIn.Seconds(), 3)
	} else {
		o.note("taskstream: only %d of %d sockets resumed within 60 s", sw.resumed.Load(), len(sw.socks))
	}
	o.add("seq gaps", float64(gaps), 0)
	o.add("closed with 1013", float64(tryAgain), 0)
	o.note("taskstream restart: %s; serving again %s after SIGTERM; %d messages published through Redis meanwhile at %g/s; "+
		"closes: %s; resubscribes refused (tried again after 1–1.5 s) %d; recovered:false %d; duplicates %d; sockets short of the last seq %d at the end",
		oldExit, up.Round(time.Millisecond), sent, p.Rate, closesText(sw.closes()), refusals, notRecov, dups, behind)
	if sw.firstNotRecov != "" {
		o.note("taskstream restart: the first resume not recovered: %s", sw.firstNotRecov)
	}
	if pubErr != nil {
		o.note("taskstream restart: publisher: %v", pubErr)
	}
	return o
}

// runCompare runs each scenario on each target, back to back, and prints
// the table.
func runCompare(ctx context.Context, c config, targets []target, setup []string, out *strings.Builder) error {
	rep := compareReport{Date: time.Now().UTC(), LoadBefore: machine.LoadAverage(), Setup: setup, Targets: make([]string, len(targets))}
	for i, t := range targets {
		rep.Targets[i] = t.Name()
	}
	for _, name := range c.scenarios() {
		p := paramsFor(name, c)
		row := compareRow{Scenario: name, Params: p, Out: make([]outcome, len(targets))}
		for i, t := range targets {
			row.Out[i] = runScenario(ctx, name, p, t, c)
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		rep.Rows = append(rep.Rows, row)
	}
	rep.LoadAfter = machine.LoadAverage()
	rep.write(out)
	return nil
}

// scenarios is the -scenario list, "all" expanded.
func (c config) scenarios() []string {
	if c.Scenario == "all" {
		return scenarioNames
	}
	return strings.Split(c.Scenario, ",")
}

func validScenarios(list string) error {
	if list == "all" {
		return nil
	}
	for _, s := range strings.Split(list, ",") {
		if !slices.Contains(scenarioNames, s) {
			return fmt.Errorf("-scenario %q: want all or a comma-separated list of %s", s, strings.Join(scenarioNames, ", "))
		}
	}
	return nil
}
