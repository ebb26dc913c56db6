//go:build faults

package faults

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// finalState maps a job's last event to the state GET /api/jobs/ID must
// show, or "" when the event does not end a job (PROTOCOL.md: "result",
// "failed", or "state" canceled is a job's last event).
func finalState(e received) string {
	switch e.name {
	case "result":
		return "completed"
	case "failed":
		return "failed"
	case "state":
		if stateOf(e) == "canceled" {
			return "canceled"
		}
	}
	return ""
}

func stateOf(e received) string {
	var s struct{ State string }
	_ = json.Unmarshal(e.data, &s)
	return s.State
}

// tally is a ledger's outcome for one scenario.
type tally struct {
	events   int // event frames checked
	lost     int64
	dups     int
	problems []string
}

func (t *tally) problem(format string, args ...any) {
	t.problems = append(t.problems, fmt.Sprintf(format, args...))
}

// checkJob checks one watcher's view of one job against the API's: the
// last history it holds (its final segment) must be seqs 1..N of the
// API's epoch with no gap and no duplicate, ending in exactly one final
// event that agrees with the API's state. Earlier segments may have gaps
// only when the server said recovered:false after them.
func checkJob(t *tally, w *watcher, id string, api *jobView, apiErr error) {
	g := w.snapshot("job:" + id)
	who := fmt.Sprintf("%v job %s", w, id)
	for i, s := range g.segs {
		t.events += len(s.events)
		t.dups += s.dups
		if s.dups > 0 {
			t.problem("%s: %d duplicate event frames (epoch %s)", who, s.dups, s.epoch)
		}
		if s.untold {
			t.problem("%s: events of a new epoch %s arrived without a recovered:false", who, s.epoch)
		}
		if i < len(g.segs)-1 && s.gaps > 0 && !g.segs[i+1].toldLost {
			t.lost += s.gaps
			t.problem("%s: %d seqs missing in epoch %s, never told", who, s.gaps, s.epoch)
		}
	}
	last := g.current()
	if last == nil || len(last.events) == 0 {
		t.problem("%s: no event at all (subscribe errors: %v)", who, g.errors)
		if api != nil {
			t.lost += api.LastSeq
		}
		return
	}
	tailEv := last.events[len(last.events)-1]
	finals := 0
	for _, e := range last.events {
		if finalState(e) != "" {
			finals++
		}
	}
	switch {
	case finals == 0:
		t.problem("%s: no final event; the last one is %s seq %d (%s)", who, describe(tailEv), tailEv.seq, tailEv.at.Format("15:04:05.000"))
	case finals > 1 || finalState(tailEv) == "":
		t.problem("%s: %d final events, the last event is %s seq %d", who, finals, describe(tailEv), tailEv.seq)
	}
	// A job that runs again says why first: retry (failed or worker
	// lost) or pending (handed back by a stopping worker).
	actives, why := 0, true
	for _, e := range last.events {
		if e.name != "state" {
			continue
		}
		switch stateOf(e) {
		case "active":
			actives++
			if actives > 1 && !why {
				t.problem("%s: attempt %d started (seq %d) with no retry or pending event since the last one", who, actives, e.seq)
			}
			why = false
		case "retry", "pending":
			why = true
		}
	}
	if apiErr != nil {
		t.problem("%s: GET /api/jobs/%s: %v", who, id, apiErr)
		t.lost += int64(len(last.events)) // nothing to check them against: count them as not accounted for
		return
	}
	if last.epoch != api.Epoch {
		t.problem("%s: its history is epoch %q, the API's is %q", who, last.epoch, api.Epoch)
	}
	seen := map[int64]bool{}
	for _, e := range last.events {
		seen[e.seq] = true
		if e.seq > api.LastSeq {
			t.problem("%s: saw seq %d beyond the API's last_seq %d", who, e.seq, api.LastSeq)
		}
	}
	var missing []int64
	for s := int64(1); s <= api.LastSeq; s++ {
		if !seen[s] {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		t.lost += int64(len(missing))
		t.problem("%s: missing seqs %s of 1..%d", who, ranges(missing), api.LastSeq)
	}
	if want := finalState(tailEv); want != "" && api.State != want {
		t.problem("%s: last event %s but the API says state %q", who, describe(tailEv), api.State)
	}
}

// checkRoom checks one watcher's view of a chat room that got a flood
// ending with marker: its last history is contiguous, without duplicates,
// and holds the marker.
func checkRoom(t *tally, w *watcher, group, marker string, mustNotBeTold bool) {
	g := w.snapshot(group)
	who := fmt.Sprintf("%v %s", w, group)
	for i, s := range g.segs {
		t.events += len(s.events)
		t.dups += s.dups
		if s.dups > 0 {
			t.problem("%s: %d duplicate event frames", who, s.dups)
		}
		if s.untold {
			t.problem("%s: a new epoch without recovered:false", who)
		}
		if s.toldLost && mustNotBeTold {
			t.problem("%s: told recovered:false, but this watcher kept reading", who)
		}
		if s.gaps > 0 && (i == len(g.segs)-1 || !g.segs[i+1].toldLost) {
			t.lost += s.gaps
			t.problem("%s: %d seqs missing, never told", who, s.gaps)
		}
	}
	last := g.current()
	if last == nil || !hasMessage(last.events, marker) {
		t.problem("%s: never saw the end marker", who)
	}
}

func hasMessage(evs []received, text string) bool {
	for _, e := range evs {
		if e.name == "message" && strings.Contains(string(e.data), `"text":"`+text+`"`) {
			return true
		}
	}
	return false
}

func describe(e received) string {
	if e.name == "state" {
		return "state " + stateOf(e)
	}
	return e.name
}

// ranges prints sorted seqs compactly: 3-7,9.
func ranges(s []int64) string {
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	var parts []string
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, fmt.Sprint(s[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", s[i], s[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// row is one scenario's line of the table.
type row struct {
	scenario string
	jobs     int
	watchers int
	tally
	recover string
	took    time.Duration
}

var (
	rowsMu sync.Mutex
	rows   []row
)

func addRow(r row) {
	rowsMu.Lock()
	rows = append(rows, r)
	rowsMu.Unlock()
}

// table renders the rows as Markdown.
func table() string {
	rowsMu.Lock()
	defer rowsMu.Unlock()
	var b strings.Builder
	b.WriteString("| scenario | jobs | watchers | events checked | lost | duplicated | time to recover | ledger |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		verdict := "ok"
		if n := len(r.problems); n > 0 {
			verdict = fmt.Sprintf("FAIL (%d problems)", n)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %s | %s |\n",
			r.scenario, r.jobs, r.watchers, r.events, r.lost, r.dups, r.recover, verdict)
	}
	return b.String()
}
