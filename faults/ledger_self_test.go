//go:build faults

package faults

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// The ledger itself, fed with frames by hand: it must see each kind of
// breakage it is there to catch, and pass a clean history.
func TestLedger(t *testing.T) {
	sub := func(epoch string, recovered bool) frame {
		return frame{Type: "subscribed", Group: "job:j", Epoch: epoch, Recovered: recovered}
	}
	ev := func(epoch string, seq int64, name string, state ...string) frame {
		f := frame{Type: "event", Group: "job:j", Epoch: epoch, Seq: seq, Event: name, Data: json.RawMessage(`{}`)}
		if len(state) > 0 {
			f.Data = json.RawMessage(fmt.Sprintf(`{"state":%q}`, state[0]))
		}
		return f
	}
	run := func(epoch string, from, to int64) []frame { // active, progress…, completed, result
		var fs []frame
		for s := from; s <= to; s++ {
			switch s {
			case from:
				fs = append(fs, ev(epoch, s, "state", "active"))
			case to:
				fs = append(fs, ev(epoch, s, "result"))
			case to - 1:
				fs = append(fs, ev(epoch, s, "state", "completed"))
			default:
				fs = append(fs, ev(epoch, s, "progress"))
			}
		}
		return fs
	}
	cat := func(parts ...[]frame) []frame {
		var out []frame
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	one := func(f frame) []frame { return []frame{f} }
	done := &jobView{State: "completed", LastSeq: 6, Epoch: "e1"}

	for _, tc := range []struct {
		name   string
		frames []frame
		api    *jobView
		lost   int64
		dups   int
		told   int
		want   string // a problem containing this; "" for none
	}{
		{name: "clean", frames: cat(one(sub("e1", true)), run("e1", 1, 6)), api: done},
		{name: "resumed after a reconnect", frames: cat(one(sub("e1", true)), run("e1", 1, 6)[:3], one(sub("e1", true)), run("e1", 1, 6)[3:]), api: done},
		{name: "gap", frames: cat(one(sub("e1", true)), run("e1", 1, 6)[:2], run("e1", 1, 6)[3:]), api: done, lost: 1, want: "missing seqs 3 of 1..6"},
		{name: "head missing", frames: cat(one(sub("e1", true)), run("e1", 1, 6)[2:]), api: done, lost: 2, want: "missing seqs 1-2"},
		{name: "duplicate", frames: cat(one(sub("e1", true)), run("e1", 1, 6)[:3], run("e1", 1, 6)[2:]), api: done, dups: 1, want: "1 duplicate"},
		{name: "told lost, then the new history", frames: cat(one(sub("e1", true)), run("e1", 1, 6)[:3], one(sub("e2", false)), run("e2", 1, 4)),
			api: &jobView{State: "completed", LastSeq: 4, Epoch: "e2"}, told: 1},
		{name: "gap before told lost is excused", frames: cat(one(sub("e1", true)), run("e1", 1, 6)[:1], run("e1", 1, 6)[2:3], one(sub("e2", false)), run("e2", 1, 4)),
			api: &jobView{State: "completed", LastSeq: 4, Epoch: "e2"}, told: 1},
		{name: "new epoch untold", frames: cat(one(sub("e1", true)), run("e1", 1, 6)[:3], run("e2", 1, 4)),
			api: &jobView{State: "completed", LastSeq: 4, Epoch: "e2"}, want: "without a recovered:false"},
		{name: "no final event", frames: cat(one(sub("e1", true)), run("e1", 1, 6)[:4]), api: &jobView{State: "active", LastSeq: 4, Epoch: "e1"}, want: "no final event"},
		{name: "API disagrees", frames: cat(one(sub("e1", true)), run("e1", 1, 6)), api: &jobView{State: "failed", LastSeq: 6, Epoch: "e1"}, want: `API says state "failed"`},
		{name: "API knows more", frames: cat(one(sub("e1", true)), run("e1", 1, 6)), api: &jobView{State: "completed", LastSeq: 7, Epoch: "e1"}, lost: 1, want: "missing seqs 7"},
		{name: "two final events", frames: cat(one(sub("e1", true)), run("e1", 1, 6), one(ev("e1", 7, "failed"))), api: &jobView{State: "completed", LastSeq: 7, Epoch: "e1"}, want: "2 final events"},
		{name: "silent re-run", frames: cat(one(sub("e1", true)), one(ev("e1", 1, "state", "active")), one(ev("e1", 2, "progress")), run("e1", 3, 6)), api: done, want: "attempt 2 started"},
		{name: "re-run after retry", frames: cat(one(sub("e1", true)), one(ev("e1", 1, "state", "active")), one(ev("e1", 2, "state", "retry")), run("e1", 3, 6)), api: done},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &watcher{u: &user{name: "t"}, groups: map[string]*groupState{}}
			w.watch("job:j")
			for _, f := range tc.frames {
				w.handle(nil, 0, f)
			}
			var tl tally
			checkJob(&tl, w, "j", tc.api, nil)
			problems := strings.Join(tl.report(), "\n")
			if tl.lost != tc.lost || tl.dups != tc.dups || tl.told != tc.told {
				t.Errorf("lost %d dups %d told %d, want %d %d %d; problems:\n%s", tl.lost, tl.dups, tl.told, tc.lost, tc.dups, tc.told, problems)
			}
			switch {
			case tc.want == "" && problems != "":
				t.Errorf("problems in a clean history:\n%s", problems)
			case tc.want != "" && !strings.Contains(problems, tc.want):
				t.Errorf("want a problem with %q, got:\n%s", tc.want, problems)
			}
		})
	}
}
