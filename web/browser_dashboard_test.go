package web

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"taskstream/progress/progresstest"
	"taskstream/web/dashboard"
)

// The dashboard in a real browser: an admin sees two worker servers on the
// same Redis, pauses and resumes a queue from the page, and sees one
// worker when the other shuts down, all pushed over the socket. With
// UPDATE_SCREENSHOTS=1 it writes docs/img/dashboard.png (the README's).
func TestBrowserDashboardShowsWorkersComeAndGo(t *testing.T) {
	chromiumPath(t) // skip before starting anything without a browser
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e, smtp := smtpEnv(t, srv, withoutWorker(),
			withDashboard(dashboard.Config{Interval: 200 * time.Millisecond, LeaderTTL: time.Second, Window: 30 * time.Second}),
			withWebConfig(Config{AdminEmails: []string{"ops@example.com"}}))
		admin := e.newBrowser()
		e.signIn(admin, smtp, "ops@example.com")
		base, _ := url.Parse(e.http.URL)

		e.startWorker(map[string]int{"default": 3, "low": 1})
		second := e.startWorker(map[string]int{"default": 1})
		// A workload to look at: finished jobs, a failure, a running job.
		for range 6 {
			e.submit("steps", map[string]any{"steps": 3, "interval_ms": 30})
		}
		e.submit("steps", map[string]any{"steps": 1, "interval_ms": 0, "fail_at": 1, "fail_times": 10})
		e.submit("steps", map[string]any{"steps": 10000, "interval_ms": 100})

		p := openPage(t, e, pageOptions{path: "/dashboard", ready: "#workers", cookies: admin.Jar.Cookies(base), width: 1280, height: 1100})
		p.watchCSP()
		p.do(chromedp.Reload(), chromedp.WaitReady(chromedp.CSS("#workers")))
		p.waitFor("the socket", `document.querySelector("#conn").dataset.state === "connected"`)
		p.waitFor("two workers", `document.querySelectorAll("#workers tbody tr").length === 2`)
		if got := eval[string](p, `document.querySelector("#worker-count").textContent`); got != "(2)" {
			t.Errorf("worker count says %q", got)
		}
		// WORKER_QUEUES default=3 and default=1 on the two workers: each
		// priority is its own asynq queue, weighted 4x, 2x and 1x.
		p.waitFor("the queue weights", `document.querySelector('#queues tr[data-queue="default"] .weight')?.textContent === "6 / 2" &&
			document.querySelector('#queues tr[data-queue="default:high"] .weight')?.textContent === "12 / 4"`)
		p.waitFor("the failure with its error", `[...document.querySelectorAll("#failures tbody tr")].some((tr) => tr.querySelector(".error").textContent.includes("failed on purpose"))`)
		p.waitFor("the running job", `document.querySelectorAll("#workers .running .job").length === 1`)
		p.waitFor("the charts", `document.querySelectorAll("#chart-jobs path.line").length > 0 && document.querySelectorAll("#chart-sockets path.line").length === 1`)
		if !eval[bool](p, `document.querySelector("#admin-badge") !== null`) {
			t.Error("an admin's page has no admin badge")
		}
		if os.Getenv("UPDATE_SCREENSHOTS") == "1" && srv.Kind == "miniredis" {
			// A steady stream of jobs, some failing, while the charts fill
			// most of their window.
			stop := make(chan struct{})
			var feeding sync.WaitGroup
			feeding.Add(1)
			go func() {
				defer feeding.Done()
				tick := time.NewTicker(150 * time.Millisecond)
				defer tick.Stop()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					params := fmt.Sprintf(`{"steps":%d,"interval_ms":40}`, 2+i%7)
					if i%25 == 7 {
						params = `{"steps":2,"interval_ms":0,"fail_at":1,"fail_times":10}`
					}
					_, _ = e.jobs.Submit(context.Background(), "screenshot", "steps", json.RawMessage(params))
				}
			}()
			p.waitFor("most of the chart window", `document.querySelector("#chart-jobs path.line")?.getAttribute("d").split("L").length > 110`)
			close(stop)
			feeding.Wait()
			ctx, cancel := p.step()
			png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("..", "docs", "img", "dashboard.png")
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, png, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %s", path)
		}

		// Pause and resume a queue from the page; the next snapshots show it.
		// The row's button, once shown, is pressed from script: snapshots
		// come every 200 ms and redraw the table, and a count that gains a
		// digit moves the button under a click at coordinates read before.
		queueButton := `#queues tr[data-queue="default"] button`
		p.clickShownFromScript(queueButton)
		p.waitFor("the queue paused", `document.querySelector('#queues tr[data-queue="default"]').dataset.paused === "true"`)
		p.clickShownFromScript(queueButton)
		p.waitFor("the queue running", `document.querySelector('#queues tr[data-queue="default"]').dataset.paused === "false"`)

		second.Shutdown()
		p.waitFor("one worker", `document.querySelectorAll("#workers tbody tr").length === 1`)
		p.checkCSP()
		p.checkNoExceptions()
		if !eval[bool](p, `document.querySelector("#action-error").hidden`) {
			t.Errorf("the page shows an action error: %s", eval[string](p, `document.querySelector("#action-error").textContent`))
		}
	})
}
