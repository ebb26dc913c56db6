package web

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"taskstream/progress/progresstest"
	"taskstream/web/auth"
	"taskstream/web/auth/authtest"
)

// Browser tests for the pages as a new user meets them (issue 11): the
// first "Run job", a chat composer that keeps what is typed, and sign-in
// errors that say what happened.

// watchCSP collects the page's Content-Security-Policy violations from the
// next document on (reload after it); checkCSP fails the test on any.
func (p *browserPage) watchCSP() {
	p.t.Helper()
	p.do(chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: `
			window.__csp = [];
			document.addEventListener("securitypolicyviolation",
				(e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));`})
		return err
	}))
}

func (p *browserPage) checkCSP() {
	p.t.Helper()
	if v := eval[[]string](p, `window.__csp || ["the CSP watch was not installed"]`); len(v) > 0 {
		p.t.Errorf("CSP violations: %s", strings.Join(v, "; "))
	}
}

// TestBrowserFirstRunWorks opens the page and presses "Run job" at once:
// the form opens on a type whose required params are filled in, so a job
// starts and its row gets its events, at desktop and phone width.
func TestBrowserFirstRunWorks(t *testing.T) {
	for _, size := range []struct{ width, height int64 }{{1280, 900}, {375, 812}} {
		t.Run(fmt.Sprintf("%dpx", size.width), func(t *testing.T) {
			e := newEnv(t, progresstest.Embedded(t))
			p := openPage(t, e, pageOptions{width: size.width, height: size.height})
			p.watchCSP()
			p.do(chromedp.Reload(), chromedp.WaitReady(chromedp.CSS(`#job-type option[value="steps"]`)))
			typ := p.eval0(`document.querySelector("#job-type").value`)
			// The button must be there to press at once; pressed from
			// script, as submit's: at 375 px a coordinate click can land
			// on whatever moved under it while the page settles.
			p.do(chromedp.WaitVisible(chromedp.ID("submit")))
			p.clickFromScript("#submit")
			p.waitFor("the first job's row", `document.querySelector("#jobs li[data-job-id]") !== null ||
				!document.querySelector("#form-error").hidden`)
			if msg := p.eval0(`document.querySelector("#form-error").hidden ? "" : document.querySelector("#form-error").textContent`); msg != "" {
				t.Fatalf("the first Run job (type %s) was refused: %s", typ, msg)
			}
			if invalid := eval[[]string](p, `[...document.querySelectorAll("#job-form :invalid")].map((el) => el.id)`); len(invalid) > 0 {
				t.Errorf("the form opens with invalid fields: %v", invalid)
			}
			id := p.eval0(`document.querySelector("#jobs li[data-job-id]").dataset.jobId`)
			if got := p.eval0(row(id, "[data-field=type]") + ".textContent"); got != typ {
				t.Errorf("the row's type is %q, the form's %q", got, typ)
			}
			p.waitState(id, "completed")
			p.checkDelivered(id)

			// The next visit opens on the type last run, here another one.
			other := "steps"
			if typ == other {
				other = "primes"
			}
			second := p.submit(other, nil)
			p.waitState(second, "completed")
			p.do(chromedp.Reload(), chromedp.WaitReady(chromedp.CSS(`#job-type option[value="steps"]`)))
			p.waitFor("the form", `!document.querySelector("#submit").disabled`)
			if got := p.eval0(`document.querySelector("#job-type").value`); got != other {
				t.Errorf("after a reload the form opens on %q, want the last run %q", got, other)
			}
			p.checkCSP()
			p.checkNoExceptions()
		})
	}
}

// typeKeys types text into the focused element as a keyboard does: each
// key is one keyDown carrying its text, then a keyUp. (chromedp's
// SendKeys sends the text as a separate char event, which inserts it even
// when the page prevented the keydown, as a page does with Enter to send.)
func typeKeys(sel, text string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		if _, err := chromedp.Run(ctx, chromedp.Focus(chromedp.CSS(sel))); err != nil {
			return err
		}
		for _, r := range text {
			var down input.DispatchKeyEventParams
			for _, k := range kb.Encode(r) {
				switch k.Type {
				case input.DispatchKeyEventTypeKeyDown, input.DispatchKeyEventTypeRawKeyDown:
					down = *k
					down.Type = input.DispatchKeyEventTypeKeyDown
				case input.DispatchKeyEventTypeChar:
					down.Text, down.UnmodifiedText = k.Text, k.UnmodifiedText
				case input.DispatchKeyEventTypeKeyUp:
					for _, ev := range []input.DispatchKeyEventParams{down, *k} {
						if _, err := cdp.Call(ctx, tg, input.DispatchKeyEvent, ev); err != nil {
							return err
						}
					}
				}
			}
		}
		return nil
	})
}

