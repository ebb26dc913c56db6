package progress

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// lostReply is a go-redis hook that lets the next n script calls reach
// Redis and run there, then reports an i/o timeout instead of their reply:
// the ambiguous outcome a paused or slow Redis produces.
type lostReply struct{ n atomic.Int32 }

func (h *lostReply) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *lostReply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *lostReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if name := cmd.Name(); (name == "evalsha" || name == "eval") && err == nil && h.n.Add(-1) >= 0 {
			err = &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
			cmd.SetErr(err)
		}
		return err
	}
}

// PublishOnce appends a batch once per key: a retry after a lost reply,
// or a second caller with the same key, appends nothing and gets the
// first call's seqs; a new key appends again.
func TestLogPublishOnce(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		hook := &lostReply{}
		rdb.AddHook(hook)
		l := NewLog(rdb, LogConfig{})
		ctx := testCtx(t)
		const g = "job:once"
		mustPublish(t, l, g, "progress", map[string]int{"done": 1}) // seq 1
		batch := []Draft{{Name: "state", Data: map[string]string{"state": "completed"}}, {Name: "result", Data: map[string]int{"result": 7}}}

		steps := []struct {
			name      string
			key       string
			loseReply bool
			wantErr   bool
			wantFresh bool
			wantSeqs  []int64
			wantLast  int64
		}{
			{name: "reply lost, applied", key: "a", loseReply: true, wantErr: true, wantLast: 3},
			{name: "retry after the lost reply", key: "a", wantSeqs: []int64{2, 3}, wantLast: 3},
			{name: "second caller, same key", key: "a", wantSeqs: []int64{2, 3}, wantLast: 3},
			{name: "a new key appends", key: "b", wantFresh: true, wantSeqs: []int64{4, 5}, wantLast: 5},
		}
		for _, st := range steps {
			if st.loseReply {
				hook.n.Store(1)
			}
			evs, fresh, err := l.PublishOnce(ctx, g, st.key, batch...)
			if st.wantErr != (err != nil) {
				t.Fatalf("%s: err %v", st.name, err)
			}
			if err == nil {
				if fresh != st.wantFresh || len(evs) != len(st.wantSeqs) {
					t.Fatalf("%s: fresh %v, %d events; want %v, %v", st.name, fresh, len(evs), st.wantFresh, st.wantSeqs)
				}
				for i, ev := range evs {
					if ev.Seq != st.wantSeqs[i] || ev.Name != batch[i].Name {
						t.Fatalf("%s: event %d is %d %s, want seq %d", st.name, i, ev.Seq, ev.Name, st.wantSeqs[i])
					}
				}
			}
			snap := mustRead(t, l, g, 0)
			checkContiguous(t, st.name, snap.Events, 1, st.wantLast, snap.Epoch)
		}
		if _, _, err := l.PublishOnce(ctx, g, "b", batch[:1]...); !errors.Is(err, ErrInvalid) {
			t.Fatalf("a replay with another batch size: err %v, want ErrInvalid", err)
		}
		// A batch of one (a canceled job's end): its seq reads back on
		// both Redis implementations.
		if evs, fresh, err := l.PublishOnce(ctx, g, "one", batch[:1]...); err != nil || !fresh || len(evs) != 1 || evs[0].Seq != 6 {
			t.Fatalf("a batch of one: %d events, fresh %v, err %v; want seq 6", len(evs), fresh, err)
		}
		if evs, fresh, err := l.PublishOnce(ctx, g, "one", batch[:1]...); err != nil || fresh || len(evs) != 1 || evs[0].Seq != 6 {
			t.Fatalf("a batch of one again: %d events, fresh %v, err %v; want seq 6", len(evs), fresh, err)
		}
		for _, bad := range [][]Draft{nil, {{Name: "bad name!"}}} {
			if _, _, err := l.PublishOnce(ctx, g, "c", bad...); !errors.Is(err, ErrInvalid) {
				t.Fatalf("PublishOnce(%v): err %v, want ErrInvalid", bad, err)
			}
		}
	})
}
