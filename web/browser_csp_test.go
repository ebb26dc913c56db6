package web

import (
	"context"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"taskstream/progress/progresstest"
)

// Under the pages' Content-Security-Policy, Chromium runs every page with
// no violation at all, and their sockets connect over WebSocket
// (connect-src 'self' covers ws:// to the same host). An inline script
// added on purpose is blocked and reported, which shows the policy is
// enforced and the violation log works.
func TestBrowserPagesRunUnderCSP(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t))
	p := openPage(t, e, pageOptions{})
	// Collect violations from the start of every document from now on.
	p.do(chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: `
			window.__csp = [];
			document.addEventListener("securitypolicyviolation",
				(e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));`})
		return err
	}))
	paths := []string{"/", "/jobs/", "/chat/csp"}
	for i := 0; i < len(paths); i++ {
		path := paths[i]
		p.do(chromedp.Navigate(e.http.URL + path))
		p.waitFor("a WebSocket connection on "+path,
			`document.querySelector("#conn").dataset.state === "connected" && document.querySelector("#conn").textContent.includes("websocket")`)
		switch path {
		case "/":
			id := p.submitSteps(map[string]string{"steps": "3", "interval_ms": "10"})
			p.waitState(id, "completed")
			paths[1] += id // the job's page, with its chart and tables
		case paths[1]:
			p.waitFor("the job's history", `document.querySelector("#timeline li[data-state=completed]") !== null`)
		}
		if v := eval[[]string](p, `window.__csp`); len(v) > 0 {
			t.Fatalf("%s: CSP violations: %s", path, strings.Join(v, "; "))
		}
	}
	got := eval[bool](p, `(() => {
		const s = document.createElement("script");
		s.textContent = "window.__inlineRan = true";
		document.body.append(s);
		return window.__inlineRan === true;
	})()`)
	if got {
		t.Fatal("an inline script ran: the CSP is not enforced")
	}
	p.waitFor("the blocked inline script to be reported", `window.__csp.some((v) => v.startsWith("script-src"))`)
	p.checkNoExceptions()
}
