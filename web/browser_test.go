package web

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// The browser tests drive the embedded page in a real headless Chromium.
// They are skipped when Chromium is not installed, unless REQUIRE_CHROMIUM=1
// (CI), which makes its absence a failure. Each waits for DOM conditions,
// never for a fixed time.

const browserWait = 30 * time.Second // the longest one step of a test may take

// chromiumPath finds the browser: $CHROMIUM, then chromium on PATH.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("REQUIRE_CHROMIUM") == "1" {
		t.Fatal("chromium is not on PATH and REQUIRE_CHROMIUM=1")
	}
	t.Skip("chromium is not on PATH (set REQUIRE_CHROMIUM=1 to make this a failure)")
	return ""
}

type pageOptions struct {
	width, height int64
	path          string         // the page to open; default "/"
	ready         string         // CSS selector of the element that says it is ready; default the jobs page's type list
	cookies       []*http.Cookie // set for the server's origin before the page opens (a signed-in session)
	noWebSocket   bool           // the page sees no WebSocket: the client falls back to SSE
	noEventSource bool           // ... and no EventSource: long-poll
	url           string         // the server's address as the browser reaches it; default e.http.URL
	// toastStay, when longer than the page's 8 s, is how long a toast
	// stays by itself (common.js's window.__toastMs), on every document
	// the tab loads: a test that presses a toast must find it there on a
	// slow machine, and must not take a toast gone by itself for one it
	// closed.
	toastStay time.Duration
}

// browserPage is one tab of a fresh headless Chromium, on the page of e.
type browserPage struct {
	t   *testing.T
	ctx context.Context // the tab; steps derive a deadline from it

	mu      sync.Mutex
	console []string
	errors  []string
}

func openPage(t *testing.T, e *testEnv, o pageOptions) *browserPage {
	t.Helper()
	if o.width == 0 {
		o.width, o.height = 1280, 900
	}
	execPath := chromiumPath(t)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(execPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(int(o.width), int(o.height)),
	)
	tabCtx, cancelTab := chromedp.NewContext(allocCtx)
	p := &browserPage{t: t, ctx: tabCtx}
	t.Cleanup(func() {
		_ = chromedp.Cancel(tabCtx)
		cancelTab()
		cancelAlloc()
	})
	// Registered after the browser's cleanup, so it runs before it.
	t.Cleanup(p.saveOnFailure)

	// Start the browser and the tab, and collect the console from the start.
	// The first Do ties the browser's life to its context: give it the tab's.
	if err := chromedp.Do(tabCtx); err != nil {
		t.Fatalf("start chromium %s: %v", execPath, err)
	}
	messages := chromedp.Console(tabCtx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			p.mu.Lock()
			p.console = append(p.console, fmt.Sprintf("%s: %s", m.Type, m.String()))
			if m.IsException() {
				p.errors = append(p.errors, m.String())
			}
			p.mu.Unlock()
		}
	}()

	var script []string
	if o.noWebSocket {
		script = append(script, "window.WebSocket = undefined;")
	}
	if o.noEventSource {
		script = append(script, "window.EventSource = undefined;")
	}
	if o.toastStay > 0 {
		script = append(script, fmt.Sprintf("window.__toastMs = %d;", o.toastStay.Milliseconds()))
	}
	if len(script) > 0 {
		src := strings.Join(script, "\n")
		p.do(chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: src})
			return err
		}))
	}
	for _, c := range o.cookies {
		p.do(chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, network.SetCookie, network.SetCookieParams{Name: c.Name, Value: c.Value, URL: cmp.Or(o.url, e.http.URL)})
			return err
		}))
	}
	if o.path == "" {
		o.path = "/"
	}
	if o.ready == "" {
		o.ready = `#job-type option[value="steps"]`
	}
	p.do(
		chromedp.EmulateViewport(o.width, o.height),
		chromedp.Navigate(cmp.Or(o.url, e.http.URL)+o.path),
		chromedp.WaitReady(chromedp.CSS(o.ready)),
	)
	return p
}

