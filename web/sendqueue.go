package web

import (
	"slices"
	"sync"

	"taskstream/progress"
	"taskstream/wire"
)

// sendQueue holds the frames waiting for one socket's write pump, bounded
// by frame count and by bytes, so a burst of small frames (joins, acks)
// fits where a few large ones would not. It allocates only what is queued,
// not its limit, so idle sockets stay small. Producers never block: a push
// over the limits fails and the caller drops the socket.
//
// A subscription's replay has a limit of its own, replayFactor times the
// byte limit: a group's history may be larger than the queue, and counting
// it against the live limits would drop every new subscriber of such a
// group before it could read a frame; a separate bound still stops a
// client that subscribes over and over without reading.
//
// Job groups' live events have limits of their own too (the same sizes),
// and a socket that falls behind on them is not dropped: it is served the
// latest progress instead of every one (conflation, see pushJob), so a
// slow reader watching a fast job keeps its stream while one that falls
// behind on a chat room is closed with 1013 as before.
type sendQueue struct {
	mu     sync.Mutex
	frames [][]byte
	spare  [][]byte // the previous batch's backing array, reused
	// The framesPool holders of frames' and spare's lists (nil: none
	// yet), kept with them so that giving a list back allocates nothing.
	framesBox, spareBox *[][]byte
	// meta describes frames entry by entry once a job event was queued
	// since the last take (tracked), so sockets without job groups pay
	// nothing for it.
	meta     []queuedMeta
	tracked  bool
	count    int // live frames of other groups and replies, against maxFrames
	bytes    int // their bytes, against maxBytes
	replayed int // replayed bytes, against replayFactor*maxBytes
	jobCount int // live job frames, against maxFrames, then replayFactor*maxFrames
	jobBytes int // their bytes, against maxBytes, then replayFactor*maxBytes
	// behind: a job event found the job limits full since the writer last
	// took the queue; until it does, progress events are conflated.
	behind    bool
	maxFrames int
	maxBytes  int

	// The writer: a goroutine runs only while there is something to
	// write (frames, a ping, the close), so an idle socket costs no
	// goroutine. writer starts one; nil until the socket runs.
	writer func()
	// direct, when set, writes what is queued without waiting and reports
	// whether it released the writer, a writer goroutine must carry on,
	// or the write was staged in the flusher goroutine's send ring (the
	// flusher reports the outcome with directDone once it is sent); the
	// flusher fl runs it. Not used for a ping or a close: those may wait.
	direct  func(fs *flushState) directStep
	fl      *flusher
	writers sync.WaitGroup // the running writer, for the socket's end
	running bool           // a writer (the flusher's turn, or a goroutine) owns the socket's writes
	stopped bool           // the last writer ended (close sent, or a write failed): none starts again
	pingDue bool           // the shared pinger asked for a ping
	closing bool           // a close was asked: it goes out before the backlog
}

// queuedMeta is what the queue knows of a queued job event: enough to
// drop it for a newer progress of its group and to give its count back.
type queuedMeta struct {
	ev      *progress.Event // nil for every other frame
	replay  bool            // charged to the replay limit, not the job one
	skipped int             // the progress events this frame stands in for
	form    frameForm       // how ev is encoded
}

// frameForm is the encoding of an event a socket is sent.
type frameForm uint8

const (
	formV1        frameForm = iota // the full event frame (v1)
	formLean                       // taskstream.v2, without the epoch
	formLeanEpoch                  // taskstream.v2, with the epoch: it differs from the last one the socket was given
)

// eventFrame returns ev encoded in form, with "skipped": n when n > 0:
// the shared encoding (encoded once per process) when n is 0.
func eventFrame(ev *progress.Event, form frameForm, n int) []byte {
	switch form {
	case formLean, formLeanEpoch:
		return ev.LeanFrameSkipped(form == formLeanEpoch, n)
	}
	return ev.FrameSkipped(n)
}

