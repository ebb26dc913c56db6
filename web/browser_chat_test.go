package web

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"taskstream/progress/progresstest"
	"taskstream/web/auth/authtest"
)

// The chat page and notifications in a real headless Chromium, as in
// browser_test.go: each person is a browser of their own (its own profile,
// so its own cookies and guest), and every wait is for a DOM condition.

// openChat opens /chat/ROOM in a new browser and waits until the page is
// connected and the room lists its user as present.
func openChat(t *testing.T, e *testEnv, room string, o pageOptions) *browserPage {
	t.Helper()
	p := openPage(t, e, o)
	p.do(chromedp.Navigate(e.http.URL + "/chat/" + room))
	p.waitForRoom()
	return p
}

func (p *browserPage) waitForRoom() {
	p.t.Helper()
	p.waitFor("the room", `document.querySelector("#conn").dataset.state === "connected" &&
		document.querySelector("#presence li.me") !== null`)
}

// setName changes the display name with the page's form and waits until
// the room shows it. Its buttons are pressed from script, once shown: a
// click at their coordinates lands on whatever is there at that instant,
// and the header's account line shifts as the page fills in the name and
// the connection's state.
func (p *browserPage) setName(name string) {
	p.t.Helper()
	p.clickShownFromScript("#rename-toggle")
	p.do(
		chromedp.WaitVisible(chromedp.ID("name-input")),
		chromedp.SetValue(chromedp.ID("name-input"), name),
	)
	p.clickShownFromScript("#name-save")
	p.waitFor("the new name", fmt.Sprintf(`document.querySelector("#my-name").textContent === %[1]q &&
		document.querySelector("#presence li.me .member-name")?.textContent === %[1]q &&
		document.querySelector("#conn").dataset.state === "connected"`, name))
}

// post sends a message with the composer and waits until it is in the
// list. Send is pressed from script, once shown, as in setName: the
// composer moves as the outbox above it shows and hides messages being
// sent.
func (p *browserPage) post(text string) {
	p.t.Helper()
	p.do(chromedp.SetValue(chromedp.ID("message-input"), text))
	p.clickShownFromScript("#send")
	p.waitForMessage("my message", "", text)
	p.waitFor("the composer to empty", `document.querySelector("#message-input").value === ""`)
}

// waitForMessage waits for a message with text (by author, when set).
func (p *browserPage) waitForMessage(what, author, text string) {
	p.t.Helper()
	p.waitFor(what, fmt.Sprintf(`[...document.querySelectorAll("#messages li.msg")].some((li) =>
		li.querySelector(".msg-text").textContent === %q && (%q === "" || li.querySelector(".msg-author").textContent === %[2]q))`, text, author))
}

type shownMessage struct {
	Seq    string `json:"seq"`
	Author string `json:"author"`
	Text   string `json:"text"`
}

// messages returns the messages the page shows, in order.
func (p *browserPage) messages() []shownMessage {
	p.t.Helper()
	raw := eval[[]byte](p, `[...document.querySelectorAll("#messages li.msg")].map((li) => ({seq: li.dataset.seq,
		author: li.querySelector(".msg-author").textContent, text: li.querySelector(".msg-text").textContent}))`)
	var out []shownMessage
	if err := json.Unmarshal(raw, &out); err != nil {
		p.t.Fatalf("messages: %s: %v", raw, err)
	}
	return out
}

// waitAcross is waitFor for a condition on the far side of a navigation
// the page starts by itself (a reload after signing in): an evaluation
// that the navigation interrupts is tried again.
func (p *browserPage) waitAcross(what, cond string) {
	p.t.Helper()
	p.poll(what, cond, func(error) bool { return true })
}