// step returns a context for one step: the tab's, with a deadline.
func (p *browserPage) step() (context.Context, context.CancelFunc) {
	return context.WithTimeout(p.ctx, browserWait)
}

// do runs steps, failing the test on an error.
func (p *browserPage) do(steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := p.step()
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("browser: %v%s", err, p.diagnostics())
	}
}

// clickFromScript clicks the element sel matches the way a script does.
// A click at its coordinates lands on whatever is there at that instant:
// on a phone a completion toast, and on a busy machine a row that moved
// (one above grew) between chromedp reading the box and pressing.
func (p *browserPage) clickFromScript(sel string) {
	p.t.Helper()
	p.do(chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.querySelector(%q).click()`, sel)))
}

// clickShownFromScript waits until the element sel matches is shown, as
// chromedp.Click did before pressing, then clicks it from script. For a
// button the test means a person can press: a button that is present but
// hidden (Sign in for a user the page does not know yet, a job page's
// Cancel before its job loads) would take a script click as readily.
func (p *browserPage) clickShownFromScript(sel string) {
	p.t.Helper()
	p.do(chromedp.WaitVisible(chromedp.CSS(sel)))
	p.clickFromScript(sel)
}

// eval returns the value of a JavaScript expression in the page.
func eval[T any](p *browserPage, expr string) T {
	p.t.Helper()
	ctx, cancel := p.step()
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v%s", expr, err, p.diagnostics())
	}
	return v
}

// waitFor polls a JavaScript condition until it holds.
//
// A poll that Chrome answers "Cannot find context with specified id" (or
// "Execution context was destroyed") ran in a document that was replaced
// under it; CI saw one right after a Navigate had returned, the poll
// having started in the context of the page before. That is no answer
// about cond, so it polls again in the current document.
func (p *browserPage) waitFor(what, cond string) {
	p.t.Helper()
	p.poll(what, cond, contextReplaced)
}

// contextReplaced reports whether err says the evaluation's document was
// replaced while it ran.
func contextReplaced(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "Cannot find context with specified id") || strings.Contains(msg, "Execution context was destroyed")
}

// poll polls cond until it holds, for up to browserWait, polling again
// after an error retry accepts, and fails the test on any other.
func (p *browserPage) poll(what, cond string, retry func(error) bool) {
	p.t.Helper()
	deadline := time.Now().Add(browserWait)
	for {
		ctx, cancel := context.WithDeadline(p.ctx, deadline)
		_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](cond,
			chromedp.WithPollingInterval(20*time.Millisecond), chromedp.WithPollingTimeout(time.Until(deadline))))
		cancel()
		if err == nil {
			return
		}
		if !retry(err) || time.Now().After(deadline) || p.ctx.Err() != nil {
			p.t.Fatalf("waiting for %s (%s): %v%s", what, cond, err, p.diagnostics())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// diagnostics describes the page for a failure message.
func (p *browserPage) diagnostics() string {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.querySelector("#conn")?.textContent || "") + "\n" + (document.querySelector("main")?.innerText || "")`))
	if err != nil {
		return ""
	}
	return "\npage:\n" + text
}

// saveOnFailure keeps a screenshot, the HTML and the console of a failed
// test in a directory that outlives it.
func (p *browserPage) saveOnFailure() {
	if !p.t.Failed() {
		return
	}
	p.mu.Lock()
	console := strings.Join(p.console, "\n")
	p.mu.Unlock()
	dir, err := os.MkdirTemp("", "taskstream-browser-*")
	if err != nil {
		p.t.Logf("keeping the failure's page: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	name := regexp.MustCompile(`[^A-Za-z0-9_-]+`).ReplaceAllString(p.t.Name(), "_")
	if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		_ = os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
	} else {
		p.t.Logf("screenshot: %v", err)
	}
	if html, err := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html"))); err == nil {
		_ = os.WriteFile(filepath.Join(dir, name+".html"), []byte(html), 0o644)
	}
	_ = os.WriteFile(filepath.Join(dir, name+".console.txt"), []byte(console), 0o644)
	p.t.Logf("the failed page (screenshot, HTML, console) is kept in %s", dir)
}