func newSendQueue(maxFrames, maxBytes int) *sendQueue {
	return &sendQueue{maxFrames: maxFrames, maxBytes: maxBytes}
}

// push queues frame, or reports false when that would exceed a limit.
func (q *sendQueue) push(frame []byte) bool {
	q.mu.Lock()
	if q.count >= q.maxFrames || q.bytes+len(frame) > q.maxBytes {
		q.mu.Unlock()
		return false
	}
	q.appendLocked(frame, queuedMeta{})
	q.count++
	q.bytes += len(frame)
	q.wakeUnlock()
	return true
}

// reserve makes room for n more frames at once: a subscriber's replay
// (a room's history, ~250 joins in a join storm) is queued one frame at a
// time right after its subscribed frame, and growing the list by
// appending doubled it five times over for each new socket. Nothing is
// reserved beyond maxPooledFrames, the pooled lists' bound.
func (q *sendQueue) reserve(n int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped || len(q.frames)+n > maxPooledFrames {
		return
	}
	if q.frames == nil {
		q.frames, q.framesBox = getFramesFor(n)
		return
	}
	q.frames = slices.Grow(q.frames, n)
}

// replayFactor sizes the replay limit from the live byte limit.
const replayFactor = 8

// pushReplay queues a replayed frame within the replay limit.
func (q *sendQueue) pushReplay(frame []byte) bool {
	q.mu.Lock()
	if q.replayed+len(frame) > replayFactor*q.maxBytes {
		q.mu.Unlock()
		return false
	}
	q.appendLocked(frame, queuedMeta{})
	q.replayed += len(frame)
	q.wakeUnlock()
	return true
}

// pushJob queues an event of a job group (replayed or live), conflating
// when the socket is behind, and reports false only when even conflation
// cannot keep the queue within its bounds.
//
// While the job limits (those of the live queue) have room, every event
// is queued. Once a job event finds them full the socket is behind, until
// the writer takes the queue: a progress event replaces every progress
// event of its group still queued (they are dropped, and the new frame
// carries "skipped": how many it stands in for), and is queued last, so
// seqs stay increasing; every other event (state, log,
// result, failed) is never dropped. Both are then held up to
// replayFactor times the limits; only a job whose other events alone
// overrun that closes the socket. A replayed frame beyond the replay
// limit conflates the same way.
//
// form is how the socket gets ev. A frame that carries its epoch
// (formLeanEpoch) is never dropped: the frames after it leave the epoch
// out, so dropping it would leave the client with the old one.
func (q *sendQueue) pushJob(ev *progress.Event, replay bool, form frameForm) bool {
	frame := eventFrame(ev, form, 0)
	q.mu.Lock()
	fits := q.jobCount < q.maxFrames && q.jobBytes+len(frame) <= q.maxBytes
	if replay {
		fits = q.replayed+len(frame) <= replayFactor*q.maxBytes
	}
	if !fits {
		q.behind = true
	}
	skipped := 0
	if q.behind && ev.Name == wire.EventProgress {
		skipped = q.dropProgressLocked(ev.Group)
		if skipped > 0 {
			frame = eventFrame(ev, form, skipped)
		}
	}
	if !fits && !replay && (q.jobCount >= replayFactor*q.maxFrames || q.jobBytes+len(frame) > replayFactor*q.maxBytes) {
		q.mu.Unlock()
		return false
	}
	if replay && !fits && q.replayed+len(frame) > 2*replayFactor*q.maxBytes {
		// A replay of lifecycle events alone beyond twice its limit.
		q.mu.Unlock()
		return false
	}
	q.appendLocked(frame, queuedMeta{ev: ev, replay: replay, skipped: skipped, form: form})
	if replay {
		q.replayed += len(frame)
	} else {
		q.jobCount++
		q.jobBytes += len(frame)
	}
	q.wakeUnlock()
	return true
}