func TestBrowserChatTwoPeople(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	a := openChat(t, e, "lobby", pageOptions{})
	b := openChat(t, e, "lobby", pageOptions{})
	if a.eval0(`document.querySelector("#presence li.me").dataset.user`) == b.eval0(`document.querySelector("#presence li.me").dataset.user`) {
		t.Fatal("both browsers are the same guest")
	}
	a.setName("Alice")
	b.setName("Bob")

	a.post("hello from Alice")
	b.waitForMessage("Alice's message", "Alice", "hello from Alice")
	b.post("hi Alice, Bob here")
	a.waitForMessage("Bob's answer", "Bob", "hi Alice, Bob here")
	a.post("line one\nline two")
	b.waitForMessage("the two-line message", "Alice", "line one\nline two")

	for _, p := range []*browserPage{a, b} {
		p.waitFor("both in the presence list", `(() => { const names = [...document.querySelectorAll("#presence .member-name")].map((n) => n.textContent);
			return names.length === 2 && names.includes("Alice") && names.includes("Bob"); })()`)
	}
	// The renames show as one line each on the other side, not as a leave and a join.
	b.waitFor("Alice's rename", `[...document.querySelectorAll("#messages li.sys")].some((li) => /is now Alice$/.test(li.textContent))`)

	am, bm := a.messages(), b.messages()
	want := []string{"Alice: hello from Alice", "Bob: hi Alice, Bob here", "Alice: line one\nline two"}
	for _, got := range [][]shownMessage{am, bm} {
		var texts []string
		for _, m := range got {
			texts = append(texts, m.Author+": "+m.Text)
		}
		if !slices.Equal(texts, want) {
			t.Errorf("messages %q, want %q", texts, want)
		}
	}
	if !slices.Equal(am, bm) {
		t.Errorf("the pages disagree on the order: %v and %v", am, bm)
	}
	if n := eval[int](a, `document.querySelectorAll("#messages li.msg.mine").length`); n != 2 {
		t.Errorf("Alice's page marks %d messages as hers, want 2", n)
	}

	// Accessibility: labelled controls, and new messages go to a live region.
	unlabeled := eval[[]string](a, `[...document.querySelectorAll("input, textarea, select")]
		.filter((el) => el.labels.length === 0).map((el) => el.id || el.name)`)
	if len(unlabeled) > 0 {
		t.Errorf("controls without a label: %v", unlabeled)
	}
	if live := a.eval0(`document.querySelector("#messages").getAttribute("aria-live")`); live != "polite" {
		t.Errorf("the message list has aria-live %q", live)
	}

	// A latecomer gets the history, in the same order, and everyone sees them arrive.
	c := openChat(t, e, "lobby", pageOptions{})
	c.waitFor("the history", `document.querySelectorAll("#messages li.msg").length === 3`)
	if cm := c.messages(); !slices.Equal(cm, am) {
		t.Errorf("the latecomer sees %v, want %v", cm, am)
	}
	a.waitFor("the latecomer to join", `document.querySelectorAll("#presence .member").length === 3`)
	// The latecomer's list starts from its subscribed frame's users (no
	// list is in the history it replays) and adds its own join.
	c.waitFor("the members on the latecomer's page", `(() => { const names = [...document.querySelectorAll("#presence .member-name")].map((n) => n.textContent);
		return names.length === 3 && names.includes("Alice") && names.includes("Bob"); })()`)

	// An empty message is refused on the page; a too fast one by the server.
	c.do(chromedp.SetValue(chromedp.ID("message-input"), "   "))
	c.clickShownFromScript("#send")
	c.waitFor("the inline error", `!document.querySelector("#chat-error").hidden`)
	for _, p := range []*browserPage{a, b, c} {
		p.checkNoExceptions()
	}
}

func TestBrowserChatRateLimitShowsError(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withWebConfig(Config{ChatRate: 0.01, ChatBurst: 1}))
	a := openChat(t, e, "quiet", pageOptions{})
	a.post("the one message allowed")
	a.do(chromedp.SetValue(chromedp.ID("message-input"), "one too many"))
	a.clickShownFromScript("#send")
	a.waitFor("the rate limit error", `!document.querySelector("#chat-error").hidden &&
		document.querySelector("#chat-error").textContent.includes("too fast")`)
	if v := a.eval0(`document.querySelector("#message-input").value`); v != "one too many" {
		t.Errorf("the refused message was not kept in the composer: %q", v)
	}
	if n := eval[int](a, `document.querySelectorAll("#messages li.msg").length`); n != 1 {
		t.Errorf("%d messages shown, want 1", n)
	}
	a.checkNoExceptions()
}

func TestBrowserChatRendersTextNotHTML(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	a := openChat(t, e, "lobby", pageOptions{})
	b := openChat(t, e, "lobby", pageOptions{})
	const payload = `<img src=x onerror="window.__xss=1">`
	const name = `<img src=y onerror="window.__xss=2">`
	a.setName(name)
	a.post(payload)
	b.waitForMessage("the payload as text", name, payload)
	b.waitFor("the name as text in the presence list", fmt.Sprintf(`[...document.querySelectorAll("#presence .member-name")].some((n) => n.textContent === %q)`, name))
	for _, p := range []*browserPage{a, b} {
		if got := p.eval0(`[...document.querySelectorAll("#messages .msg-text")].map((n) => n.textContent).join("\n")`); !strings.Contains(got, "<img") {
			t.Errorf("the message text is %q, want the literal payload", got)
		}
		if n := eval[int](p, `document.querySelectorAll("img").length`); n != 0 {
			t.Errorf("the page has %d img elements", n)
		}
		if xss := p.eval0(`typeof window.__xss`); xss != "undefined" {
			t.Errorf("window.__xss is %s: the payload ran", xss)
		}
		p.checkNoExceptions()
	}
}