// checkNoExceptions fails the test when the page threw an uncaught exception.
func (p *browserPage) checkNoExceptions() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.errors) > 0 {
		p.t.Errorf("the page threw:\n%s", strings.Join(p.errors, "\n"))
	}
}

// api calls the API from the page, with the page's session, and returns
// the status and the decoded body.
func (p *browserPage) api(method, path string, body any) (int, map[string]any) {
	p.t.Helper()
	init := map[string]any{"method": method, "headers": map[string]string{"Accept": "application/json"}}
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			p.t.Fatal(err)
		}
		init["headers"] = map[string]string{"Accept": "application/json", "Content-Type": "application/json"}
		init["body"] = string(raw)
	}
	initJSON, _ := json.Marshal(init)
	ctx, cancel := p.step()
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](fmt.Sprintf(
		`fetch(%q, %s).then(async (r) => ({status: r.status, body: await r.json().catch(() => null)}))`, path, initJSON),
		chromedp.EvalAwaitPromise))
	if err != nil {
		p.t.Fatalf("%s %s from the page: %v", method, path, err)
	}
	var res struct {
		Status int            `json:"status"`
		Body   map[string]any `json:"body"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		p.t.Fatalf("%s %s from the page: %s: %v", method, path, raw, err)
	}
	return res.Status, res.Body
}

// submitSteps submits a steps job through the form.
func (p *browserPage) submitSteps(params map[string]string) string {
	p.t.Helper()
	return p.submit("steps", params)
}

// submit fills the form for a job of type typ, submits it and returns the
// new job's id, read from the list.
func (p *browserPage) submit(typ string, params map[string]string) string {
	p.t.Helper()
	before := eval[int](p, `document.querySelectorAll("#jobs li[data-job-id]").length`)
	p.selectType(typ)
	var steps []chromedp.Action[chromedp.Void]
	for name, v := range params {
		steps = append(steps, chromedp.SetValue(chromedp.ID("param-"+name), v))
	}
	p.do(steps...)
	// Clicked from script: on a phone a completion toast of an earlier
	// job can sit where a click at the button's coordinates lands while
	// common.js is still moving it (the layout itself is checked by
	// TestBrowserPhoneRunJob's checkNoOverlap).
	p.do(chromedp.Evaluate[chromedp.Void](`document.querySelector("#submit").scrollIntoView({block: "end"})`))
	p.clickFromScript("#submit")
	p.waitFor("the new job in the list", fmt.Sprintf(`document.querySelectorAll("#jobs li[data-job-id]").length > %d`, before))
	return eval[string](p, `document.querySelector("#jobs li[data-job-id]").dataset.jobId`)
}

func (p *browserPage) selectType(typ string) {
	p.t.Helper()
	// The types load after the page: a caller that waited for something
	// else (the socket) may come first.
	p.waitFor("the job type "+typ, fmt.Sprintf(`document.querySelector('#job-type option[value=%q]') !== null`, typ))
	p.do(chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => {
		const s = document.querySelector("#job-type");
		s.value = %q;
		s.dispatchEvent(new Event("change"));
	})()`, typ)))
}

// row returns a JavaScript expression for an element of a job's row (the
// row itself when sel is empty).
func row(id, sel string) string {
	return fmt.Sprintf(`document.querySelector('li[data-job-id=%q] %s')`, id, sel)
}

func (p *browserPage) waitState(id, state string) {
	p.t.Helper()
	p.waitFor("job "+id+" "+state, fmt.Sprintf(`%s?.textContent === %q`, row(id, "[data-field=state]"), state))
}

