package web

import (
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// stackPool runs functions that go deep (a WebSocket handshake through
// the router, the middleware and the session read; a subscribe through
// Redis round trips, the hub and JSON) on goroutines kept between calls,
// whose stacks have already grown to what such a call needs.
//
// A new goroutine starts with a small stack (2 KiB, or the average of the
// stacks the last GC scanned, which the many idle sockets keep small) and
// the runtime doubles it, copying it whole, each time a call needs more:
// in a join storm every handshake and every subscribe grew its stack from
// the start, 8–11 % of the server's CPU. A worker that finished a call
// parks and takes the next one with the stack it has.
//
// At most maxIdle workers park; a call that finds none parked starts one,
// so a burst is never queued behind a bounded number of workers (the
// calls wait for Redis, not for the CPU). A worker running a call belongs
// to that call's caller, which waits for it (net/http for a handshake, a
// socket's read pump for a frame); close stops the parked workers and
// waits for them, and a running one ends after its call.
type stackPool struct {
	tasks   chan *stackTask // unbuffered: a send is taken by a parked worker, or fails at once
	parked  atomic.Int32    // workers waiting on tasks, or about to
	maxIdle int32
	quit    chan struct{} // closed by close

	mu     sync.Mutex
	closed bool
	idle   sync.WaitGroup // the parked workers; Add only under mu while not closed
}

// stackTask is one call handed to a worker; recycled with its channel.
type stackTask struct {
	fn   func()
	done chan *taskPanic // buffered 1: the worker never waits on it
}

var stackTasks = sync.Pool{New: func() any { return &stackTask{done: make(chan *taskPanic, 1)} }}

// taskPanic is a panic of a function run off the caller's stack, carried
// back to the caller with the stack where it happened.
type taskPanic struct {
	value any
	stack []byte
}

func (p *taskPanic) String() string {
	return fmt.Sprintf("%v\n\nthe goroutine that panicked:\n%s", p.value, p.stack)
}

func newStackPool(maxIdle int) *stackPool {
	return &stackPool{tasks: make(chan *stackTask), maxIdle: int32(maxIdle), quit: make(chan struct{})}
}

// run calls fn on a worker and waits for it. It returns fn's panic, if
// any, for the caller to raise again: the caller's own goroutine is the
// one whose owner (net/http, the socket) knows what to do with it. After
// close, fn runs on the caller's goroutine.
func (p *stackPool) run(fn func()) *taskPanic {
	t := stackTasks.Get().(*stackTask)
	t.fn = fn
	select {
	case p.tasks <- t:
	default:
		if !p.start(t) {
			t.fn = nil
			stackTasks.Put(t)
			return call(fn)
		}
	}
	tp := <-t.done
	t.fn = nil
	stackTasks.Put(t)
	return tp
}

// start starts a worker with t as its first call, unless the pool is
// closed.
func (p *stackPool) start(t *stackTask) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	go p.work(t)
	return true
}

// work runs t, then parks for the next call while fewer than maxIdle
// workers are parked.
func (p *stackPool) work(t *stackTask) {
	for {
		t.done <- call(t.fn) // t belongs to its caller again from here
		if !p.toPark() {
			return
		}
		var ok bool
		if t, ok = p.park(); !ok {
			return
		}
	}
}

// toPark reports whether a worker that finished a call parks: the pool
// is open and fewer than maxIdle workers are parked. It then counts the
// worker as parked (park uncounts it).
func (p *stackPool) toPark() bool {
	if p.parked.Add(1) > p.maxIdle {
		p.parked.Add(-1)
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.parked.Add(-1)
		return false
	}
	p.idle.Add(1)
	return true
}

// parkedStackUse is the stack a parked worker keeps in use. A GC halves
// the stack of a goroutine that uses under a quarter of it, so a worker
// parked at a shallow depth would lose what its calls grew at every GC
// (several a second in a join storm) and grow it again on its next
// call; with this much in use, stacks up to four times it are kept.
const parkedStackUse = 8 << 10

// park waits for the worker's next call, holding parkedStackUse of its
// stack while it waits. It reports false when the pool closed.
//
//go:noinline
func (p *stackPool) park() (*stackTask, bool) {
	var hold [parkedStackUse]byte
	holdStack(&hold)
	defer p.idle.Done()
	defer p.parked.Add(-1)
	select {
	case t := <-p.tasks:
		return t, true
	case <-p.quit:
		return nil, false
	}
}

// holdStack keeps its argument, an array in its caller's frame, from
// being optimized away.
//
//go:noinline
func holdStack(*[parkedStackUse]byte) {}

// call runs fn and returns its panic, if any.
func call(fn func()) (tp *taskPanic) {
	defer func() {
		if v := recover(); v != nil {
			tp = &taskPanic{value: v, stack: debug.Stack()}
		}
	}()
	fn()
	return nil
}

// close stops the parked workers and waits for them; a running worker
// ends after its call, and calls after close run on their callers'
// goroutines. It does not wait for running calls: their callers do (a
// server's Shutdown must not wait for handshakes that net/http owns).
func (p *stackPool) close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.quit)
	}
	p.mu.Unlock()
	p.idle.Wait()
}
