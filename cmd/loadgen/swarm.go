package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"taskstream/wire"
)

// swarm is the subscribers of one scenario run: a goroutine per socket
// that dials it, reads it and, in a restart, dials it again. The swarm
// owns those goroutines: Close stops them and waits.
type swarm struct {
	t      target
	fr     framing
	socks  []*sock
	users  int
	sem    chan struct{} // handshakes in flight
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	rings  []*recvRing // the sockets' receive rings (useRings), closed after them

	joined        atomic.Int64
	allJoined     chan struct{} // closed when every socket joined once
	dialFailed    atomic.Int64  // sockets that gave up joining (maxJoinAttempts)
	errMu         sync.Mutex
	firstErr      string // the first of those failures
	firstRetry    string // why the first join that was tried again failed
	firstNotRecov string // the first resume answered recovered:false, for the report

	// resume: reconnect after a close and resume from the last seq.
	resume     bool
	resumed    atomic.Int64
	allResumed chan struct{} // closed when every socket resumed once

	recording atomic.Bool // count deliveries (and keep latencies when keepLat)
	keepLat   bool
	fan       *fanout // closed-loop bookkeeping, or nil

	// measured is called when a scenario's measuring phase ended (its
	// deliveries are in), before its figures are worked out: it stops
	// -cpuprofile. Idempotent.
	measured func()
}

// newSwarm prepares n sockets of users users; start opens them.
func newSwarm(ctx context.Context, t target, n, users, dialConc int) *swarm {
	sw := &swarm{t: t, fr: t.Framing(), socks: make([]*sock, n), users: users,
		sem: make(chan struct{}, dialConc), allJoined: make(chan struct{}), allResumed: make(chan struct{}),
		measured: func() {}}
	sw.ctx, sw.cancel = context.WithCancel(ctx)
	for i := range sw.socks {
		sw.socks[i] = &sock{id: i}
	}
	return sw
}

// useRings starts n receive rings (recvRing) and spreads the sockets
// over them. It returns an error wrapping uring.ErrUnavailable when the
// kernel has none to give, with none started; the sockets then read with
// read(2).
func (sw *swarm) useRings(n int) error {
	for range n {
		rr, err := newRecvRing(0)
		if err != nil {
			for _, rr := range sw.rings {
				rr.close()
			}
			sw.rings = nil
			return err
		}
		sw.rings = append(sw.rings, rr)
	}
	for i, s := range sw.socks {
		s.ring = sw.rings[i%len(sw.rings)]
	}
	return nil
}

// reader sets up how the sockets receive: with rings, one receive ring
// per P (useRings), else (or where the kernel refuses rings) one
// read(2) per socket wake-up. It says which, for the report's notes.
func (sw *swarm) reader(rings bool) string {
	if !rings {
		return "subscribers read with read(2), one per socket wake-up"
	}
	n := runtime.GOMAXPROCS(0)
	if err := sw.useRings(n); err != nil {
		return fmt.Sprintf("subscribers read with read(2), one per socket wake-up: no receive ring (%v)", err)
	}
	return fmt.Sprintf("subscribers receive through %d io_uring rings (multishot receives, one thread each)", n)
}

// start opens every socket, at most dialConc handshakes at a time.
func (sw *swarm) start() {
	for _, s := range sw.socks {
		sw.wg.Add(1)
		go sw.life(s)
	}
}

// maxJoinAttempts bounds the tries of a socket's first join.
const maxJoinAttempts = 20

