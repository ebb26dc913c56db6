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

// progressDones is the done value of each progress event of snap, in
// order, and the names of all its events.
func progressDones(t *testing.T, snap progress.Snapshot) (names string, dones string) {
	t.Helper()
	var ns []string
	var ds []int64
	for _, ev := range snap.Events {
		ns = append(ns, ev.Name)
		if ev.Name == wire.EventProgress {
			var p progress.Progress
			if err := json.Unmarshal(ev.Data, &p); err != nil {
				t.Fatal(err)
			}
			ds = append(ds, p.Done)
		}
	}
	return fmt.Sprint(ns), fmt.Sprint(ds)
}

// A run that completes hands its last coalesced progress report to its
// end, which appends it just before the end is recorded: nothing is lost
// or repeated, the report comes before "state completed", and the job read
// as completed shows its final progress. The reporter's interval is made
// long so that which reports are coalesced does not depend on the
// machine's speed.
func TestCompletedRunAppendsItsLastReportBeforeItsEnd(t *testing.T) {
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
				j := e.checkEnd(job.ID, snap, StateCompleted, "")
				names, dones := progressDones(t, snap)
				if names != "[state state progress progress state result]" {
					t.Fatalf("events %s: %s", names, describe(snap))
				}
				if dones != tc.wantDones {
					t.Fatalf("progress done values %s, want %s", dones, tc.wantDones)
				}
				if j.Progress == nil || j.Progress.Done != j.Progress.Total {
					t.Fatalf("the completed job shows progress %+v, want its final report", j.Progress)
				}
			})
		}
	})
}

// finishRunHow with the run's last report appends the report and then
// records the end, also when Redis has lost its scripts (a restart): the
// report is appended once, before the end, and the end is recorded once.
func TestFinishRunAppendsTheLeadReportFirst(t *testing.T) {
	cases := []struct {
		name         string
		flushScripts bool
	}{
		{name: "scripts cached"},
		{name: "scripts lost", flushScripts: true},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newJobEnv(t, srv)
		ctx := context.Background()
		lc := e.svc.lc
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				job, a := e.startRun(t, `{"steps":2}`)
				if tc.flushScripts {
					if err := e.svc.store.rdb.ScriptFlush(ctx).Err(); err != nil {
						t.Fatal(err)
					}
				}
				lead := &progress.Progress{Done: 2, Total: 2, Percent: 100, Stage: "steps", Message: "step 2 of 2"}
				if got := lc.finishRunHow(ctx, newOp(), a, StateCompleted, []byte(`{"steps":2}`), "", lead); got != finishRecorded {
					t.Fatalf("finishRunHow: %v", got)
				}
				snap := e.events(job.ID)
				j := e.checkEnd(job.ID, snap, StateCompleted, "")
				names, dones := progressDones(t, snap)
				if names != "[state state progress state result]" || dones != "[2]" {
					t.Fatalf("events %s (progress %s): %s", names, dones, describe(snap))
				}
				if j.Progress == nil || j.Progress.Done != 2 || j.Progress.Message != "step 2 of 2" {
					t.Fatalf("the completed job shows progress %+v, want the lead report", j.Progress)
				}
				rec, err := e.svc.store.get(ctx, job.ID)
				if err != nil || rec.Owed != "" {
					t.Fatalf("record %+v, %v: want no debt left", rec, err)
				}
			})
		}
	})
}
