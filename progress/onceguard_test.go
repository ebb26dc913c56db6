package progress

import (
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// testGuard moves a hash's "state" from ARGV[1] to ARGV[2] and lets the
// batch go when it did, or when the state is ARGV[2] already (a retry of
// the same move); its reply is the state it found.
var testGuard = NewOnceGuard(`
local function guard()
  local st = redis.call('HGET', KEYS[1], 'state') or ''
  if st == ARGV[1] then
    redis.call('HSET', KEYS[1], 'state', ARGV[2])
    return st, true
  end
  return st, st == ARGV[2]
end
`, 1, 2)

// An OnceGuard appends its batch only when its guard lets it, in the same
// script as the guard's own writes, and once per key: a retry after a lost
// reply finds the guard's write done and the batch appended, and gets the
// first call's seqs. A script Redis lost goes again with its source.
func TestOnceGuard(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		hook := &lostReply{}
		rdb.AddHook(hook)
		l := NewLog(rdb, LogConfig{})
		ctx := testCtx(t)
		const g = "job:guarded"
		const rec = "test:{rec}"
		mustPublish(t, l, g, "progress", map[string]int{"done": 1}) // seq 1
		batch := []Draft{{Name: "state", Data: map[string]string{"state": "completed"}}, {Name: "result", Data: map[string]int{"result": 7}}}

		steps := []struct {
			name      string
			from, to  string
			key       string
			loseReply bool
			flush     bool // SCRIPT FLUSH first: Redis lost the script
			wantErr   bool
			wantReply string
			wantFresh bool
			wantSeqs  []int64 // nil: the guard held the batch back
			wantState string
			wantLast  int64
		}{
			{name: "guard refuses", from: "active", to: "completed", key: "a", wantReply: "", wantState: "", wantLast: 1},
			{name: "reply lost, applied", from: "", to: "active", key: "a", loseReply: true, wantErr: true, wantState: "active", wantLast: 3},
			{name: "retry after the lost reply", from: "", to: "active", key: "a", wantReply: "active", wantSeqs: []int64{2, 3}, wantState: "active", wantLast: 3},
			{name: "next move, script lost", from: "active", to: "completed", key: "b", flush: true, wantReply: "active", wantFresh: true, wantSeqs: []int64{4, 5}, wantState: "completed", wantLast: 5},
			{name: "a stale move is refused", from: "active", to: "failed", key: "c", wantReply: "completed", wantState: "completed", wantLast: 5},
		}
		for _, st := range steps {
			if st.loseReply {
				hook.n.Store(1)
			}
			if st.flush {
				if err := rdb.ScriptFlush(ctx).Err(); err != nil {
					t.Fatal(err)
				}
			}
			reply, evs, fresh, err := l.RunOnce(ctx, testGuard, []string{rec}, []any{st.from, st.to}, g, st.key, batch...)
			if st.wantErr != (err != nil) {
				t.Fatalf("%s: err %v", st.name, err)
			}
			if err == nil {
				if reply != st.wantReply || fresh != st.wantFresh || len(evs) != len(st.wantSeqs) || (evs == nil) != (st.wantSeqs == nil) {
					t.Fatalf("%s: reply %q, fresh %v, %d events; want %q, %v, %v", st.name, reply, fresh, len(evs), st.wantReply, st.wantFresh, st.wantSeqs)
				}
				for i, ev := range evs {
					if ev.Seq != st.wantSeqs[i] || ev.Name != batch[i].Name || ev.Epoch == "" {
						t.Fatalf("%s: event %d is %d %s (epoch %q), want seq %d", st.name, i, ev.Seq, ev.Name, ev.Epoch, st.wantSeqs[i])
					}
				}
			}
			state, err := rdb.HGet(ctx, rec, "state").Result()
			if errors.Is(err, redis.Nil) {
				state, err = "", nil
			}
			if err != nil || state != st.wantState {
				t.Fatalf("%s: state %q (%v), want %q", st.name, state, err, st.wantState)
			}
			snap := mustRead(t, l, g, 0)
			checkContiguous(t, st.name, snap.Events, 1, st.wantLast, snap.Epoch)
		}

		// Queued on a pipeline of the caller's, behind its own command.
		var c *OnceCmd
		var qerr error
		_, _ = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, rec, "state", "x")
			c, qerr = l.QueueOnce(ctx, p, testGuard, []string{rec}, []any{"x", "y"}, false, g, "d", batch[:1]...)
			return nil
		})
		if qerr != nil {
			t.Fatal(qerr)
		}
		if reply, evs, fresh, err := c.Result(); err != nil || reply != "x" || !fresh || len(evs) != 1 || evs[0].Seq != 6 {
			t.Fatalf("queued: reply %v, %d events (%v), fresh %v, err %v", reply, len(evs), evs, fresh, err)
		}

		for _, bad := range []struct {
			name string
			keys []string
			args []any
			evs  []Draft
		}{
			{"a key too few", nil, []any{"a", "b"}, batch},
			{"an arg too many", []string{rec}, []any{"a", "b", "c"}, batch},
			{"no events", []string{rec}, []any{"a", "b"}, nil},
			{"a bad event name", []string{rec}, []any{"a", "b"}, []Draft{{Name: "bad name!"}}},
		} {
			if _, _, _, err := l.RunOnce(ctx, testGuard, bad.keys, bad.args, g, "e", bad.evs...); !errors.Is(err, ErrInvalid) {
				t.Fatalf("%s: err %v, want ErrInvalid", bad.name, err)
			}
		}
	})
}
