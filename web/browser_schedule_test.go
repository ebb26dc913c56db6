package web

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"taskstream/progress/progresstest"
)

// The page shows a scheduled job as such, with when it runs; cancel works
// while it waits; a short delay then runs it as usual.
func TestBrowserScheduledJob(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{})
	later := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	status, job := p.api("POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]any{"steps": 1}, "run_at": later})
	if status != 202 {
		t.Fatalf("submit: %d %v", status, job)
	}
	waiting := job["id"].(string)
	status, job = p.api("POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]any{"steps": 1}, "delay": "2s"})
	if status != 202 {
		t.Fatalf("submit: %d %v", status, job)
	}
	soon := job["id"].(string)
	// The page lists the caller's jobs when it loads.
	p.do(chromedp.Reload(), chromedp.WaitReady(chromedp.CSS(`#job-type option[value="steps"]`)))
	p.waitState(waiting, "scheduled")
	p.waitFor("the scheduled time", row(waiting, "[data-field=log]")+`?.textContent.startsWith("Scheduled for")`)
	p.waitState(soon, "completed") // scheduled, then run as usual
	if text := eval[string](p, row(soon, "[data-field=log]")+".textContent"); strings.HasPrefix(text, "Scheduled") {
		t.Errorf("a job that ran still says %q", text)
	}
	// A scheduled job's row offers Cancel; it is pressed from script, as
	// in TestBrowserJobList: a coordinate click lands on whatever is there
	// at that instant, and the rows may still be moving (soon's just
	// completed).
	cancel := fmt.Sprintf(`li[data-job-id=%q] button[data-action=cancel]`, waiting)
	p.do(chromedp.WaitVisible(chromedp.CSS(cancel)))
	p.clickFromScript(cancel)
	p.waitState(waiting, "canceled")
	// The job's own page: its state, and when it was to run in its timeline.
	p.do(chromedp.Navigate(e.http.URL + "/jobs/" + waiting))
	p.waitFor("the job page's state", `document.querySelector("#job-state")?.textContent === "canceled"`)
	p.waitFor("the scheduled entry", `[...document.querySelectorAll("#timeline li")].some((li) => li.textContent.includes("scheduled for"))`)
	p.checkNoExceptions()
}
