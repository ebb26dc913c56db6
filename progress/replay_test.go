package progress

import (
	"slices"
	"testing"
)

// replayAfter gives the events after the cursor, in their order, whether
// they come in seq order (shared, not copied) or not.
func TestReplayAfter(t *testing.T) {
	evs := func(seqs ...int64) []*Event {
		out := make([]*Event, len(seqs))
		for i, s := range seqs {
			out[i] = &Event{Seq: s}
		}
		return out
	}
	seqsOf := func(es []*Event) []int64 {
		out := []int64{}
		for _, e := range es {
			out = append(out, e.Seq)
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		events []*Event
		cursor int64
		want   []int64
		shared bool
	}{
		{"none", nil, 0, []int64{}, false},
		{"all after", evs(1, 2, 3), 0, []int64{1, 2, 3}, true},
		{"some after", evs(1, 2, 3, 4), 2, []int64{3, 4}, true},
		{"none after", evs(1, 2), 2, []int64{}, false},
		{"out of order", evs(3, 1, 4, 2), 2, []int64{3, 4}, false},
		{"after, then an old one", evs(1, 5, 2), 3, []int64{5}, false},
	} {
		got := replayAfter(tc.events, tc.cursor)
		if !slices.Equal(seqsOf(got), tc.want) {
			t.Errorf("%s: replayAfter(%v, %d) = %v, want %v", tc.name, seqsOf(tc.events), tc.cursor, seqsOf(got), tc.want)
		}
		if tc.shared && &got[0] != &tc.events[len(tc.events)-len(got)] {
			t.Errorf("%s: copied, want a suffix of the events", tc.name)
		}
		if len(got) > 0 && cap(got) != len(got) {
			t.Errorf("%s: cap %d > len %d: an append could write into the events", tc.name, cap(got), len(got))
		}
	}
}
