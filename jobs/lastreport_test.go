package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// A run that completes appends its last coalesced progress report with its
// end, in one step: the final report (held by the reporter, HoldFinal)
// comes just before "state completed" with the same time, and nothing is
// lost or repeated. The reporter's interval is made long so that which
// reports are coalesced does not depend on the machine's speed.
func TestCompletedRunAppendsItsLastReportWithItsEnd(t *testing.T) {
	cases := []struct {
		name      string
		params    string
		wantDones string // done of each progress event, in order
	}{
		{name: "final report held", params: `{"steps":3,"interval_ms":0}`, wantDones: "[0 3]"},
		{name: "one step", params: `{"steps":1,"interval_ms":0}`, wantDones: "[0 1]"},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		e.startWorkerWith(WorkerConfig{PollInterval: 50 * time.Millisecond, Reporter: progress.ReporterConfig{MaxRate: 0.01}})
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				job := e.submit(tc.params)
				snap := e.waitFinal(job.ID)
				e.checkEnd(job.ID, snap, StateCompleted, "")
				var names []string
				var dones []int64
				for _, ev := range snap.Events {
					names = append(names, ev.Name)
					if ev.Name == wire.EventProgress {
						var p progress.Progress
						if err := json.Unmarshal(ev.Data, &p); err != nil {
							t.Fatal(err)
						}
						dones = append(dones, p.Done)
					}
				}
				if got := fmt.Sprint(names); got != "[state state progress progress state result]" {
					t.Fatalf("events %s: %s", got, describe(snap))
				}
				if got := fmt.Sprint(dones); got != tc.wantDones {
					t.Fatalf("progress done values %s, want %s", got, tc.wantDones)
				}
				n := len(snap.Events)
				last, end := snap.Events[n-3], snap.Events[n-2]
				if !last.Time.Equal(end.Time) {
					t.Fatalf("the last report (%s) and the end (%s) were not appended in one step", last.Time, end.Time)
				}
			})
		}
	})
}

// The reconciler paying the debt of an end that its run published with
// its last report (a batch of three events) publishes nothing more and
// clears the debt, although its own batch has two events.
func TestDebtOfAnEndWithItsLastReportIsPaidOnce(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		ctx := context.Background()
		lc := e.svc.lc
		job := e.submit(`{"steps":2}`)
		a, out, err := lc.start(ctx, job.ID, 0)
		if err != nil || out != startRun {
			t.Fatalf("start: %v %v", out, err)
		}
		op := newOp()
		lead := progress.Draft{Name: wire.EventProgress, Data: progress.Progress{Done: 2, Total: 2, Stage: "steps"}}
		if got := lc.finishRunHow(ctx, op, a, StateCompleted, []byte(`{"steps":2}`), "", lead); got != finishRecorded {
			t.Fatalf("finishRunHow: %v", got)
		}
		before := e.events(job.ID)
		e.checkEnd(job.ID, before, StateCompleted, "")
		// As if the run died before it cleared its debt.
		if err := e.svc.store.rdb.HSet(ctx, e.svc.store.jobKey(job.ID), "owed", op, "owed_at", 0, "owed_err", "").Err(); err != nil {
			t.Fatal(err)
		}
		rec, err := e.svc.store.get(ctx, job.ID)
		if err != nil || rec.Owed != op {
			t.Fatalf("record %+v, %v: want the debt of %s", rec, err, op)
		}
		open, err := lc.payDebt(ctx, rec)
		if err != nil || open {
			t.Fatalf("payDebt: open %v, err %v; want paid", open, err)
		}
		after := e.events(job.ID)
		if after.LastSeq != before.LastSeq {
			t.Fatalf("the debt's payment appended events: %s", describe(after))
		}
		if rec, err := e.svc.store.get(ctx, job.ID); err != nil || rec.Owed != "" {
			t.Fatalf("debt left: %+v %v", rec, err)
		}
	})
}
