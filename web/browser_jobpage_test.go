package web

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"taskstream/jobs"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// Browser tests of the job page, /jobs/{id} (issue 11, item 1).

var pageSizes = []struct{ width, height int64 }{{1280, 900}, {375, 812}}

// openJob opens the job page of id in p and waits until it has loaded the
// job (or said why it cannot).
func (p *browserPage) openJob(base, id string) {
	p.t.Helper()
	p.do(chromedp.Navigate(base + "/jobs/" + id))
	p.waitFor("the job page", `!document.querySelector("#job").hidden || !document.querySelector("#problem").hidden`)
}

// checkNoOverflow fails when the page is wider than its window (a phone
// would scroll sideways).
func (p *browserPage) checkNoOverflow(what string) {
	p.t.Helper()
	if w := eval[[]int](p, `[document.documentElement.scrollWidth, document.documentElement.clientWidth]`); w[0] > w[1] {
		p.t.Errorf("%s: the page is %d px wide in a %d px window", what, w[0], w[1])
	}
}

// TestBrowserJobPage runs a job whose first attempt fails and that logs,
// and a report, and opens their pages from the list: the timeline has
// every state with its time, the attempts their errors, the log every
// line, the chart the progress; the result is tables with formatted
// numbers, the artifact link its size; the success clears the first
// attempt's error. An unknown id and someone else's job get a clear page.
func TestBrowserJobPage(t *testing.T) {
	for _, size := range pageSizes {
		t.Run(fmt.Sprintf("%dpx", size.width), func(t *testing.T) {
			e := newEnv(t, progresstest.Embedded(t))
			p := openPage(t, e, pageOptions{width: size.width, height: size.height})
			p.watchCSP()
			p.do(chromedp.Reload(), chromedp.WaitReady(chromedp.CSS(`#job-type option[value="steps"]`)))

			id := p.submitSteps(map[string]string{"steps": "60", "interval_ms": "20", "fail_at": "3", "fail_times": "1"})
			p.waitFor("attempt 2", row(id, "[data-field=attempt]")+`.textContent === "attempt 2"`)
			lines := []string{"first line", `<b>not bold</b> & "quoted"`}
			for _, l := range lines {
				if _, err := e.log.Publish(t.Context(), jobs.Group(id), wire.EventLog, map[string]string{"level": "info", "message": l}); err != nil {
					t.Fatal(err)
				}
			}
			p.waitState(id, "completed")
			if !eval[bool](p, row(id, "[data-field=error]")+".hidden") {
				t.Errorf("the completed row still shows an error: %q", p.eval0(row(id, "[data-field=error]")+".textContent"))
			}
			report := p.submit("report", map[string]string{"rows": "2000", "seed": "7"})
			p.waitState(report, "completed")

			// From the list: the row's link.
			p.clickFromScript(fmt.Sprintf(`li[data-job-id=%q] a.job-type`, id))
			p.do(chromedp.WaitVisible(chromedp.ID("job-title")))
			if got := p.eval0(`location.pathname`); got != "/jobs/"+id {
				t.Fatalf("the row links to %s", got)
			}
			p.waitFor("the whole history", fmt.Sprintf(`document.querySelectorAll("#timeline li[data-event=state]").length >= 5 &&
				document.querySelectorAll("#log li").length === 2 && window.__ts.delivered("job:%s").length > 0 &&
				document.querySelector("#job-state").textContent === "completed"`, id))
			p.checkDelivered(id)

			var tl []struct {
				State, Text, Title, Datetime string
			}
			if err := json.Unmarshal(eval[[]byte](p, `[...document.querySelectorAll("#timeline li[data-event=state]")].map((li) => ({
				state: li.dataset.state, text: li.textContent, title: li.querySelector("time").title,
				datetime: li.querySelector("time").getAttribute("datetime")}))`), &tl); err != nil {
				t.Fatal(err)
			}
			var states []string
			for _, s := range tl {
				states = append(states, s.State)
				if s.Title == "" || s.Datetime == "" {
					t.Errorf("timeline entry %q has no absolute time (title %q, datetime %q)", s.Text, s.Title, s.Datetime)
				}
			}
			if got := strings.Join(states, " "); got != "pending active retry active completed" {
				t.Errorf("timeline states %q", got)
			}
			if len(tl) == 5 && !strings.Contains(tl[2].Text, "failed on purpose") {
				t.Errorf("the retry's entry %q lacks its error", tl[2].Text)
			}
			if got := eval[[]string](p, `[...document.querySelectorAll("#attempts tr")].map((tr) => tr.dataset.attempt + " " + tr.dataset.outcome + " " + (tr.querySelector(".error")?.textContent || ""))`); len(got) != 2 ||
				!strings.HasPrefix(got[0], "1 failed, retried steps: step 3 failed on purpose") || got[1] != "2 completed " {
				t.Errorf("attempts %q", got)
			}
			if got := eval[[]string](p, `[...document.querySelectorAll("#log .log-message")].map((n) => n.textContent)`); strings.Join(got, "|") != strings.Join(lines, "|") {
				t.Errorf("log lines %q, want %q", got, lines)
			}
			if n := eval[int](p, `document.querySelectorAll("#log b, #timeline b").length`); n != 0 {
				t.Errorf("a log line was rendered as HTML")
			}
			if !eval[bool](p, `document.querySelector("#error").hidden`) {
				t.Errorf("the completed job's page shows an error: %q", p.eval0(`document.querySelector("#error").textContent`))
			}
			facts := eval[map[string]string](p, `Object.fromEntries([...document.querySelectorAll(".facts > div")].map((d) =>
				[d.querySelector("dt").textContent, (d.querySelector("time")?.title ? "@" : "") + d.querySelector("dd").textContent]))`)
			for _, k := range []string{"Created", "Started", "Finished"} {
				if !strings.HasPrefix(facts[k], "@") {
					t.Errorf("%s: %q, want a time with its absolute value on hover", k, facts[k])
				}
			}
			for _, k := range []string{"Queue wait", "Duration"} {
				if !strings.HasSuffix(facts[k], " s") || strings.Contains(facts[k], "so far") {
					t.Errorf("%s: %q, want a finished duration", k, facts[k])
				}
			}
			if n := eval[int](p, `document.querySelector("#chart-line").points.length`); n < 10 {
				t.Errorf("the chart has %d points", n)
			}
			p.checkNoOverflow("the job page")

			// The report: result tables, formatted numbers, the file's size.
			p.openJob(e.http.URL, report)
			p.waitFor("the result", `!document.querySelector("#result-panel").hidden && !document.querySelector("#artifact").hidden`)
			_, snap := p.api("GET", "/api/jobs/"+report, nil)
			bytes, _ := snap["artifact_size"].(float64)
			if bytes <= 0 {
				t.Fatalf("the job has no artifact_size: %v", snap)
			}
			want := eval[string](p, fmt.Sprintf(`"Download the CSV (" + (%f / 1000).toLocaleString(undefined, {maximumFractionDigits: 1}) + " kB)"`, bytes))
			if got := p.eval0(`document.querySelector("#artifact").textContent`); got != want {
				t.Errorf("artifact link %q, want %q", got, want)
			}
			cells := eval[map[string]string](p, `Object.fromEntries([...document.querySelectorAll("#result table.kv > tbody > tr")].map((tr) =>
				[tr.querySelector("th").textContent, tr.querySelector("td").textContent]))`)
			if want := eval[string](p, `(2000).toLocaleString()`); cells["rows"] != want {
				t.Errorf("rows shown as %q, want %q", cells["rows"], want)
			}
			if n := eval[int](p, `document.querySelectorAll("#result table.records tbody tr").length`); n < 12 {
				t.Errorf("the summary's records tables have %d rows, want a row per region and month", n)
			}
			if n := eval[int](p, `document.querySelectorAll("#result td.num").length`); n < 24 {
				t.Errorf("%d number cells", n)
			}
			p.checkNoOverflow("the report's page")

			// Unknown and foreign jobs: a clear page.
			p.openJob(e.http.URL, "no-such-job")
			if got := p.eval0(`document.querySelector("#problem-title").textContent`); got != "No such job" {
				t.Errorf("an unknown id says %q", got)
			}
			other := openPage(t, e, pageOptions{width: size.width, height: size.height})
			other.openJob(e.http.URL, id)
			if got := other.eval0(`document.querySelector("#problem-title").textContent`); got != "Not your job" {
				t.Errorf("someone else's job says %q", got)
			}
			if n := eval[int](other, `document.querySelectorAll("#timeline li").length`); n != 0 {
				t.Errorf("someone else's job shows %d timeline entries", n)
			}
			p.checkCSP()
			p.checkNoExceptions()
			other.checkNoExceptions()
		})
	}
}