// dropProgressLocked removes every queued progress event of group and
// returns how many events they stood in for (each one, plus what each
// had replaced itself). Called with q.mu held.
func (q *sendQueue) dropProgressLocked(group string) int {
	skipped := 0
	keep := 0
	for i, f := range q.frames {
		m := q.metaAt(i)
		if m.ev != nil && m.ev.Name == wire.EventProgress && m.ev.Group == group && m.form != formLeanEpoch {
			skipped += 1 + m.skipped
			if m.replay {
				q.replayed -= len(f)
			} else {
				q.jobCount--
				q.jobBytes -= len(f)
			}
			continue
		}
		q.frames[keep] = f
		if q.tracked {
			q.meta[keep] = m
		}
		keep++
	}
	clear(q.frames[keep:])
	q.frames = q.frames[:keep]
	if q.tracked {
		clear(q.meta[keep:])
		q.meta = q.meta[:keep]
	}
	return skipped
}

func (q *sendQueue) metaAt(i int) queuedMeta {
	if !q.tracked {
		return queuedMeta{}
	}
	return q.meta[i]
}

// appendLocked queues frame with m. meta is kept only once a job event
// was queued. Called with q.mu held.
func (q *sendQueue) appendLocked(frame []byte, m queuedMeta) {
	if !q.tracked && m.ev != nil {
		q.tracked = true
		q.meta = slices.Grow(q.meta[:0], len(q.frames)+1)[:len(q.frames)]
	}
	if q.frames == nil {
		q.frames, q.framesBox = getFrames()
	}
	q.frames = append(q.frames, frame)
	if q.tracked {
		q.meta = append(q.meta, m)
	}
}

// wakeUnlock releases q.mu after frames were queued, starting a writer
// when none runs: the flusher's direct write when it takes the queue,
// else a goroutine. Called with q.mu held.
func (q *sendQueue) wakeUnlock() {
	start := q.startLocked()
	direct := start && q.direct != nil && q.fl != nil && !q.closing && !q.pingDue
	q.mu.Unlock()
	if !start || (direct && q.fl.add(q)) {
		return
	}
	go q.writer()
}

// directStep is what a direct write did.
type directStep int

const (
	directReleased directStep = iota // done, and the writer released
	directCarry                      // a writer goroutine must carry on
	directStaged                     // in the flusher's send ring: directDone follows
)

// runDirect is the flusher's turn at a queue it was handed: the direct
// write (fs is the flusher goroutine's state), then a writer goroutine
// when that could not finish.
func (q *sendQueue) runDirect(fs *flushState) {
	q.directDone(q.direct(fs))
}

// directDone ends the flusher's turn at q after step; a staged write's
// turn ends when the flusher sent it (flushState.sendStaged).
func (q *sendQueue) directDone(step directStep) {
	switch step {
	case directReleased:
		q.writers.Done()
	case directCarry:
		go q.writer()
	}
}

// release ends the running writer when nothing waits (as next does when
// it answers stepIdle) and reports whether it did; otherwise the writer
// keeps running. Called by the running writer.
func (q *sendQueue) release() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.frames) > 0 || q.pingDue || q.closing {
		return false
	}
	q.running = false
	q.dropLocked()
	return true
}

// startLocked reports whether a writer must be started now (none runs,
// the socket runs and has not ended), and counts it as running. Called
// with q.mu held.
func (q *sendQueue) startLocked() bool {
	if q.running || q.stopped || q.writer == nil {
		return false
	}
	q.running = true
	q.writers.Add(1)
	return true
}

// attach sets the functions that run a writer (direct and fl may be nil:
// always a goroutine) and starts one when something already waits (frames, a
// ping, a close asked before the socket ran).
func (q *sendQueue) attach(writer func(), direct func(*flushState) directStep, fl *flusher) {
	q.mu.Lock()
	q.writer, q.direct, q.fl = writer, direct, fl
	if len(q.frames) == 0 && !q.pingDue && !q.closing {
		q.mu.Unlock()
		return
	}
	q.wakeUnlock()
}