// life dials s, reads it until it ends and dials again, as a browser
// client does: with a jittered backoff after a failed first join (a
// refused handshake, a refused subscribe, a close before `subscribed`;
// at most maxJoinAttempts tries) and, when the swarm resumes, after a
// close, resuming from the last seq seen.
func (sw *swarm) life(s *sock) {
	defer sw.wg.Done()
	failures := 0 // attempts in a row that did not join
	for {
		if failures > 0 || s.joined {
			// 50–250 ms, growing to at most 625 ms while the server is
			// down; 1–1.5 s after a refused subscribe (a rate limit in
			// practice).
			backoff := time.Duration(50+rand.IntN(200)) * time.Millisecond * time.Duration(min(failures, 4)+1) / 2
			if s.refused {
				s.refused = false
				backoff = time.Second + time.Duration(rand.IntN(500))*time.Millisecond
			}
			select {
			case <-sw.ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
		select {
		case sw.sem <- struct{}{}:
		case <-sw.ctx.Done():
			return
		}
		err := sw.t.Dial(sw.ctx, s, s.id%sw.users, s.joined)
		<-sw.sem
		if sw.ctx.Err() != nil {
			if err == nil {
				_ = s.ws.Close()
			}
			return
		}
		why := ""
		if err == nil {
			wasJoined := s.joined
			if !sw.t.Protocol() && !s.joined {
				s.joined = true
				sw.markJoined()
			}
			code := sw.read(s, wasJoined)
			if sw.ctx.Err() != nil {
				return
			}
			if s.closeCode == 0 {
				s.closeCode = code
			}
			if code == closeTryAgain {
				s.tryAgain++
			}
			if s.joined {
				if !sw.resume {
					return
				}
				failures = 0
				continue
			}
			why = fmt.Sprintf("closed with %d before joining", code)
			if s.refused {
				why = "subscribe refused: " + s.refusal
			}
		} else {
			why = err.Error()
		}
		// The first join failed: try again, or give up.
		failures++
		s.joinRetries++
		sw.noteRetry(why)
		if failures >= maxJoinAttempts {
			sw.fail(fmt.Sprintf("%d tries, the last: %s", failures, why))
			return
		}
	}
}

// noteRetry remembers why the first failed join failed, for the report.
func (sw *swarm) noteRetry(why string) {
	sw.errMu.Lock()
	if sw.firstRetry == "" {
		sw.firstRetry = why
	}
	sw.errMu.Unlock()
}

// fail records a socket that could not join.
func (sw *swarm) fail(why string) {
	sw.errMu.Lock()
	if sw.firstErr == "" {
		sw.firstErr = why
	}
	sw.errMu.Unlock()
	sw.dialFailed.Add(1)
}

func (sw *swarm) markJoined() {
	if sw.joined.Add(1) == int64(len(sw.socks)) {
		close(sw.allJoined)
	}
}

// read handles s's frames until the socket ends; it returns the close
// code (-1: no close frame; 0: the subscribe was refused).
func (sw *swarm) read(s *sock, resuming bool) int {
	defer s.ws.Close()
	err := s.readMessages(sw.ctx, func(msg []byte, now time.Time) bool {
		eachFrame(msg, sw.fr, func(fr []byte) { sw.frame(s, fr, now, resuming) })
		return !s.refused
	})
	if err == nil {
		return 0
	}
	return closeCodeOf(err)
}

// frame handles one frame: taskstream's bookkeeping (subscribed, seqs,
// epoch), then the publisher's stamp if it carries one.
func (sw *swarm) frame(s *sock, fr []byte, now time.Time, resuming bool) {
	if sw.t.Protocol() {
		f := scanTS(fr)
		switch f.kind {
		case 's':
			if f.epoch != nil && string(f.epoch) != s.epoch {
				s.epoch = string(f.epoch)
			}
			if s.subscribed {
				return
			}
			s.subscribed = true
			if !resuming {
				s.joined = true
				sw.markJoined()
				return
			}
			if !f.recovered {
				s.notRecov = true
				sw.errMu.Lock()
				if sw.firstNotRecov == "" {
					sw.firstNotRecov = fmt.Sprintf("resumed after seq %d of epoch %q, answered %s", s.lastSeq, s.epoch, fr[:min(len(fr), 300)])
				}
				sw.errMu.Unlock()
			}
			if !s.resumed.Swap(true) && sw.resumed.Add(1) == int64(len(sw.socks)) {
				close(sw.allResumed)
			}
			return
		case 'x':
			if !s.subscribed && !s.refused {
				// The subscribe was refused: life tries again after a
				// second.
				s.refused = true
				s.refusal = string(fr[:min(len(fr), 300)])
				if resuming {
					s.refusals++
				}
			}
			return
		case 'e':
			if f.epoch != nil && string(f.epoch) != s.epoch {
				s.epoch = string(f.epoch)
			}
			switch {
			case s.lastSeq == 0 || f.seq == s.lastSeq+1:
			case f.seq <= s.lastSeq:
				s.dups++
				return
			default:
				s.gaps++
			}
			s.lastSeq = f.seq
			s.seqSeen.Store(f.seq)
		default:
			return
		}
	}
	if sw.fan == nil && !sw.recording.Load() {
		return // no use for a stamp: spare the scan of the frame for one
	}
	pub, n, _, ok := stampOf(fr)
	if !ok {
		return
	}
	if sw.fan != nil {
		sw.fan.got(s, pub, n)
	}
	if sw.recording.Load() {
		s.delivered++
		if sw.fan == nil {
			// Per socket, summed by deliveredLive: one counter for all
			// would be a cache line every reader writes.
			s.live.Store(s.delivered)
		}
		if sw.keepLat {
			s.got = append(s.got, received{n, now.UnixNano()})
		}
	}
}

// waitJoined waits until every socket joined, or until ctx ends or a
// dial failed for good; it returns when the last one joined.
func (sw *swarm) waitJoined(ctx context.Context) (time.Time, bool) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-sw.allJoined:
			return time.Now(), true
		case <-ctx.Done():
			return time.Now(), false
		case <-t.C:
			if sw.dialFailed.Load() > 0 && sw.joined.Load()+sw.dialFailed.Load() >= int64(len(sw.socks)) {
				return time.Now(), false
			}
		}
	}
}