// checkDelivered checks that the client delivered exactly seqs 1..N of the
// job's group, N being the job's last seq on the server.
func (p *browserPage) checkDelivered(id string) {
	p.t.Helper()
	status, job := p.api("GET", "/api/jobs/"+id, nil)
	if status != 200 {
		p.t.Fatalf("GET job: %d %v", status, job)
	}
	last := int64(job["last_seq"].(float64))
	// The page may show "completed" before the last event (the result)
	// has arrived: wait for the client to reach the server's last seq.
	p.waitFor(fmt.Sprintf("job %s delivered up to seq %d", id, last),
		fmt.Sprintf(`(window.__ts.delivered("job:%s").slice(-1)[0] || 0) >= %d`, id, last))
	raw := eval[[]byte](p, fmt.Sprintf(`window.__ts.delivered("job:%s")`, id))
	var got []int64
	if err := json.Unmarshal(raw, &got); err != nil {
		p.t.Fatalf("delivered: %s: %v", raw, err)
	}
	want := make([]int64, last)
	for i := range want {
		want[i] = int64(i + 1)
	}
	if !slices.Equal(got, want) {
		p.t.Fatalf("the page delivered seqs %v, want 1..%d", got, last)
	}
}

// checkManyQuietJobs runs more quiet jobs than a browser has connections
// for one server (6 over HTTP/1.1), each holding an HTTP stream open when
// the page has no socket. The page must stay usable: a new job still
// completes with all its events, and the quiet ones can be canceled.
func (p *browserPage) checkManyQuietJobs() {
	p.t.Helper()
	var quiet []string
	for range 6 {
		// Quiet, and too long to end before the test cancels it: with 2
		// steps it completed 60 s after it started, which a slow run (a
		// queued group sees its canceled state at its next 1-3 s peek,
		// six times over) could reach before the last cancel.
		quiet = append(quiet, p.submitSteps(map[string]string{"steps": "1000", "interval_ms": "60000"}))
	}
	id := p.submitSteps(map[string]string{"steps": "10", "interval_ms": "20"})
	p.waitState(id, "completed")
	p.checkDelivered(id)
	// One cancel at a time: six cancel requests at once would queue behind
	// the page's held streams for the browser's six connections, which is
	// the limit the client works around, not what this checks.
	for _, id := range quiet {
		// From script, as in TestBrowserJobList: the rows above move as
		// the page's polls bring their events, under a coordinate click.
		p.clickFromScript(fmt.Sprintf(`li[data-job-id=%q] button[data-action=cancel]`, id))
		p.waitState(id, "canceled")
		p.checkDelivered(id)
	}
}