func TestBrowserChatJobNotification(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	// The toasts stay for longer than the test can run: on a slow machine
	// the page's 8 s could pass between a toast showing and the test
	// pressing its close button or its link, and a toast gone by itself
	// would pass "the toast to go" with a close button that does nothing.
	// Only the test's tabs set it: users keep the 8 s.
	keep := pageOptions{toastStay: time.Hour}
	a := openChat(t, e, "lobby", keep)
	b := openChat(t, e, "lobby", keep)
	status, job := a.api("POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]any{"steps": 3, "interval_ms": 50}})
	if status != 202 {
		t.Fatalf("submit from the page: %d %v", status, job)
	}
	id := job["id"].(string)
	a.waitFor("the toast", fmt.Sprintf(`[...document.querySelectorAll("#toasts .toast[role=status]")].some((t) =>
		t.querySelector(".toast-title").textContent.includes("completed") && t.querySelector("a.toast-link")?.getAttribute("href") === "/#job-%s")`, id))
	if n := eval[int](b, `document.querySelectorAll("#toasts .toast").length`); n != 0 {
		t.Errorf("B, who did not submit the job, got %d toasts", n)
	}

	// The toast can be dismissed: its close button, shown, pressed from
	// script. The toast is still sliding in and may be placed again as the
	// page changes under it, under a click at coordinates read before;
	// that toasts take the pointer is TestBrowserToastsStayOutOfTheWay's
	// hover check.
	a.clickShownFromScript(`#toasts .toast .toast-close`)
	a.waitFor("the toast to go", `document.querySelectorAll("#toasts .toast").length === 0`)

	// On the next load the notification is history: delivered, not shown.
	me := a.eval0(`document.querySelector("#presence li.me").dataset.user`)
	a.do(chromedp.Reload())
	a.waitForRoom()
	a.waitFor("the notification's replay", fmt.Sprintf(`(window.__ts.position("user:%s")?.seq || 0) >= 1`, me))
	if n := eval[int](a, `document.querySelectorAll("#toasts .toast").length`); n != 0 {
		t.Errorf("an old notification popped up again after a reload (%d toasts)", n)
	}

	// The link leads to the job on the index page.
	status, job2 := a.api("POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]any{"steps": 2, "interval_ms": 20}})
	if status != 202 {
		t.Fatalf("submit from the page: %d %v", status, job2)
	}
	id2 := job2["id"].(string)
	link := fmt.Sprintf(`#toasts a.toast-link[href="/#job-%s"]`, id2)
	a.waitFor("the second toast", fmt.Sprintf(`document.querySelector(%q) !== null`, link))
	a.clickShownFromScript(link) // from script, as the close button
	a.waitAcross("the job on the index page", fmt.Sprintf(`document.querySelector('li[data-job-id=%q]')?.classList.contains("linked") === true`, id2))
	a.checkNoExceptions()
	b.checkNoExceptions()
}

// TestBrowserSignIn signs in from the index page with a code from the
// mail, sees a job's notification there, and signs out.
func TestBrowserSignIn(t *testing.T) {
	e, smtp := smtpEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{})
	p.waitFor("the guest's name", `/^guest-[\w-]+ \(guest\)$/.test(document.querySelector("#who").textContent)`)
	if !eval[bool](p, `document.querySelector("#sign-out").hidden`) {
		t.Error("a guest is offered to sign out")
	}
	if href := p.eval0(`document.querySelector('a[href="/chat/lobby"]')?.getAttribute("href") || ""`); href == "" {
		t.Error("no link to the chat lobby")
	}

	// Every button is pressed from script once shown (Sign in only shows
	// when the page knows its user is a guest): a click at coordinates
	// lands on whatever is there at that instant, and the header and the
	// sign-in form change as each step answers.
	const emailSubmit, codeSubmit = `#email-step button[type=submit]`, `#code-step button[type=submit]`
	p.clickShownFromScript("#sign-in-toggle")
	p.do(
		chromedp.WaitVisible(chromedp.ID("sign-in-email")),
		chromedp.SetValue(chromedp.ID("sign-in-email"), "not-an-email"),
	)
	p.clickShownFromScript(emailSubmit)
	p.waitFor("the bad email error", `!document.querySelector("#sign-in-error").hidden`)
	p.do(chromedp.SetValue(chromedp.ID("sign-in-email"), "ada@example.com"))
	p.clickShownFromScript(emailSubmit)
	p.do(chromedp.WaitVisible(chromedp.ID("sign-in-code")))
	code := authtest.Code(t, smtp.Next(t))
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	p.do(chromedp.SetValue(chromedp.ID("sign-in-code"), wrong))
	p.clickShownFromScript(codeSubmit)
	p.waitFor("the wrong code error", `!document.querySelector("#sign-in-error").hidden &&
		document.querySelector("#sign-in-error").textContent.includes("code")`)
	p.do(chromedp.SetValue(chromedp.ID("sign-in-code"), code))
	p.clickShownFromScript(codeSubmit)
	p.waitAcross("signed in", `document.querySelector("#who").textContent === "ada@example.com" &&
		!document.querySelector("#sign-out").hidden && document.querySelector("#conn").dataset.state === "connected"`)

	// The signed-in user's group reaches the page: a job submitted by a
	// program joins the list (its submitted event), and its end's
	// notification flashes its row, on screen, instead of a toast
	// (TestBrowserToastsStayOutOfTheWay).
	status, job := p.api("POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]any{"steps": 3, "interval_ms": 20}})
	if status != 202 {
		t.Fatalf("submit from the page: %d %v", status, job)
	}
	id := job["id"].(string)
	p.waitFor("the row to flash", row(id, "")+`?.classList.contains("notified") === true`)

	p.clickShownFromScript("#sign-out")
	p.waitAcross("signed out", `/\(guest\)$/.test(document.querySelector("#who").textContent) &&
		document.querySelector("#conn").dataset.state === "connected"`)
	p.checkNoExceptions()
}

// eval0 returns a string expression's value.
func (p *browserPage) eval0(expr string) string {
	p.t.Helper()
	return eval[string](p, expr)
}

// TestBrowserChatScreenshots saves the chat page at desktop and phone
// width for a person to look at (with a toast, and with the name form
// open): SCREENSHOTS=1 go test -run ChatScreenshots ./web/
func TestBrowserChatScreenshots(t *testing.T) {
	if os.Getenv("SCREENSHOTS") != "1" {
		t.Skip("set SCREENSHOTS=1 to write /tmp/taskstream-chat-*.png")
	}
	e := newEnv(t, progresstest.Embedded(t))
	b := openChat(t, e, "lobby", pageOptions{})
	b.setName("Bob")
	a := openChat(t, e, "lobby", pageOptions{width: 390, height: 844})
	a.setName("Alice")
	a.post("Morning! Is the report job working for everyone today?")
	b.post("Yes, mine finished a minute ago.\nThe CSV had 2,000 rows.")
	a.post(`<img src=x onerror="alert(1)"> stays text`)
	b.post("https://example.com/a/very/long/link/that/must/wrap/on/a/phone/screen/without/scrolling/sideways")
	a.post("Great, thanks 👍")
	a.waitForMessage("the last one", "Alice", "Great, thanks 👍")
	shoot := func(p *browserPage, path string) {
		t.Helper()
		ctx, cancel := p.step()
		defer cancel()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", path)
	}
	shoot(a, "/tmp/taskstream-chat-phone.png")
	shoot(b, "/tmp/taskstream-chat-desktop.png")
	status, job := a.api("POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]any{"steps": 2, "interval_ms": 20}})
	if status != 202 {
		t.Fatalf("submit: %d %v", status, job)
	}
	a.waitFor("the toast, shown", `document.querySelector("#toasts .toast")?.getAnimations().every((an) => an.playState === "finished") === true`)
	shoot(a, "/tmp/taskstream-chat-phone-toast.png")
	a.do(chromedp.Click(chromedp.CSS(`#toasts .toast-close`))) // on a phone it covers the header
	a.do(chromedp.Click(chromedp.ID("rename-toggle")), chromedp.WaitVisible(chromedp.ID("name-input")),
		chromedp.SetValue(chromedp.ID("name-input"), " "), chromedp.Click(chromedp.ID("name-save")))
	a.waitFor("the name error", `!document.querySelector("#name-error").hidden`)
	shoot(a, "/tmp/taskstream-chat-phone-rename.png")
}
