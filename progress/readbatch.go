package progress

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// readBatcher sends the hub's reads of group logs to Redis, the reads of
// many groups in one round trip: it takes the reads requested while the
// previous batch was in flight (at most max of them) and sends their
// first pages in one MULTI. A read requested while none is in flight goes
// out at once, alone: batching adds no wait, it only gathers what queued
// up. When every watched job is a group of its own (each submitted job is
// watched from a new socket), this turns a round trip per job into one
// per batch.
//
// Each group's read stays atomic (the batch's MULTI runs as one step) and
// reads its results from its own commands: a command of one group that
// fails does not fail another group's read. A batch that fails as a whole
// for a reason that is not Redis being unavailable (say, EXECABORT) is
// never taken as a group's own permanent error: such a group reads again
// alone (readLog), so the error that fails its subscribers is its own.
//
// Off a Redis Cluster only: there a MULTI may only name keys of one slot
// and every group has a slot of its own, so groups read each in its own
// MULTI from their own goroutines, as they would without a batcher.
type readBatcher struct {
	rdb  redis.UniversalClient
	max  int
	reqs chan *readReq // bounded: a full queue makes the groups wait
}

// readReq is one group's read waiting for a batch. done gets the batch's
// outcome once its pipeline has run (the read's commands hold their
// results by then); it is buffered, so the batcher never waits for a
// group that has gone.
type readReq struct {
	ctx  context.Context // the group's: a request of a group gone is skipped
	read *logRead
	done chan batchDone
}

type batchDone struct {
	err    error // the pipeline's error, for a read sent alone
	shared bool  // the read shared its MULTI with other groups' reads
}

func newReadBatcher(rdb redis.UniversalClient, max int) *readBatcher {
	return &readBatcher{rdb: rdb, max: max, reqs: make(chan *readReq, max)}
}

// run sends batches until ctx ends. It is the hub's (Shutdown stops it).
func (b *readBatcher) run(ctx context.Context) {
	batch := make([]*readReq, 0, b.max)
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-b.reqs:
			batch = append(batch[:0], r)
		}
	gather:
		for len(batch) < b.max {
			select {
			case r := <-b.reqs:
				batch = append(batch, r)
			default:
				break gather
			}
		}
		b.send(ctx, batch)
		clear(batch) // let the reads of groups that have gone be collected
	}
}

// send runs the first pages of batch's reads in one MULTI and hands each
// group its outcome.
func (b *readBatcher) send(ctx context.Context, batch []*readReq) {
	live := batch[:0]
	for _, r := range batch {
		if r.ctx.Err() == nil {
			live = append(live, r)
		}
	}
	if len(live) == 0 {
		return
	}
	_, err := b.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		for _, r := range live {
			r.read.queue(ctx, p)
		}
		return nil
	})
	shared := len(live) > 1
	for _, r := range live {
		r.done <- batchDone{err: err, shared: shared}
	}
}

// readLog reads group's log from after, as Log.readN does; with a batcher
// its first page shares a round trip with the reads of other groups.
func (h *Hub) readLog(ctx context.Context, group string, after int64, extra func(context.Context, redis.Pipeliner) func() error) (Snapshot, error) {
	r := h.log.newRead(group, after, 0, extra)
	if h.batcher == nil {
		return r.finish(ctx)
	}
	req := &readReq{ctx: ctx, read: r, done: make(chan batchDone, 1)}
	var out batchDone
	select {
	case h.batcher.reqs <- req:
	case <-ctx.Done():
		return Snapshot{}, fmt.Errorf("progress: read %s: %w", group, ctx.Err())
	}
	select {
	case out = <-req.done:
	case <-ctx.Done():
		return Snapshot{}, fmt.Errorf("progress: read %s: %w", group, ctx.Err())
	}
	err := out.err
	if out.shared || errors.Is(err, redis.Nil) {
		// In a shared MULTI the pipeline's error is the first failing
		// command's, maybe another group's: each read looks at its own.
		err = nil
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("progress: read %s: %w", group, unavailable(err))
	}
	done, err := r.take()
	switch {
	case err == nil && done:
		return r.snap, nil
	case err == nil:
		return r.finish(ctx) // more pages: on its own, off the batcher
	case out.shared && !IsUnavailable(err):
		// A permanent error from a shared MULTI may be the whole batch's
		// (EXECABORT): only a read of this group alone may fail it.
		return h.log.newRead(group, after, 0, extra).finish(ctx)
	}
	return Snapshot{}, err
}