func TestBrowserSubmitAndComplete(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{})
	p.waitFor("the socket", `document.querySelector("#conn").dataset.state === "connected"`)
	if got := eval[string](p, `document.querySelector("#conn").textContent`); got != "connected (websocket)" {
		t.Errorf("connection indicator says %q", got)
	}

	id := p.submitSteps(map[string]string{"steps": "20", "interval_ms": "50"})
	p.waitState(id, "completed")
	p.waitFor("the bar at 100%", fmt.Sprintf(`%s.getAttribute("aria-valuenow") === "100"`, row(id, "[role=progressbar]")))
	if got := eval[string](p, row(id, "[data-field=percent]")+".textContent"); got != "100%" {
		t.Errorf("percent shows %q", got)
	}
	p.waitFor("the result", row(id, "[data-field=result]")+`.textContent.includes("20")`)
	if !eval[bool](p, row(id, "button[data-action=cancel]")+".hidden") {
		t.Error("the cancel button of a completed job is visible")
	}
	p.waitFor("the live region to announce it", `document.querySelector("#announcer[aria-live]").textContent.includes("completed")`)
	p.checkDelivered(id)
	if n := e.web.ConnCount(); n != 1 {
		t.Errorf("the page holds %d sockets, want 1", n)
	}

	// Accessibility: every control has a label, the bar is a described
	// progressbar, and state changes go to a live region.
	unlabeled := eval[[]string](p, `[...document.querySelectorAll("#job-form input, #job-form select, #job-form textarea")]
		.filter((el) => el.labels.length === 0).map((el) => el.id || el.name)`)
	if len(unlabeled) > 0 {
		t.Errorf("controls without a label: %v", unlabeled)
	}
	attrs := eval[map[string]string](p, fmt.Sprintf(`(() => { const b = %s; return {min: b.getAttribute("aria-valuemin"),
		max: b.getAttribute("aria-valuemax"), label: b.getAttribute("aria-label") || ""}; })()`, row(id, "[role=progressbar]")))
	if attrs["min"] != "0" || attrs["max"] != "100" || attrs["label"] == "" {
		t.Errorf("progressbar attributes %v", attrs)
	}

	// A notification's link (/#job-ID) shows the job, also on a fresh load.
	p.do(chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = "#job-%s"`, id)))
	p.waitFor("the linked job", row(id, "")+`.classList.contains("linked")`)
	p.do(chromedp.Reload())
	p.waitFor("the linked job after a reload", fmt.Sprintf(`document.activeElement?.dataset?.jobId === %q`, id))
	p.waitState(id, "completed")
	p.checkNoExceptions()
}

// TestBrowserClientResetsOnLostHistory uses taskstream.js on its own, as
// another app's page would: a position in an epoch the server no longer
// has gets "recovered": false, onReset, and the whole history once; a
// position in the right epoch gets only what follows it.
func TestBrowserClientResetsOnLostHistory(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{})
	id := p.submitSteps(map[string]string{"steps": "10", "interval_ms": "10"})
	p.waitState(id, "completed")
	_, job := p.api("GET", "/api/jobs/"+id, nil)
	epoch, _ := job["epoch"].(string)
	last := int(job["last_seq"].(float64))
	if epoch == "" || last < 5 {
		t.Fatalf("job snapshot %v", job)
	}
	p.do(chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`import("/static/taskstream.js").then(({TaskStream}) => {
		window.__log = {resets: [], ends: 0, events: [], fresh: []};
		const c = new TaskStream({url: location.origin});
		window.__c = c;
		c.subscribe("job:%[1]s", {
			onReset(info) { __log.resets.push(info); },
			onEvent(f) { __log.events.push(f.seq); },
			onEnd() { __log.ends++; },
		}, {after: 3, epoch: "not-the-epoch"});
		c.subscribe("job:%[1]s-copy", {}); // unknown job: an error, not a crash
		const d = new TaskStream({url: location.origin});
		window.__d = d;
		d.subscribe("job:%[1]s", {onEvent(f) { __log.fresh.push(f.seq); }}, {after: 3, epoch: %[2]q});
	})`, id, epoch)))
	p.waitFor("both clients to end", fmt.Sprintf(`window.__log && __log.ends === 1 && __log.fresh.at(-1) === %d`, last))
	var log struct {
		Resets []map[string]any
		Ends   int
		Events []int
		Fresh  []int
	}
	if err := json.Unmarshal(eval[[]byte](p, `window.__log`), &log); err != nil {
		t.Fatal(err)
	}
	if len(log.Resets) != 1 || log.Resets[0]["epoch"] != epoch {
		t.Errorf("resets %v, want one to epoch %s", log.Resets, epoch)
	}
	want := make([]int, last)
	for i := range want {
		want[i] = i + 1
	}
	if !slices.Equal(log.Events, want) {
		t.Errorf("after the reset the client delivered %v, want 1..%d", log.Events, last)
	}
	if !slices.Equal(log.Fresh, want[3:]) {
		t.Errorf("resuming after 3 in the right epoch delivered %v, want 4..%d", log.Fresh, last)
	}
	p.do(chromedp.Evaluate[chromedp.Void](`__c.close(); __d.close()`))
	eventually(t, "the extra sockets to close", func() bool { return e.web.ConnCount() == 1 })
	p.checkNoExceptions()
}

// TestBrowserClientErrorAfterSubscribed: a group the server stops
// serving after its subscribed frame (its log can no longer be read on
// the catch-up after a lost pub/sub connection) comes as an error frame
// without a ref; taskstream.js hands it to that group's onError.
func TestBrowserClientErrorAfterSubscribed(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{})
	id := p.submitSteps(map[string]string{"steps": "2", "interval_ms": "0"})
	p.waitState(id, "completed")
	_, job := p.api("GET", "/api/jobs/"+id, nil)
	epoch, _ := job["epoch"].(string)
	last := int(job["last_seq"].(float64))
	// From the job's last position: no event comes, so the group stays
	// subscribed (the page's own list let go of it when the job ended).
	p.do(chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`import("/static/taskstream.js").then(({TaskStream}) => {
		window.__log = {subscribed: 0, errors: []};
		const c = new TaskStream({url: location.origin});
		window.__c = c;
		c.subscribe("job:%[1]s", {
			onSubscribed() { __log.subscribed++; },
			onError(err) { __log.errors.push(err); },
		}, {after: %[2]d, epoch: %[3]q});
	})`, id, last, epoch)))
	p.waitFor("the subscription", `window.__log && __log.subscribed === 1`)
	group := wire.JobGroup(id).String()
	e.breakLog(group)
	e.dropPubSub()
	p.waitFor("the group's error", `__log.errors.length === 1`)
	var errs []map[string]any
	if err := json.Unmarshal(eval[[]byte](p, `__log.errors`), &errs); err != nil {
		t.Fatal(err)
	}
	if errs[0]["group"] != group || errs[0]["code"] != CodeInternal {
		t.Errorf("onError got %v, want an internal error for %s", errs[0], group)
	}
	p.do(chromedp.Evaluate[chromedp.Void](`__c.close()`))
	p.checkNoExceptions()
}

func TestBrowserFormShowsAPIError(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{})
	// fail_times needs fail_at: only the server knows, so it answers 400.
	p.selectType("steps")
	p.do(
		chromedp.SetValue(chromedp.ID("param-steps"), "5"),
		chromedp.SetValue(chromedp.ID("param-fail_times"), "2"),
	)
	// Run job, shown, pressed from script as in submit: what is checked
	// is the page's answer to the refusal, not where the button is.
	p.clickShownFromScript("#submit")
	p.waitFor("the inline error", `!document.querySelector("#form-error").hidden`)
	got := eval[string](p, `document.querySelector("#form-error").textContent`)
	if !strings.Contains(got, "fail_times") {
		t.Errorf("form error %q does not carry the API's message", got)
	}
	if n := eval[int](p, `document.querySelectorAll("#jobs li[data-job-id]").length`); n != 0 {
		t.Errorf("%d jobs listed after a refused submit", n)
	}
	p.checkNoExceptions()
}

func TestBrowserCancel(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{})
	id := p.submitSteps(map[string]string{"steps": "1000", "interval_ms": "100"})
	p.waitState(id, "active")
	p.waitFor("some progress", row(id, "[data-field=stage]")+`.textContent !== ""`)
	// The row's Cancel, shown, pressed from script as in TestBrowserJobList:
	// a coordinate click can land elsewhere while the row grows with its
	// progress.
	p.clickShownFromScript(fmt.Sprintf(`li[data-job-id=%q] button[data-action=cancel]`, id))
	p.waitState(id, "canceled")
	if !eval[bool](p, row(id, "button[data-action=cancel]")+".hidden") {
		t.Error("the cancel button of a canceled job is visible")
	}
	if pct := eval[string](p, row(id, "[role=progressbar]")+`.getAttribute("aria-valuenow")`); pct == "100" {
		t.Error("a canceled 1000-step job shows 100%")
	}
	p.checkDelivered(id)
	p.checkNoExceptions()
}

func TestBrowserResumeAfterDroppedSocket(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{})
	p.waitFor("the socket", `document.querySelector("#conn").dataset.state === "connected"`)
	p.do(chromedp.Evaluate[chromedp.Void](`window.__states = []; window.__ts.onStatus((s) => window.__states.push(s.state));`))
	id := p.submitSteps(map[string]string{"steps": "40", "interval_ms": "50"})
	bar := row(id, "[role=progressbar]")
	for _, at := range []int{20, 60} {
		p.waitFor(fmt.Sprintf("%d%%", at), fmt.Sprintf(`+%s.getAttribute("aria-valuenow") >= %d`, bar, at))
		p.do(chromedp.Evaluate[chromedp.Void](`window.__ts.dropConnection()`))
	}
	p.waitState(id, "completed")
	p.waitFor("the bar at 100%", fmt.Sprintf(`%s.getAttribute("aria-valuenow") === "100"`, bar))
	p.waitFor("connected again", `document.querySelector("#conn").dataset.state === "connected"`)
	if !eval[bool](p, `window.__states.includes("reconnecting")`) {
		t.Errorf("the status never said reconnecting: %s", eval[[]byte](p, `window.__states`))
	}
	p.checkDelivered(id)
	eventually(t, "one socket left", func() bool { return e.web.ConnCount() == 1 })
	p.checkNoExceptions()
}

func TestBrowserSSEFallback(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{noWebSocket: true})
	p.waitFor("the SSE transport", `document.querySelector("#conn").textContent === "connected (sse)"`)
	id := p.submitSteps(map[string]string{"steps": "40", "interval_ms": "50"})
	p.waitFor("progress", fmt.Sprintf(`+%s.getAttribute("aria-valuenow") >= 30`, row(id, "[role=progressbar]")))
	p.do(chromedp.Evaluate[chromedp.Void](`window.__ts.dropConnection()`)) // reopen with after + epoch
	p.waitState(id, "completed")
	p.waitFor("the bar at 100%", fmt.Sprintf(`%s.getAttribute("aria-valuenow") === "100"`, row(id, "[role=progressbar]")))
	if got := eval[string](p, `document.querySelector("#conn").textContent`); !strings.Contains(got, "sse") {
		t.Errorf("connection indicator says %q, want sse", got)
	}
	p.checkDelivered(id)
	if n := e.web.ConnCount(); n != 0 {
		t.Errorf("%d sockets open with WebSocket disabled", n)
	}
	p.checkManyQuietJobs()
	p.checkNoExceptions()
}

func TestBrowserLongPollFallback(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{noWebSocket: true, noEventSource: true})
	p.waitFor("the long-poll transport", `document.querySelector("#conn").textContent === "connected (longpoll)"`)
	id := p.submitSteps(map[string]string{"steps": "20", "interval_ms": "50"})
	p.waitState(id, "completed")
	p.waitFor("the bar at 100%", fmt.Sprintf(`%s.getAttribute("aria-valuenow") === "100"`, row(id, "[role=progressbar]")))
	p.checkDelivered(id)
	p.checkManyQuietJobs()
	p.checkNoExceptions()
}

// TestBrowserScreenshots saves the page at desktop and phone width after
// jobs ran, for a person to look at: SCREENSHOTS=1 go test -run Screenshots ./web/
func TestBrowserScreenshots(t *testing.T) {
	if os.Getenv("SCREENSHOTS") != "1" {
		t.Skip("set SCREENSHOTS=1 to write /tmp/taskstream-desktop.png and /tmp/taskstream-phone.png")
	}
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{})
	p.submitSteps(map[string]string{"steps": "5", "interval_ms": "10", "fail_at": "3"}) // shows a retry
	report := p.submit("report", map[string]string{"rows": "2000", "seed": "7"})
	canceled := p.submitSteps(map[string]string{"steps": "1000", "interval_ms": "100"})
	p.waitState(canceled, "active")
	p.waitFor("some progress", fmt.Sprintf(`+%s.getAttribute("aria-valuenow") >= 1`, row(canceled, "[role=progressbar]")))
	p.do(chromedp.Click(chromedp.CSS(fmt.Sprintf(`li[data-job-id=%q] button[data-action=cancel]`, canceled))))
	p.waitState(canceled, "canceled")
	running := p.submitSteps(map[string]string{"steps": "10000", "interval_ms": "20"})
	done := p.submitSteps(map[string]string{"steps": "20", "interval_ms": "20"})
	p.waitState(done, "completed")
	p.waitState(report, "completed")
	p.waitFor("the artifact link", `!`+row(report, "[data-field=artifact]")+".hidden")
	p.waitFor("the running job's ETA", row(running, "[data-field=eta]")+`.textContent !== ""`)
	for _, shot := range []struct {
		path          string
		width, height int64
	}{{"/tmp/taskstream-desktop.png", 1280, 900}, {"/tmp/taskstream-phone.png", 390, 844}} {
		p.do(chromedp.EmulateViewport(shot.width, shot.height))
		ctx, cancel := p.step()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(shot.path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", shot.path)
	}
	p.checkNoExceptions()
}