// composerState is what the chat composer holds and what waits to be sent.
type composerState struct {
	Value   string   `json:"value"`
	Pending []string `json:"pending"`
}

func (p *browserPage) composer() composerState {
	p.t.Helper()
	var s composerState
	raw := eval[[]byte](p, `({value: document.querySelector("#message-input").value,
		pending: [...document.querySelectorAll("#outbox li.pending .pending-text")].map((n) => n.textContent)})`)
	if err := json.Unmarshal(raw, &s); err != nil {
		p.t.Fatalf("composer: %s: %v", raw, err)
	}
	return s
}

// texts returns the texts of the messages the page shows, in order.
func (p *browserPage) texts() []string {
	p.t.Helper()
	var out []string
	for _, m := range p.messages() {
		out = append(out, m.Text)
	}
	return out
}

// TestBrowserChatKeepsEveryKeystroke types messages faster than they are
// acknowledged: Enter takes only the text typed so far, an Enter while a
// message is on its way queues the next one, and everything arrives, in
// order, exactly as typed.
func TestBrowserChatKeepsEveryKeystroke(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	a := openChat(t, e, "lobby", pageOptions{})
	b := openChat(t, e, "lobby", pageOptions{})
	a.watchCSP()
	a.do(chromedp.Reload())
	a.waitForRoom()

	// Typed in one go, key by key, with Enter between them.
	a.do(typeKeys("#message-input", "spam 1\rspam 2\rspam 3\r"))
	burst := []string{"spam 1", "spam 2", "spam 3"}
	b.waitFor("the three messages", `document.querySelectorAll("#messages li.msg").length === 3`)
	a.waitFor("the outbox to empty", `document.querySelector("#outbox").hidden`)
	for _, p := range []*browserPage{a, b} {
		if got := p.texts(); !slices.Equal(got, burst) {
			t.Errorf("messages %q, want %q", got, burst)
		}
	}
	if c := a.composer(); c.Value != "" || len(c.Pending) != 0 {
		t.Errorf("after the burst the composer holds %+v, want it empty", c)
	}

	// Now with the first message held on its way (the page's publish
	// waits for the test), so the rest is typed while it is in flight.
	a.do(chromedp.Evaluate[chromedp.Void](`(() => {
		const publish = window.__ts.publish.bind(window.__ts);
		window.__gate = {held: [], open: false};
		window.__ts.publish = (g, d) => window.__gate.open ? publish(g, d)
			: new Promise((r) => window.__gate.held.push(r)).then(() => publish(g, d));
	})()`))
	a.do(typeKeys("#message-input", "first, held\r"))
	a.waitFor("the first message on its way", `window.__gate.held.length === 1`)
	a.do(typeKeys("#message-input", "second\rthird\rstill typ"))
	a.waitFor("three messages in the outbox", `document.querySelectorAll("#outbox li.pending").length === 3`)
	if c := a.composer(); c.Value != "still typ" || !slices.Equal(c.Pending, []string{"first, held", "second", "third"}) {
		t.Errorf("while the first is on its way: %+v", c)
	}
	a.do(chromedp.Evaluate[chromedp.Void](`window.__gate.open = true; window.__gate.held.splice(0).forEach((r) => r())`))
	all := append(burst, "first, held", "second", "third")
	b.waitFor("the held messages", `document.querySelectorAll("#messages li.msg").length === 6`)
	a.waitFor("the outbox to empty", `document.querySelector("#outbox").hidden`)
	if c := a.composer(); c.Value != "still typ" {
		t.Errorf("an acknowledgement changed the composer to %q, want what was typed since: %q", c.Value, "still typ")
	}
	a.do(typeKeys("#message-input", "ing\r"))
	all = append(all, "still typing")
	b.waitFor("the last message", `document.querySelectorAll("#messages li.msg").length === 7`)
	a.waitFor("the outbox to empty", `document.querySelector("#outbox").hidden`)
	for _, p := range []*browserPage{a, b} {
		if got := p.texts(); !slices.Equal(got, all) {
			t.Errorf("messages %q, want %q", got, all)
		}
	}
	if c := a.composer(); c.Value != "" || len(c.Pending) != 0 {
		t.Errorf("at the end the composer holds %+v, want it empty", c)
	}
	a.checkCSP()
	a.checkNoExceptions()
	b.checkNoExceptions()
}

