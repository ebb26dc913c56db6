//go:build faults

package faults

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// finalState maps a job's last event to the state GET /api/jobs/ID must
// show, or "" when the event does not end a job (docs/protocol.md: "result",
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
	events   int   // event frames checked
	lost     int64 // seqs a watcher should hold and does not
	dups     int   // event frames whose seq a watcher already had
	told     int   // (watcher, group) pairs told recovered:false
	problems []string

	// Problems of one subject (a job, a room) with the same text are
	// reported once, with the watchers that have them.
	keys  []string
	whoOf map[string][]string
}

func (t *tally) problem(format string, args ...any) {
	t.problems = append(t.problems, fmt.Sprintf(format, args...))
}

// about records problem msg of subject as seen by watcher w.
func (t *tally) about(subject string, w *watcher, format string, args ...any) {
	key := subject + ": " + fmt.Sprintf(format, args...)
	if t.whoOf == nil {
		t.whoOf = map[string][]string{}
	}
	if _, ok := t.whoOf[key]; !ok {
		t.keys = append(t.keys, key)
	}
	t.whoOf[key] = append(t.whoOf[key], w.String())
}

// report lists every problem, grouped.
func (t *tally) report() []string {
	out := append([]string(nil), t.problems...)
	for _, k := range t.keys {
		subject, msg, _ := strings.Cut(k, ": ")
		out = append(out, fmt.Sprintf("%s [%s]: %s", subject, strings.Join(t.whoOf[k], " "), msg))
	}
	return out
}

// checkJob checks one watcher's view of one job against the API's: the
// last history it holds (its final segment) must be seqs 1..N of the
// API's epoch with no gap and no duplicate, ending in exactly one final
// event that agrees with the API's state. Earlier segments may have gaps
// only when the server said recovered:false after them.
func checkJob(t *tally, w *watcher, id string, api *jobView, apiErr error) {
	g := w.snapshot("job:" + id)
	subject := "job " + id
	for i, s := range g.segs {
		if s.toldLost {
			t.told++
		}
		t.events += len(s.events)
		t.dups += s.dups
		if s.dups > 0 {
			t.about(subject, w, "%d duplicate event frames (epoch %s)", s.dups, s.epoch)
		}
		if s.untold {
			t.about(subject, w, "events of a new epoch %s arrived without a recovered:false", s.epoch)
		}
		if i < len(g.segs)-1 && s.gaps > 0 && !g.segs[i+1].toldLost {
			t.lost += s.gaps
			t.about(subject, w, "%d seqs missing in epoch %s, never told", s.gaps, s.epoch)
		}
	}
	last := g.current()
	if last == nil || len(last.events) == 0 {
		t.about(subject, w, "no event at all%s", lastError(g))
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
		t.about(subject, w, "no final event; the last one is %s seq %d%s", describe(tailEv), tailEv.seq, lastError(g))
	case finals > 1 || finalState(tailEv) == "":
		t.about(subject, w, "%d final events, the last event is %s seq %d", finals, describe(tailEv), tailEv.seq)
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
				t.about(subject, w, "attempt %d started (seq %d) with no retry or pending event since the last one", actives, e.seq)
			}
			why = false
		case "retry", "pending":
			why = true
		}
	}
	if apiErr != nil {
		// Without the API's last seq and epoch, what is missing cannot be
		// counted; the problem stands.
		t.about(subject, w, "GET /api/jobs/%s: %v", id, apiErr)
		return
	}
	if last.epoch != api.Epoch {
		t.about(subject, w, "its history is epoch %q, the API's is %q", last.epoch, api.Epoch)
	}
	seen := map[int64]bool{}
	for _, e := range last.events {
		seen[e.seq] = true
		if e.seq > api.LastSeq {
			t.about(subject, w, "saw seq %d beyond the API's last_seq %d", e.seq, api.LastSeq)
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
		t.about(subject, w, "missing seqs %s of 1..%d", ranges(missing), api.LastSeq)
	}
	if want := finalState(tailEv); want != "" && api.State != want {
		t.about(subject, w, "last event %s but the API says state %q", describe(tailEv), api.State)
	}
}

// checkRoom checks one watcher's view of a chat room that got a flood
// ending with marker: its last history is contiguous, without duplicates,
// and holds the marker.
func checkRoom(t *tally, w *watcher, group, marker string, mustNotBeTold bool) {
	g := w.snapshot(group)
	subject := group
	for i, s := range g.segs {
		if s.toldLost {
			t.told++
		}
		t.events += len(s.events)
		t.dups += s.dups
		if s.dups > 0 {
			t.about(subject, w, "%d duplicate event frames", s.dups)
		}
		if s.untold {
			t.about(subject, w, "a new epoch without recovered:false")
		}
		if s.toldLost && mustNotBeTold {
			t.about(subject, w, "told recovered:false, but this watcher kept reading")
		}
		if s.gaps > 0 && (i == len(g.segs)-1 || !g.segs[i+1].toldLost) {
			t.lost += s.gaps
			t.about(subject, w, "%d seqs missing, never told", s.gaps)
		}
	}
	last := g.current()
	if last == nil || !hasMessage(last.events, marker) {
		t.about(subject, w, "never saw the end marker")
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

// lastError names the last error frame that answered a subscribe of g.
func lastError(g *groupState) string {
	if len(g.errors) == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d subscribes refused, the last with %s)", len(g.errors), g.errors[len(g.errors)-1])
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
	aborted bool // the scenario stopped before its ledger (see its log)
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
	b.WriteString("| scenario | jobs | watchers | events checked | lost | duplicated | told recovered:false | time to recover | ledger |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		verdict := "ok"
		if n := len(r.report()); n > 0 {
			verdict = fmt.Sprintf("FAIL (%d problems)", n)
		}
		if r.aborted {
			fmt.Fprintf(&b, "| %s | | | | | | | | FAIL (stopped before its ledger) |\n", r.scenario)
			continue
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %s | %s |\n",
			r.scenario, r.jobs, r.watchers, r.events, r.lost, r.dups, r.told, r.recover, verdict)
	}
	return b.String()
}
