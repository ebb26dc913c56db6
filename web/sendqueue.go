package web

import "sync"

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
type sendQueue struct {
	mu        sync.Mutex
	frames    [][]byte
	spare     [][]byte // the previous batch's backing array, reused
	count     int      // live frames, against maxFrames
	bytes     int      // live bytes, against maxBytes
	replayed  int      // replayed bytes, against replayFactor*maxBytes
	maxFrames int
	maxBytes  int
	ready     chan struct{} // a signal: frames are waiting
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
	q.frames = append(q.frames, frame)
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
	q.frames = append(q.frames, frame)
	q.replayed += len(frame)
	q.mu.Unlock()
	q.signal()
	return true
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
	q.count, q.bytes, q.replayed = 0, 0, 0
	return batch
}