// TestBrowserJobPageHistoryLost: Redis loses a running job's events under
// an open job page; when the page resumes, it says the history is lost,
// reloads the job, and goes on with the events that follow.
func TestBrowserJobPageHistoryLost(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{})
	id := p.submitSteps(map[string]string{"steps": "1000", "interval_ms": "50"})
	p.waitState(id, "active")
	p.openJob(e.http.URL, id)
	p.waitFor("progress on the page", `document.querySelector("#timeline li[data-event=progress]") !== null && document.querySelector("#job-state").textContent === "active"`)
	if !eval[bool](p, `document.querySelector("#history-note").hidden`) {
		t.Fatalf("a whole history is called incomplete: %s", p.eval0(`document.querySelector("#history-note").textContent`))
	}
	// A Redis restart without persistence, for this job's log only.
	group := jobs.Group(id)
	if err := e.rdb.Del(t.Context(), "ts:{"+group+"}:meta", "ts:{"+group+"}:log").Err(); err != nil {
		t.Fatal(err)
	}
	p.do(chromedp.Evaluate[chromedp.Void](`window.__ts.dropConnection()`))
	p.waitFor("the history-lost note", `!document.querySelector("#history-note").hidden &&
		document.querySelector("#history-note").textContent.startsWith("History lost")`)
	p.waitFor("events after the loss", `document.querySelector("#timeline li[data-event=progress]") !== null`)
	if n := eval[int](p, `document.querySelectorAll("#timeline li[data-event=state]").length`); n != 0 {
		t.Errorf("the timeline still shows %d state events from the lost history", n)
	}
	// Cancel, shown, pressed from script: the page has just loaded the job
	// again after the loss and redraws its head (state, attempt) and the
	// history note above the bar, under a click at coordinates read before.
	p.clickShownFromScript("#cancel")
	p.waitFor("canceled", `document.querySelector("#job-state").textContent === "canceled" &&
		document.querySelector("#timeline li[data-state=canceled]") !== null`)

	// Its events expire; the record stays: the page says so.
	if err := e.rdb.Del(t.Context(), "ts:{"+group+"}:meta", "ts:{"+group+"}:log").Err(); err != nil {
		t.Fatal(err)
	}
	p.do(chromedp.Reload())
	p.waitFor("the note", `document.querySelector("#job-state").textContent === "canceled" &&
		document.querySelector("#history-note").textContent === "This job's events are no longer kept; the state above is from its record."`)
	if n := eval[int](p, `document.querySelectorAll("#timeline li").length`); n != 0 {
		t.Errorf("%d timeline entries without events", n)
	}
	p.checkNoExceptions()
}