// TestBrowserSignInErrorsTellTheTruth tries wrong, spent, expired and
// right codes from the page: each refusal shows the server's reason, and
// a new code can be asked for from the code step.
func TestBrowserSignInErrorsTellTheTruth(t *testing.T) {
	e, smtp := smtpEnv(t, progresstest.Embedded(t), withAuthConfig(func(c *auth.Config) { c.LoginsPerEmailIP = 100 }))
	p := openPage(t, e, pageOptions{})
	p.watchCSP()
	p.do(chromedp.Reload(), chromedp.WaitReady(chromedp.CSS(`#job-type option[value="steps"]`)))
	const email = "grace@example.com"
	// Every button is pressed from script once shown, as in
	// TestBrowserSignIn: the sign-in form changes as each step answers,
	// under a click at coordinates read before.
	const codeSubmit = `#code-step button[type=submit]`
	p.clickShownFromScript("#sign-in-toggle")
	p.do(
		chromedp.WaitVisible(chromedp.ID("sign-in-email")),
		chromedp.SetValue(chromedp.ID("sign-in-email"), email),
	)
	p.clickShownFromScript(`#email-step button[type=submit]`)
	p.do(chromedp.WaitVisible(chromedp.ID("sign-in-code")))
	code := authtest.Code(t, smtp.Next(t))
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	// try submits a code and waits for the error it gets.
	try := func(what, code, want string) {
		t.Helper()
		p.do(
			chromedp.Evaluate[chromedp.Void](`document.querySelector("#sign-in-error").hidden = true`),
			chromedp.SetValue(chromedp.ID("sign-in-code"), code),
		)
		p.clickShownFromScript(codeSubmit)
		p.waitFor(what, `!document.querySelector("#sign-in-error").hidden`)
		if got := p.eval0(`document.querySelector("#sign-in-error").textContent`); got != want {
			t.Errorf("%s: the page says %q, want %q", what, got, want)
		}
		if n := eval[int](p, `document.querySelector("#sign-in-error").children.length`); n != 0 {
			t.Errorf("%s: the error has %d elements, want text only", what, n)
		}
	}
	newCode := func() string {
		t.Helper()
		p.clickShownFromScript("#resend-code") // offered on the code step
		c := authtest.Code(t, smtp.Next(t))
		p.waitFor("the code step again", `document.querySelector("#sign-in-code").value === "" && !document.querySelector("#sign-in-code").disabled`)
		return c
	}

	for _, tc := range []struct{ left, want string }{
		{"4", "Wrong code: 4 tries left."},
		{"3", "Wrong code: 3 tries left."},
		{"2", "Wrong code: 2 tries left."},
		{"1", "Wrong code: 1 try left."},
		{"0", "Wrong code, and that was the last try: this code no longer works; request a new one."},
	} {
		try("a wrong code, "+tc.left+" tries left", wrong, tc.want)
	}
	try("the right code after five wrong ones", code, "Too many wrong tries: this code no longer works; request a new one.")

	code = newCode()
	// The code's key outlives it by one CodeTTL (to tell "expired" from
	// "never requested"): leaving it less than that is an expired code,
	// without waiting.
	ttl := 10 * time.Minute // auth.Config's default CodeTTL, used by this env
	if err := e.rdb.PExpire(t.Context(), "ts:code:"+email, ttl-time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	try("an expired code", code, "The code has expired; request a new one.")

	code = newCode()
	try("a wrong code for the new code", wrong, "Wrong code: 4 tries left.")
	p.do(chromedp.SetValue(chromedp.ID("sign-in-code"), code))
	p.clickShownFromScript(codeSubmit)
	p.waitAcross("signed in", fmt.Sprintf(`document.querySelector("#who").textContent === %q &&
		document.querySelector("#conn").dataset.state === "connected"`, email))
	try0 := p.eval0(`document.querySelector("#sign-in-form").hidden ? "hidden" : "shown"`)
	if try0 != "hidden" {
		t.Errorf("after signing in the sign-in form is %s", try0)
	}
	p.checkCSP()
	p.checkNoExceptions()
}

// toastLayout says how many toasts there are, how many are shown, and
// which of the elements they must never cover a shown one intersects.
type toastLayout struct {
	Total int      `json:"total"`
	Shown int      `json:"shown"`
	Hits  []string `json:"hits"`
}

func (p *browserPage) toastLayout() toastLayout {
	p.t.Helper()
	// Two frames: the toasts are placed in the next animation frame after
	// a change.
	p.do(chromedp.Evaluate[chromedp.Void](`new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))`, chromedp.EvalAwaitPromise))
	raw := eval[[]byte](p, `(() => {
		const region = document.querySelector("#toasts");
		const toasts = region ? [...region.querySelectorAll(".toast")] : [];
		const boxes = toasts.filter((t) => !region.hidden && !t.hidden).map((t) => t.getBoundingClientRect());
		const keep = {header: document.querySelector("header.top"), form: document.querySelector("#job-form"),
			submit: document.querySelector("#submit"), "first row": document.querySelector("#jobs > li")};
		const hits = [];
		for (const b of boxes) {
			if (b.width === 0 || b.height === 0) continue;
			for (const [name, el] of Object.entries(keep)) {
				const r = el && el.getBoundingClientRect();
				if (r && b.left < r.right && b.right > r.left && b.top < r.bottom && b.bottom > r.top) hits.push(name);
			}
		}
		return {total: toasts.length, shown: boxes.length, hits};
	})()`)
	var l toastLayout
	if err := json.Unmarshal(raw, &l); err != nil {
		p.t.Fatalf("toast layout: %s: %v", raw, err)
	}
	return l
}

// TestBrowserToastsStayOutOfTheWay: a notification about a job whose row
// is on screen flashes the row instead of a toast; other notifications are
// toasts in a bottom corner, at most 3, that never cover the header, the
// Run job button or the newest row (wherever the page is scrolled), pause
// while hovered or focused, and can be reached and dismissed by keyboard.
// On a desktop they cover no part of the form; on a phone, whose form
// fills the screen, they may cover the form but never its button.
func TestBrowserToastsStayOutOfTheWay(t *testing.T) {
	for _, size := range []struct{ width, height int64 }{{1280, 900}, {375, 812}} {
		t.Run(fmt.Sprintf("%dpx", size.width), func(t *testing.T) {
			e := newEnv(t, progresstest.Embedded(t))
			// The toasts must stay through the checks below on a slow
			// machine, and the last one must go because of Escape.
			p := openPage(t, e, pageOptions{width: size.width, height: size.height, toastStay: time.Hour})
			p.watchCSP()
			p.do(chromedp.Reload(), chromedp.WaitReady(chromedp.CSS(`#job-type option[value="steps"]`)))

			// A job with its row on screen: canceled, its row flashes.
			id := p.submitSteps(map[string]string{"steps": "1000", "interval_ms": "100"})
			p.waitState(id, "active")
			p.do(chromedp.Evaluate[chromedp.Void](row(id, "") + `.scrollIntoView({block: "center"})`))
			// From script, as in TestBrowserJobList: a coordinate click
			// missed the button now and then at 375 px, the row settling
			// as its first progress arrived.
			p.clickFromScript(fmt.Sprintf(`li[data-job-id=%q] button[data-action=cancel]`, id))
			p.waitState(id, "canceled")
			p.waitFor("the row to flash", row(id, "")+`.classList.contains("notified")`)
			if n := eval[int](p, `document.querySelectorAll("#toasts .toast").length`); n != 0 {
				t.Errorf("%d toasts for a job whose row is on screen", n)
			}

			// Four notifications from elsewhere (no row here: a job a program
			// submits gets its row at once, so an admin's notifications),
			// the three newest kept.
			p.do(chromedp.Evaluate[chromedp.Void](`window.scrollTo(0, 0)`))
			_, meBody := p.api("GET", "/api/me", nil)
			for i := range 4 {
				note := map[string]any{"user": meBody["id"], "title": fmt.Sprintf("Maintenance window %d", i+1), "body": "The queue pauses for a minute."}
				if status, body, _ := e.doAs(&http.Client{}, "POST", "/api/notify", note, "Authorization", "Bearer "+testAdminToken); status != http.StatusAccepted {
					t.Fatalf("notify: %d %v", status, body)
				}
			}
			// The job's submitted event, its notification and these four:
			// six seqs in the user's group; the three newest are toasts.
			p.waitFor("the notifications", fmt.Sprintf(`window.__ts.delivered("user:%s").length >= 6 &&
				document.querySelectorAll("#toasts .toast").length === 3`, meBody["id"]))
			for _, where := range []string{"top", "newest row at the bottom", "newest row at the top", "Run job at the bottom"} {
				switch where {
				case "newest row at the bottom":
					p.do(chromedp.Evaluate[chromedp.Void](`document.querySelector("#jobs > li").scrollIntoView({block: "end"})`))
				case "newest row at the top":
					p.do(chromedp.Evaluate[chromedp.Void](`document.querySelector("#jobs > li").scrollIntoView({block: "start"})`))
				case "Run job at the bottom":
					p.do(chromedp.Evaluate[chromedp.Void](`document.querySelector("#submit").scrollIntoView({block: "end"})`))
				}
				l := p.toastLayout()
				if size.width < 800 {
					// A phone's form can fill the screen: the toasts may
					// cover it, never its button.
					l.Hits = slices.DeleteFunc(l.Hits, func(h string) bool { return h == "form" })
				}
				if l.Total != 3 || len(l.Hits) > 0 {
					t.Errorf("%s: %d toasts, %d shown, covering %v; want 3, covering nothing", where, l.Total, l.Shown, l.Hits)
				}
				if l.Shown == 0 && where == "top" {
					t.Errorf("%s: no toast shown", where)
				}
			}
			p.do(chromedp.Evaluate[chromedp.Void](`document.querySelector("#jobs > li").scrollIntoView({block: "start"})`))
			if l := p.toastLayout(); l.Shown == 0 {
				t.Fatalf("no toast shown below the newest row: %+v", l)
			}

			// Hovering pauses the toasts; leaving starts them again.
			center := eval[[]float64](p, `(() => { const b = [...document.querySelectorAll("#toasts .toast")].findLast((t) => !t.hidden).getBoundingClientRect();
				return [b.left + b.width / 2, b.top + b.height / 2]; })()`)
			move := func(x, y float64) chromedp.Action[chromedp.Void] {
				return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
					_, err := cdp.Call(ctx, tg, input.DispatchMouseEvent, input.DispatchMouseEventParams{Type: input.DispatchMouseEventTypeMouseMoved, X: x, Y: y})
					return err
				})
			}
			p.do(move(center[0], center[1]))
			p.waitFor("the toasts to pause", `[...document.querySelectorAll("#toasts .toast")].every((t) => t.dataset.paused === "true")`)
			p.do(move(1, 1))
			p.waitFor("the toasts to run again", `[...document.querySelectorAll("#toasts .toast:not([hidden])")].every((t) => t.dataset.paused === "false")`)

			// Keyboard: Tab reaches the newest toast's controls (the toasts
			// come last on the page); focus pauses it, Escape dismisses it.
			reachable := eval[bool](p, `[...document.querySelectorAll("#toasts .toast:not([hidden])")].every((t) =>
				[...t.querySelectorAll("a, button")].every((c) => c.tabIndex >= 0 && !c.disabled && !c.closest("[inert]")))`)
			if !reachable {
				t.Error("a shown toast's link or button cannot be reached by keyboard")
			}
			p.do(chromedp.Evaluate[chromedp.Void](`[...document.querySelectorAll("#toasts .toast")].findLast((t) => !t.hidden).querySelector(".toast-close").focus()`))
			p.waitFor("the focused toast to pause", `document.activeElement.closest(".toast")?.dataset.paused === "true"`)
			p.do(chromedp.KeyEvent(kb.Escape))
			p.waitFor("the toast to go", `document.querySelectorAll("#toasts .toast").length === 2`)
			p.checkCSP()
			p.checkNoExceptions()
		})
	}
}
