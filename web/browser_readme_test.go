package web

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/chromedp/chromedp"

	"taskstream/jobs"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// readmeImages is where TestBrowserReadmeScreenshots writes the README's
// pictures, from the web package's directory.
const readmeImages = "../docs/img"

// shoot saves what p's window shows (not the whole page: the pictures stay
// small) as the PNG readmeImages/name.
func (p *browserPage) shoot(name string, width, height int64) {
	p.t.Helper()
	p.do(chromedp.EmulateViewport(width, height))
	// Two frames: layout and the toasts' placement settle after a resize;
	// and no flash of a notified row half done.
	p.do(chromedp.Evaluate[chromedp.Void](`new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))`, chromedp.EvalAwaitPromise))
	p.waitFor("the animations to end", `document.getAnimations().length === 0`)
	ctx, cancel := p.step()
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Fatal(err)
	}
	path := filepath.Join(readmeImages, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("wrote %s (%d bytes)", path, len(png))
}

// TestBrowserReadmeScreenshots makes the README's pictures of the job
// list, a job's page and the chat from the pages as they are, so they stay
// current: UPDATE_SCREENSHOTS=1 go test -run ReadmeScreenshots ./web/
// Without the variable it is skipped, so a test run never changes the tree.
func TestBrowserReadmeScreenshots(t *testing.T) {
	if os.Getenv("UPDATE_SCREENSHOTS") != "1" {
		t.Skip("set UPDATE_SCREENSHOTS=1 to write docs/img/*.png")
	}
	if err := os.MkdirAll(readmeImages, 0o755); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{width: 1200, height: 860})

	canceled := p.submitSteps(map[string]string{"steps": "1000", "interval_ms": "100"})
	p.waitState(canceled, "active")
	p.waitFor("some progress", fmt.Sprintf(`+%s.getAttribute("aria-valuenow") >= 1`, row(canceled, "[role=progressbar]")))
	// From script: a coordinate click can miss a row that is settling as
	// its progress arrives (TestBrowserJobList).
	p.clickFromScript(fmt.Sprintf(`li[data-job-id=%q] button[data-action=cancel]`, canceled))
	p.waitState(canceled, "canceled")
	retried := p.submitSteps(map[string]string{"steps": "40", "interval_ms": "40", "fail_at": "5", "fail_times": "1"})
	p.waitFor("attempt 2", row(retried, "[data-field=attempt]")+`.textContent === "attempt 2"`)
	for _, l := range []string{"warming the cache", "cache warm: 40 entries"} {
		if _, err := e.log.Publish(t.Context(), jobs.Group(retried), wire.EventLog, map[string]string{"level": "info", "message": l}); err != nil {
			t.Fatal(err)
		}
	}
	p.waitState(retried, "completed")
	report := p.submit("report", map[string]string{"rows": "5000", "seed": "7"})
	p.waitState(report, "completed")
	running := p.submitSteps(map[string]string{"steps": "10000", "interval_ms": "20"})
	p.waitFor("the running job's ETA", row(running, "[data-field=eta]")+`.textContent !== ""`)
	p.shoot("jobs.png", 1200, 860)

	p.openJob(e.http.URL, retried)
	p.waitFor("the history", `document.querySelectorAll("#timeline li[data-state=completed]").length === 1 &&
		document.querySelectorAll("#log li").length === 2`)
	p.shoot("job.png", 1000, 1300)

	b := openChat(t, e, "lobby", pageOptions{width: 1200, height: 700})
	b.setName("Bob")
	a := openChat(t, e, "lobby", pageOptions{})
	a.setName("Alice")
	a.post("Morning! Is the report job working for everyone today?")
	b.post("Yes, mine finished a minute ago. The CSV had 5,000 rows.")
	a.post("Great, thanks 👍")
	b.waitForMessage("the last one", "Alice", "Great, thanks 👍")
	b.shoot("chat.png", 1200, 700)
	for _, q := range []*browserPage{p, a, b} {
		q.checkNoExceptions()
	}
}
