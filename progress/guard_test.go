package progress

import (
	"errors"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// testGuard counts its calls in a hash (KEYS[1]) up to a limit (ARGV[1]):
// a call under the limit appends an event named ARGV[2] whose payload
// carries the count, and a second one (ARGV[3]) on every even count; a
// call at the limit appends nothing. Its reply is the count.
var testGuard = NewAppendGuard(`
local function guard()
  local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
  if n > tonumber(ARGV[1]) then return n, nil end
  local posts = {ARGV[2], '{"n":' .. n .. '}'}
  if n % 2 == 0 then
    posts[3] = ARGV[3]
    posts[4] = '{"even":true}'
  end
  return n, posts
end
`, 1, 3)

// An AppendGuard appends the events its step returns, with payloads the
// step wrote, after whatever the group holds and only when the step says
// so; the log and the live channel get them as Publish appends them. A
// script Redis lost goes again with its source.
func TestAppendGuard(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		l := NewLog(rdb, LogConfig{})
		ctx := testCtx(t)
		const g = "job:guarded"
		const rec = "test:{rec}"
		sub := rdb.Subscribe(ctx, l.Channel(g))
		defer sub.Close()
		if _, err := sub.Receive(ctx); err != nil {
			t.Fatal(err)
		}
		mustPublish(t, l, g, "progress", map[string]int{"done": 1}) // seq 1
		if _, err := sub.ReceiveMessage(ctx); err != nil {
			t.Fatal(err)
		}

		steps := []struct {
			name      string
			flush     bool // SCRIPT FLUSH first: Redis lost the script
			wantReply int64
			want      []string // name=data of each event appended
			wantLast  int64
		}{
			{name: "first call", wantReply: 1, want: []string{`state={"n":1}`}, wantLast: 2},
			{name: "second call, two events", wantReply: 2, want: []string{`state={"n":2}`, `note={"even":true}`}, wantLast: 4},
			{name: "script lost", flush: true, wantReply: 3, want: []string{`state={"n":3}`}, wantLast: 5},
			{name: "over the limit: nothing", wantReply: 4, wantLast: 5},
		}
		for _, st := range steps {
			if st.flush {
				if err := rdb.ScriptFlush(ctx).Err(); err != nil {
					t.Fatal(err)
				}
			}
			reply, evs, err := l.RunGuard(ctx, testGuard, []string{rec}, []any{3, "state", "note"}, g)
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			if reply != st.wantReply || len(evs) != len(st.want) {
				t.Fatalf("%s: reply %v, %d events; want %d, %v", st.name, reply, len(evs), st.wantReply, st.want)
			}
			for i, ev := range evs {
				if got := ev.Name + "=" + string(ev.Data); got != st.want[i] || ev.Group != g || ev.Epoch == "" || ev.Seq != st.wantLast-int64(len(evs)-1-i) {
					t.Fatalf("%s: event %d is %s seq %d epoch %q, want %s", st.name, i, got, ev.Seq, ev.Epoch, st.want[i])
				}
				msg, err := sub.ReceiveMessage(ctx)
				if err != nil {
					t.Fatal(err)
				}
				live, err := decodeMessage(g, msg.Payload)
				if err != nil || live.Seq != ev.Seq || live.Name != ev.Name || string(live.Data) != string(ev.Data) {
					t.Fatalf("%s: live event %q (%v), want seq %d", st.name, msg.Payload, err, ev.Seq)
				}
			}
			snap := mustRead(t, l, g, 0)
			checkContiguous(t, st.name, snap.Events, 1, st.wantLast, snap.Epoch)
			for i, ev := range evs {
				if kept := snap.Events[ev.Seq-1]; kept.Name != ev.Name || string(kept.Data) != string(ev.Data) || kept.Epoch != ev.Epoch {
					t.Fatalf("%s: event %d in the log is %+v, want %+v", st.name, i, kept, ev)
				}
			}
		}

		// Queued in a pipeline behind another command: Redis lacking the
		// script says so and nothing runs; with the script cached it runs.
		for _, flush := range []bool{true, false} {
			if flush {
				if err := rdb.ScriptFlush(ctx).Err(); err != nil {
					t.Fatal(err)
				}
			} else {
				if _, _, err := l.RunGuard(ctx, testGuard, []string{rec}, []any{0, "state", "note"}, g); err != nil { // loads it; appends nothing (limit 0)
					t.Fatal(err)
				}
			}
			var c *GuardCmd
			var qerr error
			_, _ = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				p.HSet(ctx, rec, "other", "x")
				c, qerr = l.QueueGuard(ctx, p, testGuard, []string{rec}, []any{99, "state", "note"}, g)
				return nil
			})
			if qerr != nil {
				t.Fatal(qerr)
			}
			reply, evs, err := c.Result()
			if flush {
				if !errors.Is(err, ErrNoScript) || reply != nil || evs != nil {
					t.Fatalf("queued without the script: reply %v, events %v, err %v; want ErrNoScript", reply, evs, err)
				}
				continue
			}
			if err != nil || reply != int64(6) || len(evs) != 2 || evs[0].Seq != 6 || evs[1].Seq != 7 {
				t.Fatalf("queued: reply %v, %d events, err %v", reply, len(evs), err)
			}
		}

		for _, bad := range []struct {
			name  string
			keys  []string
			args  []any
			group string
		}{
			{"a key too few", nil, []any{3, "state", "note"}, g},
			{"an arg too many", []string{rec}, []any{3, "state", "note", "x"}, g},
			{"a bad group", []string{rec}, []any{3, "state", "note"}, "no group"},
		} {
			if _, _, err := l.RunGuard(ctx, testGuard, bad.keys, bad.args, bad.group); !errors.Is(err, ErrInvalid) {
				t.Fatalf("%s: err %v, want ErrInvalid", bad.name, err)
			}
		}
		if n, err := rdb.HGet(ctx, rec, "n").Int(); err != nil || n != 6 {
			t.Fatal(fmt.Sprint("refused calls ran the step: n ", n, " ", err))
		}
	})
}
