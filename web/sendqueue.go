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
	ready     chan struct{} // a signal: frames are waiting
}

// queuedMeta is what the queue knows of a queued job event: enough to
// drop it for a newer progress of its group and to give its count back.
type queuedMeta struct {
	ev      *progress.Event // nil for every other frame
	replay  bool            // charged to the replay limit, not the job one
	skipped int             // the progress events this frame stands in for
}

func newSendQueue(maxFrames, maxBytes int) *sendQueue {
	return &sendQueue{maxFrames: maxFrames, maxBytes: maxBytes, ready: make(chan struct{}, 1)}
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
	q.mu.Unlock()
	q.signal()
	return true
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
	q.mu.Unlock()
	q.signal()
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
func (q *sendQueue) pushJob(ev *progress.Event, replay bool) bool {
	frame := ev.Frame()
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
			frame = ev.FrameSkipped(skipped)
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
	q.appendLocked(frame, queuedMeta{ev: ev, replay: replay, skipped: skipped})
	if replay {
		q.replayed += len(frame)
	} else {
		q.jobCount++
		q.jobBytes += len(frame)
	}
	q.mu.Unlock()
	q.signal()
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
		if m.ev != nil && m.ev.Name == wire.EventProgress && m.ev.Group == group {
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
	q.frames = append(q.frames, frame)
	if q.tracked {
		q.meta = append(q.meta, m)
	}
}

func (q *sendQueue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take returns every queued frame, oldest first. The slice is valid until
// the next call to take.
func (q *sendQueue) take() [][]byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	batch := q.frames
	clear(q.spare)
	q.frames, q.spare = q.spare[:0], batch
	clear(q.meta) // the events are the writer's now: let them go
	q.meta, q.tracked = q.meta[:0], false
	q.count, q.bytes, q.replayed, q.jobCount, q.jobBytes = 0, 0, 0, 0, 0
	q.behind = false
	return batch
}