// requestPing asks the writer for a ping.
func (q *sendQueue) requestPing() {
	q.mu.Lock()
	q.pingDue = true
	q.wakeUnlock()
}

// requestClose asks the writer to send the close frame next, before any
// queued frame; what is still queued is dropped.
func (q *sendQueue) requestClose() {
	q.mu.Lock()
	q.closing = true
	q.wakeUnlock()
}

// writerStep is what a writer does next.
type writerStep uint8

const (
	stepIdle  writerStep = iota // nothing to write: the writer ends
	stepBatch                   // write the batch (and a ping when due)
	stepClose                   // write the close frame and end for good
)

// next hands the writer its next step: the close when asked (it wins
// over the backlog), else the queued frames and whether a ping is due,
// else idle, when the writer must end (it is no longer running, and the
// queue lets go of its buffers so an idle socket holds none). The batch
// is valid until the next call.
func (q *sendQueue) next() (step writerStep, batch [][]byte, ping bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closing {
		q.stopped = true
		q.dropLocked()
		return stepClose, nil, false
	}
	if len(q.frames) == 0 && !q.pingDue {
		q.running = false
		q.dropLocked()
		return stepIdle, nil, false
	}
	ping, q.pingDue = q.pingDue, false
	return stepBatch, q.takeLocked(), ping
}

// stop marks the writer as ended for good after a failed write: no
// writer starts again. Called by the running writer.
func (q *sendQueue) stop() {
	q.mu.Lock()
	q.stopped = true
	q.dropLocked()
	q.mu.Unlock()
}

// dropLocked lets go of the queue's buffers (and any frame left in
// them). Called with q.mu held.
func (q *sendQueue) dropLocked() {
	putFrames(q.spare, q.spareBox)
	putFrames(q.frames, q.framesBox)
	q.frames, q.spare, q.meta, q.tracked = nil, nil, nil, false
	q.framesBox, q.spareBox = nil, nil
	q.count, q.bytes, q.replayed, q.jobCount, q.jobBytes = 0, 0, 0, 0, 0
	q.behind = false
}

// take returns every queued frame, oldest first. The slice is valid until
// the next call to take.
func (q *sendQueue) take() [][]byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.takeLocked()
}

func (q *sendQueue) takeLocked() [][]byte {
	batch := q.frames
	clear(q.spare)
	q.frames, q.spare = q.spare[:0], batch
	q.framesBox, q.spareBox = q.spareBox, q.framesBox
	clear(q.meta) // the events are the writer's now: let them go
	q.meta, q.tracked = q.meta[:0], false
	q.count, q.bytes, q.replayed, q.jobCount, q.jobBytes = 0, 0, 0, 0, 0
	q.behind = false
	return batch
}

// framesPool recycles the queues' frame lists between bursts: a socket
// holds one only while its writer runs.
var framesPool sync.Pool // of *[][]byte

// maxPooledFrames bounds the lists kept in framesPool.
const maxPooledFrames = 4096

// getFrames returns an empty list and its pool holder (nil for a new
// list).
func getFrames() ([][]byte, *[][]byte) {
	if p, ok := framesPool.Get().(*[][]byte); ok {
		return (*p)[:0], p
	}
	return make([][]byte, 0, 16), nil
}

// getFramesFor returns an empty list with room for n frames, and its
// holder: a pooled one when it is large enough.
func getFramesFor(n int) ([][]byte, *[][]byte) {
	if p, ok := framesPool.Get().(*[][]byte); ok {
		if cap(*p) >= n {
			return (*p)[:0], p
		}
		framesPool.Put(p)
	}
	return make([][]byte, 0, max(n, 16)), nil
}

// putFrames gives f back to the pool in box, its holder from getFrames
// (nil: a new one).
func putFrames(f [][]byte, box *[][]byte) {
	if cap(f) == 0 || cap(f) > maxPooledFrames {
		return
	}
	clear(f[:cap(f)])
	if box == nil {
		box = new([][]byte)
	}
	*box = f[:0]
	framesPool.Put(box)
}