// deliveredLive is the deliveries counted so far (open loop only).
func (sw *swarm) deliveredLive() int64 {
	var n int64
	for _, s := range sw.socks {
		n += s.live.Load()
	}
	return n
}

// behind counts the sockets that have not seen seq yet.
func (sw *swarm) behind(seq int64) int {
	n := 0
	for _, s := range sw.socks {
		if s.seqSeen.Load() < seq {
			n++
		}
	}
	return n
}

// bytesRead sums what every socket read so far.
func (sw *swarm) bytesRead() int64 {
	var n int64
	for _, s := range sw.socks {
		n += s.read.Load()
	}
	return n
}

// Close stops every socket's goroutine and waits for them. The sockets'
// plain fields may be read after it.
func (sw *swarm) Close() {
	sw.cancel()
	sw.wg.Wait()
	for _, rr := range sw.rings {
		rr.close()
	}
}

// closes counts the sockets the server closed, by close code (-1: the
// connection was lost without a close frame).
func (sw *swarm) closes() map[int]int {
	m := map[int]int{}
	for _, s := range sw.socks {
		if s.closeCode != 0 {
			m[s.closeCode]++
		}
	}
	return m
}

const closeTryAgain = wire.CloseTryAgain

// fanout is the closed loop's bookkeeping: for each publisher, a ring of
// window counters, each the subscribers still missing one of its
// messages in flight.
type fanout struct {
	subs   int32
	window int
	slots  [][]atomic.Int32 // [publisher][n % window]
	done   []chan int64     // per publisher: its messages delivered to every subscriber, in order
}

func newFanout(pubs, subs, window int) *fanout {
	f := &fanout{subs: int32(subs), window: window, slots: make([][]atomic.Int32, pubs), done: make([]chan int64, pubs)}
	for p := range pubs {
		f.slots[p] = make([]atomic.Int32, window)
		f.done[p] = make(chan int64, window) // at most window messages in flight: never blocks
	}
	return f
}

// got records that subscriber s received message n of publisher pub.
// Messages of one publisher are numbered from 1 and must arrive in order.
func (f *fanout) got(s *sock, pub int, n int64) {
	if pub < 0 || pub >= len(f.slots) {
		return
	}
	if s.perPub == nil {
		s.perPub = make([]int64, len(f.slots))
	}
	if n != s.perPub[pub]+1 {
		s.outOfOrder++
	}
	s.perPub[pub] = n
	if f.slots[pub][n%int64(f.window)].Add(-1) == 0 {
		f.done[pub] <- n
	}
}
