package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"taskstream/progress/progresstest"
	"taskstream/web/auth"
	"taskstream/web/auth/authtest"
	"taskstream/wire"
)

// signIn runs the whole email sign-in for client through a real SMTP
// listener and returns the user.
func (e *testEnv) signIn(client *http.Client, smtp *authtest.SMTPServer, email string) map[string]any {
	e.t.Helper()
	status, body, _ := e.doAs(client, "POST", "/api/auth/code", map[string]string{"email": email})
	if status != http.StatusAccepted {
		e.t.Fatalf("request code: %d %v", status, body)
	}
	code := authtest.Code(e.t, smtp.Next(e.t))
	status, body, _ = e.doAs(client, "POST", "/api/auth/login", map[string]string{"email": email, "code": code})
	if status != http.StatusOK {
		e.t.Fatalf("login: %d %v", status, body)
	}
	return body
}

func smtpEnv(t *testing.T, srv *progresstest.Server, opts ...envOption) (*testEnv, *authtest.SMTPServer) {
	smtp := authtest.NewSMTPServer(t)
	mailer := auth.SMTPMailer{Host: smtp.Host, Port: smtp.Port, From: "taskstream@test", TLS: "none"}
	return newEnv(t, srv, append(opts, withMailer(mailer))...), smtp
}

func errCode(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// A guest signs in by email and code: the mail goes through SMTP, the
// code works once, the guest's jobs carry over, and logout closes the
// session's sockets with 1008.
func TestSignInKeepsGuestJobsAndLogoutClosesSockets(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e, smtp := smtpEnv(t, srv, withoutWorker())
		_, me, _ := e.do("GET", "/api/me", nil)
		if me["guest"] != true {
			t.Fatalf("first visit: %v, want a guest", me)
		}
		jobID := e.submit("steps", map[string]any{"steps": 2})

		status, body, _ := e.do("POST", "/api/auth/code", map[string]string{"email": "Ada@Example.com"})
		if status != http.StatusAccepted {
			t.Fatalf("request code: %d %v", status, body)
		}
		mail := smtp.Next(t)
		if len(mail.To) != 1 || mail.To[0] != "ada@example.com" || !strings.Contains(mail.Data, "Subject: Your taskstream sign-in code") {
			t.Fatalf("mail %+v", mail)
		}
		code := authtest.Code(t, mail)
		if status, body, _ := e.do("POST", "/api/auth/login", map[string]string{"email": "ada@example.com", "code": "000000x"}); status != 400 || errCode(body) != CodeBadRequest ||
			body["error"].(map[string]any)["message"] != "wrong code: 4 tries left" {
			t.Fatalf("wrong code: %d %v", status, body)
		}
		status, user, _ := e.do("POST", "/api/auth/login", map[string]string{"email": "ada@example.com", "code": code})
		if status != http.StatusOK || user["guest"] != false || user["email"] != "ada@example.com" || user["name"] != "ada" {
			t.Fatalf("login: %d %v", status, user)
		}
		if status, _, _ := e.do("POST", "/api/auth/login", map[string]string{"email": "ada@example.com", "code": code}); status != 400 {
			t.Fatalf("a code works once; reuse got %d", status)
		}
		_, list, _ := e.do("GET", "/api/jobs", nil)
		jobs := list["jobs"].([]any)
		if len(jobs) != 1 || jobs[0].(map[string]any)["id"] != jobID {
			t.Fatalf("after sign-in the guest's job should be listed: %v", list)
		}
		if status, _, _ := e.do("GET", "/api/jobs/"+jobID, nil); status != http.StatusOK {
			t.Fatalf("the carried-over job: %d", status)
		}

		c := e.dial()
		c.send(map[string]any{"op": "subscribe", "group": "user:" + user["id"].(string)})
		if f := c.read(); f.Type != "subscribed" {
			t.Fatalf("got %+v", f)
		}
		if status, _, _ := e.do("POST", "/api/auth/logout", nil); status != http.StatusNoContent {
			t.Fatalf("logout: %d", status)
		}
		if code := c.closeCode(); code != closePolicy {
			t.Fatalf("socket of the ended session closed with %d, want 1008", code)
		}
		_, after, _ := e.do("GET", "/api/me", nil)
		if after["guest"] != true || after["id"] == user["id"] {
			t.Fatalf("after logout: %v, want a new guest", after)
		}
	})
}

func TestSignInLimits(t *testing.T) {
	e, smtp := smtpEnv(t, progresstest.Embedded(t), withoutWorker())
	// Wrong codes end the code after five attempts.
	e.do("POST", "/api/auth/code", map[string]string{"email": "bob@example.com"})
	code := authtest.Code(t, smtp.Next(t))
	wrong := "000000"
	if code == wrong {
		wrong = "111111"
	}
	for range 5 {
		e.do("POST", "/api/auth/login", map[string]string{"email": "bob@example.com", "code": wrong})
	}
	if status, _, _ := e.do("POST", "/api/auth/login", map[string]string{"email": "bob@example.com", "code": code}); status != 400 {
		t.Fatalf("the right code after five wrong ones: %d, want 400", status)
	}
	// Codes per email are limited; the answer says when to retry.
	var status int
	var body map[string]any
	var header http.Header
	for range 5 {
		status, body, header = e.do("POST", "/api/auth/code", map[string]string{"email": "bob@example.com"})
	}
	if status != http.StatusTooManyRequests || errCode(body) != CodeRateLimited || header.Get("Retry-After") == "" {
		t.Fatalf("sixth code request: %d %v %v", status, body, header)
	}
	// Codes expire after 10 minutes.
	e.do("POST", "/api/auth/code", map[string]string{"email": "cy@example.com"})
	code = authtest.Code(t, smtp.Next(t))
	e.redis.Miniredis().FastForward(11 * time.Minute)
	if status, _, _ := e.do("POST", "/api/auth/login", map[string]string{"email": "cy@example.com", "code": code}); status != 400 {
		t.Fatalf("an expired code: %d, want 400", status)
	}
	// Not an email.
	if status, body, _ := e.do("POST", "/api/auth/code", map[string]string{"email": "not an email"}); status != 400 || errCode(body) != CodeBadRequest {
		t.Fatalf("bad email: %d %v", status, body)
	}
	// Sign-in attempts for one email are limited per client IP, and only
	// there: the same email from another address is not refused.
	e.redis.Miniredis().FastForward(time.Hour) // fresh buckets
	for i := range 10 {
		if status, body, _ := e.do("POST", "/api/auth/login", map[string]string{"email": "dee@example.com", "code": "x"}); status != http.StatusBadRequest {
			t.Fatalf("attempt %d within the limit: %d %v", i+1, status, body)
		}
	}
	status, body, header = e.do("POST", "/api/auth/login", map[string]string{"email": "dee@example.com", "code": "x"})
	if status != http.StatusTooManyRequests || header.Get("Retry-After") == "" || !strings.Contains(body["error"].(map[string]any)["message"].(string), "for this email from your address") {
		t.Fatalf("the 11th attempt for one email from one IP: %d %v %v", status, body, header)
	}
	if status, body, _ := e.doAs(clientFrom("127.0.0.2", true), "POST", "/api/auth/login", map[string]string{"email": "dee@example.com", "code": "x"}); status != http.StatusBadRequest {
		t.Fatalf("the same email from another IP: %d %v, want 400 (a wrong code, not a lockout)", status, body)
	}
}

// Tokens work on HTTP and the socket; a revoked one stops working at once
// and a live socket using it is closed within a few seconds.
func TestTokens(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e, smtp := smtpEnv(t, srv, withoutWorker())
		if status, body, _ := e.do("POST", "/api/tokens", nil); status != http.StatusForbidden {
			t.Fatalf("a guest's token: %d %v", status, body)
		}
		user := e.signIn(e.client, smtp, "tok@example.com")
		status, tok, _ := e.do("POST", "/api/tokens", nil)
		if status != http.StatusCreated || !strings.HasPrefix(tok["token"].(string), "tsk_") {
			t.Fatalf("create token: %d %v", status, tok)
		}
		bearer := "Bearer " + tok["token"].(string)
		program := &http.Client{} // no cookies: only the token
		status, me, _ := e.doAs(program, "GET", "/api/me", nil, "Authorization", bearer)
		if status != http.StatusOK || me["id"] != user["id"] {
			t.Fatalf("token on HTTP: %d %v", status, me)
		}
		jobID := e.submit("steps", map[string]any{"steps": 2})
		if status, _, _ := e.doAs(program, "GET", "/api/jobs/"+jobID, nil, "Authorization", bearer); status != http.StatusOK {
			t.Fatalf("the user's job with the token: %d", status)
		}
		c := dialWS(t, "ws"+strings.TrimPrefix(e.http.URL, "http")+"/ws", "Authorization", bearer)
		c.send(map[string]any{"op": "subscribe", "group": "job:" + jobID})
		if f := c.read(); f.Type != "subscribed" {
			t.Fatalf("token on the socket: %+v", f)
		}
		_, list, _ := e.do("GET", "/api/tokens", nil)
		if n := len(list["tokens"].([]any)); n != 1 {
			t.Fatalf("%d tokens listed", n)
		}
		if status, _, _ := e.do("DELETE", "/api/tokens/"+tok["id"].(string), nil); status != http.StatusNoContent {
			t.Fatalf("revoke: %d", status)
		}
		if status, body, _ := e.doAs(program, "GET", "/api/me", nil, "Authorization", bearer); status != http.StatusUnauthorized || errCode(body) != CodeUnauthenticated {
			t.Fatalf("revoked token: %d %v", status, body)
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			_, _, err := c.conn.ReadMessage()
			if err == nil {
				continue
			}
			if code := closeCodeOf(err); code != closePolicy {
				t.Fatalf("the revoked token's socket: %v, want close 1008 within 5 s", err)
			}
			break
		}
		if status, _, _ := e.do("DELETE", "/api/tokens/"+tok["id"].(string), nil); status != http.StatusNotFound {
			t.Fatalf("revoking twice: %d, want 404", status)
		}
	})
}

// Who may see what: every job route and every group kind, for the owner
// and for another guest.
func TestAuthorization(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		jobID := e.submit("report", map[string]any{"rows": 10})
		eventually(t, "the report to complete", func() bool {
			_, j, _ := e.do("GET", "/api/jobs/"+jobID, nil)
			return j["state"] == "completed"
		})
		owner := e.me(e.client)
		other := e.newBrowser()
		otherID := e.me(other)
		routes := []struct{ method, path string }{
			{"GET", "/api/jobs/" + jobID},
			{"POST", "/api/jobs/" + jobID + "/cancel"},
			{"GET", "/api/jobs/" + jobID + "/artifact"},
			{"GET", "/api/jobs/" + jobID + "/events?wait=0"},
			{"GET", "/api/groups/job%3A" + jobID + "/events?wait=0"},
			{"GET", "/api/groups/user%3A" + owner + "/events?wait=0"},
		}
		for _, rt := range routes {
			if status, body, _ := e.doAs(other, rt.method, rt.path, nil); status != http.StatusForbidden || errCode(body) != CodeForbidden {
				t.Errorf("another guest: %s %s = %d %v, want 403 forbidden", rt.method, rt.path, status, body)
			}
		}
		for _, rt := range routes[:4] {
			if rt.method == "POST" {
				continue // the job has finished: cancel would be 409
			}
			if status, _, _ := e.do(rt.method, rt.path, nil); status != http.StatusOK {
				t.Errorf("the owner: %s %s = %d, want 200", rt.method, rt.path, status)
			}
		}
		if _, list, _ := e.doAs(other, "GET", "/api/jobs", nil); len(list["jobs"].([]any)) != 0 {
			t.Errorf("another guest lists %v", list)
		}
		groups := []struct {
			group string
			code  string // "" when allowed
		}{
			{"job:" + jobID, CodeForbidden},
			{"job:doesnotexist", CodeNotFound},
			{"user:" + owner, CodeForbidden},
			{"user:" + otherID, ""},
			{"chat:lobby", ""},
			{"dashboard", CodeForbidden}, // guests
		}
		c := e.dialAs(other)
		for _, g := range groups {
			c.send(map[string]any{"op": "subscribe", "group": g.group, "ref": g.group})
			f := c.read()
			for f.Type == "event" { // presence events of the chat room
				f = c.read()
			}
			switch {
			case g.code == "" && f.Type != "subscribed":
				t.Errorf("subscribe %s: %+v, want subscribed", g.group, f)
			case g.code != "" && (f.Type != "error" || f.Code != g.code):
				t.Errorf("subscribe %s: %+v, want error %s", g.group, f, g.code)
			}
		}
	})
}

// Browsers' state-changing requests need a same-origin Origin.
func TestCrossSiteWritesRefused(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker())
	body := map[string]any{"type": "steps", "params": map[string]int{"steps": 1}}
	cases := []struct {
		name   string
		header []string
		status int
	}{
		{"foreign origin", []string{"Origin", "http://evil.example"}, 403},
		{"cross-site fetch without origin", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"same origin", []string{"Origin", e.http.URL}, 202},
		{"a program (no Origin)", nil, 202},
	}
	for _, tc := range cases {
		if status, resp, _ := e.do("POST", "/api/jobs", body, tc.header...); status != tc.status {
			t.Errorf("%s: %d %v, want %d", tc.name, status, resp, tc.status)
		}
	}
}

// chatFrames reads frames until a message with text arrives, returning the
// messages, joins and leaves seen on the way.
func readChat(c *wsClient, untilText string) []frame {
	return c.readUntil(func(f frame) bool {
		if f.Event != "message" {
			return false
		}
		var m chatMessage
		_ = json.Unmarshal(f.Data, &m)
		return m.Text == untilText
	})
}

func messages(frames []frame) []string {
	var out []string
	for _, f := range frames {
		if f.Event == "message" {
			var m chatMessage
			_ = json.Unmarshal(f.Data, &m)
			out = append(out, m.User.Name+": "+m.Text)
		}
	}
	return out
}

// Two people in a room see each other's messages in order; a late joiner
// gets the history; text is stored as sent, never as markup.
func TestChatRoom(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		alice, bob := e.newBrowser(), e.newBrowser()
		e.doAs(alice, "POST", "/api/me", map[string]string{"name": "alice"})
		e.doAs(bob, "POST", "/api/me", map[string]string{"name": "bob"})
		a, b := e.dialAs(alice), e.dialAs(bob)
		for _, c := range []*wsClient{a, b} {
			c.send(map[string]any{"op": "subscribe", "group": "chat:room1"})
		}
		// Each waits for its reply, so the order of the three is known.
		var seen [2][]frame
		for i, c := range []*wsClient{a, b} {
			text := []string{"hi bob", "hi alice"}[i]
			c.send(map[string]any{"op": "publish", "group": "chat:room1", "data": map[string]string{"text": text}, "ref": i})
			seen[i] = c.readUntil(func(f frame) bool { return f.Type == "published" })
		}
		xss := `<img src=x onerror=alert(1)>`
		if status, body, _ := e.doAs(alice, "POST", "/api/groups/chat%3Aroom1/messages", map[string]string{"text": xss}); status != http.StatusAccepted {
			t.Fatalf("post over HTTP: %d %v", status, body)
		}
		gotA := messages(append(seen[0], readChat(a, xss)...))
		gotB := messages(append(seen[1], readChat(b, xss)...))
		if strings.Join(gotA, "|") != strings.Join(gotB, "|") || len(gotA) != 3 || gotA[2] != "alice: "+xss {
			t.Fatalf("alice saw %q, bob saw %q", gotA, gotB)
		}
		late := e.dialAs(e.newBrowser())
		late.send(map[string]any{"op": "subscribe", "group": "chat:room1"})
		if got := messages(readChat(late, xss)); strings.Join(got, "|") != strings.Join(gotA, "|") {
			t.Fatalf("the late joiner's history %q, want %q", got, gotA)
		}
		long := strings.Repeat("é", 2001)
		a.send(map[string]any{"op": "publish", "group": "chat:room1", "data": map[string]string{"text": long}, "ref": "long"})
		f := a.readUntil(func(f frame) bool { return f.Type == "error" })
		if last := f[len(f)-1]; last.Code != CodeBadRequest || string(last.Ref) != `"long"` {
			t.Fatalf("2001 characters: %+v", last)
		}
	})
}

func TestChatRateLimit(t *testing.T) {
	progresstest.ForEach(t, testChatRateLimit)
}

func testChatRateLimit(t *testing.T, srv *progresstest.Server) {
	e := newEnv(t, srv, withoutWorker(), withWebConfig(Config{ChatRate: 0.01, ChatBurst: 3}))
	for i := range 3 {
		if status, body, _ := e.do("POST", "/api/groups/chat%3Afast/messages", map[string]string{"text": "m"}); status != http.StatusAccepted {
			t.Fatalf("message %d within the burst: %d %v", i, status, body)
		}
	}
	status, body, header := e.do("POST", "/api/groups/chat%3Afast/messages", map[string]string{"text": "m"})
	if status != http.StatusTooManyRequests || errCode(body) != CodeRateLimited || header.Get("Retry-After") == "" {
		t.Fatalf("over the burst: %d %v %v", status, body, header)
	}
	c := e.dial()
	c.send(map[string]any{"op": "publish", "group": "chat:fast", "data": map[string]string{"text": "m"}, "ref": 9})
	if f := c.read(); f.Type != "error" || f.Code != CodeRateLimited {
		t.Fatalf("over the burst on the socket: %+v", f)
	}
	// Another user is not affected.
	if status, _, _ := e.doAs(e.newBrowser(), "POST", "/api/groups/chat%3Afast/messages", map[string]string{"text": "m"}); status != http.StatusAccepted {
		t.Fatalf("another user: %d", status)
	}
	// The limit is the user's, not the replica's: a second API server on
	// the same Redis refuses the same user too.
	other := New(Deps{Jobs: e.jobs, Hub: e.hub, Log: e.log, Auth: e.auth, Presence: e.pres}, Config{ChatRate: 0.01, ChatBurst: 3})
	t.Cleanup(func() { _ = other.Shutdown(context.Background()) })
	replica := httptest.NewServer(other)
	t.Cleanup(replica.Close)
	req, _ := http.NewRequest("POST", replica.URL+"/api/groups/chat%3Afast/messages", strings.NewReader(`{"text":"m"}`))
	req.Header.Set("Content-Type", "application/json")
	for _, c := range e.client.Jar.Cookies(mustURL(t, e.http.URL)) {
		req.AddCookie(c)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("the same user on another replica: %d, want 429", res.StatusCode)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// roomView is a chat room's member list as a client keeps it: the users
// of its subscribed frame, then each join, leave and rename applied as a
// set operation.
type roomView map[string]string // id → name

// apply updates the view with f and reports whether f was a subscribed
// frame or a presence event.
func (v roomView) apply(t *testing.T, f frame) bool {
	t.Helper()
	if f.Type == "subscribed" {
		clear(v)
		for _, u := range f.Users {
			v[u.ID] = u.Name
		}
		return true
	}
	var d struct{ User wire.Member }
	switch f.Event {
	case wire.EventJoin, wire.EventLeave, wire.EventRename:
		if err := json.Unmarshal(f.Data, &d); err != nil {
			t.Fatalf("%s data %s: %v", f.Event, f.Data, err)
		}
	case wire.EventPresence:
		t.Fatalf("a full presence list was sent: %s", f.Data)
	default:
		return false
	}
	switch f.Event {
	case wire.EventJoin:
		v[d.User.ID] = d.User.Name
	case wire.EventLeave:
		delete(v, d.User.ID)
	case wire.EventRename:
		if _, ok := v[d.User.ID]; ok {
			v[d.User.ID] = d.User.Name
		}
	}
	return true
}

// names returns the view's names, sorted and comma-joined.
func (v roomView) names() string {
	var names []string
	for _, n := range v {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

// waitView reads c's frames into v until its names are want.
func (v roomView) wait(t *testing.T, c *wsClient, want string) {
	t.Helper()
	for v.names() != want {
		v.apply(t, c.read())
	}
}

// A user with two tabs counts once; join and leave follow the first tab in
// and the last tab out; a late subscriber finds the members in its
// subscribed frame, and the room's history holds one join and one leave
// per user, no list.
func TestPresenceCountsUsersOnce(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		alice, bob := e.newBrowser(), e.newBrowser()
		e.doAs(alice, "POST", "/api/me", map[string]string{"name": "alice"})
		e.doAs(bob, "POST", "/api/me", map[string]string{"name": "bob"})
		watcher := e.dialAs(bob)
		watcher.send(map[string]any{"op": "subscribe", "group": "chat:p"})
		view := roomView{}
		if f := watcher.read(); f.Type != "subscribed" || f.Users == nil {
			t.Fatalf("subscribed %+v, want a users list", f)
		} else {
			view.apply(t, f)
		}
		view.wait(t, watcher, "bob")
		tab1, tab2 := e.dialAs(alice), e.dialAs(alice)
		tab1.send(map[string]any{"op": "subscribe", "group": "chat:p"})
		if f := tab1.read(); f.Type != "subscribed" || len(f.Users) != 1 || f.Users[0].Name != "bob" {
			t.Fatalf("the latecomer's subscribed frame %+v, want bob in its users", f)
		}
		view.wait(t, watcher, "alice,bob")
		tab2.send(map[string]any{"op": "subscribe", "group": "chat:p"})
		if f := tab2.read(); f.Type != "subscribed" || len(f.Users) != 2 {
			t.Fatalf("tab2: %+v, want alice and bob in its users", f)
		}
		_ = tab1.conn.Close()
		eventually(t, "tab1 gone", func() bool { return e.web.ConnCount() == 2 })
		if err := e.pres.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		list, err := e.pres.List(t.Context(), "chat:p")
		if err != nil || len(list) != 2 {
			t.Fatalf("presence with one of alice's tabs open: %v %v", list, err)
		}
		_ = tab2.conn.Close()
		view.wait(t, watcher, "bob")
		snap, err := e.log.Read(t.Context(), "chat:p", 0)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, ev := range snap.Events {
			names = append(names, ev.Name)
		}
		if got := strings.Join(names, ","); got != "join,join,leave" {
			t.Fatalf("history %s, want bob's and alice's joins and alice's leave", got)
		}
	})
}

// An admin pushes a notification to a user, who gets it on their socket;
// a finished job notifies its owner the same way.
func TestNotifications(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		me := e.me(e.client)
		c := e.dial()
		c.send(map[string]any{"op": "subscribe", "group": "user:" + me})
		if f := c.read(); f.Type != "subscribed" {
			t.Fatalf("got %+v", f)
		}
		note := map[string]string{"user": me, "title": "Hello", "body": "from the admin"}
		if status, _, _ := e.do("POST", "/api/notify", note); status != http.StatusForbidden {
			t.Fatalf("notify without admin token: %d", status)
		}
		if status, body, _ := e.doAs(&http.Client{}, "POST", "/api/notify", note, "Authorization", "Bearer "+testAdminToken); status != http.StatusAccepted {
			t.Fatalf("admin notify: %d %v", status, body)
		}
		f := c.read()
		if f.Event != "notification" || !strings.Contains(string(f.Data), `"title":"Hello"`) {
			t.Fatalf("got %+v", f)
		}
		jobID := e.submit("steps", map[string]any{"steps": 2, "interval_ms": 10})
		// First the submission, so every tab lists the job; then its end.
		f = c.read()
		if f.Event != wire.EventSubmitted || !strings.Contains(string(f.Data), `"id":"`+jobID+`"`) {
			t.Fatalf("submitted event %+v %s", f, f.Data)
		}
		f = c.read()
		if f.Event != "notification" || !strings.Contains(string(f.Data), jobID) || !strings.Contains(string(f.Data), "completed") {
			t.Fatalf("job notification %+v %s", f, f.Data)
		}
	})
}

// A socket that floods frames gets rate_limited errors for the excess and
// stays usable once it slows down.
func TestSocketFrameFlood(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker(), withWebConfig(Config{FrameRate: 0.5, FrameBurst: 5}))
	c := e.dial()
	for i := range 8 {
		c.send(map[string]any{"op": "ping", "ref": i})
	}
	var pongs, limited int
	for range 8 {
		switch f := c.read(); f.Type {
		case "pong":
			pongs++
		case "error":
			if f.Code != CodeRateLimited {
				t.Fatalf("got %+v", f)
			}
			limited++
		}
	}
	if pongs != 5 || limited != 3 {
		t.Fatalf("%d pongs and %d rate_limited errors, want 5 and 3", pongs, limited)
	}
}

// A rename reaches the room at once (a "rename" event that renames the
// member), and later messages from a socket opened before it carry the
// new name.
func TestChatRename(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		alice := e.newBrowser()
		e.doAs(alice, "POST", "/api/me", map[string]string{"name": "alice"})
		c := e.dialAs(alice)
		c.send(map[string]any{"op": "subscribe", "group": "chat:names"})
		view := roomView{}
		view.wait(t, c, "alice")
		if status, _, _ := e.doAs(alice, "POST", "/api/me", map[string]string{"name": "Alice Liddell"}); status != http.StatusOK {
			t.Fatalf("rename: %d", status)
		}
		fs := c.readUntil(func(f frame) bool { return f.Event == "rename" })
		rename := fs[len(fs)-1]
		if !strings.Contains(string(rename.Data), `"old":"alice"`) || !strings.Contains(string(rename.Data), `"name":"Alice Liddell"`) {
			t.Fatalf("rename event %s", rename.Data)
		}
		for _, f := range fs {
			view.apply(t, f)
		}
		if got := view.names(); got != "Alice Liddell" {
			t.Fatalf("members after rename: %v", got)
		}
		c.send(map[string]any{"op": "publish", "group": "chat:names", "data": map[string]string{"text": "new me"}})
		if got := messages(readChat(c, "new me")); got[len(got)-1] != "Alice Liddell: new me" {
			t.Fatalf("message after rename: %v", got)
		}
	})
}

// The client IP that per-IP limits count: chi's ClientIPFromXFF with
// TRUSTED_PROXIES, the peer without; where chi finds none (garbage in the
// chain, or nothing but proxies) the peer counts.
func TestClientIP(t *testing.T) {
	proxied := &Server{cfg: Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}}
	direct := &Server{}
	cases := []struct {
		name              string
		s                 *Server
		remote, xff, want string
	}{
		{"no proxy", proxied, "203.0.113.9:5000", "", "203.0.113.9"},
		{"untrusted peer's header is ignored", proxied, "203.0.113.9:5000", "198.51.100.1", "203.0.113.9"},
		{"trusted proxy", proxied, "10.0.0.2:80", "198.51.100.1", "198.51.100.1"},
		{"spoofed entries before the proxy's are skipped", proxied, "10.0.0.2:80", "1.2.3.4, 198.51.100.1", "198.51.100.1"},
		{"chain of trusted proxies", proxied, "10.0.0.2:80", "198.51.100.1, 10.0.0.7", "198.51.100.1"},
		{"v4-mapped entry folds to v4", proxied, "10.0.0.2:80", "::ffff:198.51.100.1", "198.51.100.1"},
		{"mapped proxy address cannot pose as a client", proxied, "10.0.0.2:80", "198.51.100.1, ::ffff:10.0.0.7", "198.51.100.1"},
		{"only proxies: the peer counts", proxied, "10.0.0.2:80", "10.0.0.7", "10.0.0.2"},
		{"garbage hop: the peer counts", proxied, "10.0.0.2:80", "not-an-ip", "10.0.0.2"},
		{"no TRUSTED_PROXIES: the header is ignored", direct, "203.0.113.9:5000", "198.51.100.1", "203.0.113.9"},
		{"no TRUSTED_PROXIES, IPv6 peer", direct, "[2001:db8::1]:5000", "", "2001:db8::1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got string
			h := tc.s.withClientIP(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { got = clientIPOf(r.Context()) }))
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = tc.remote
			if tc.xff != "" {
				r.Header.Set("X-Forwarded-For", tc.xff)
			}
			h.ServeHTTP(httptest.NewRecorder(), r)
			if got != tc.want {
				t.Errorf("%q, want %q", got, tc.want)
			}
		})
	}
}

// A guest stored by a client that never sends its cookie back (a script
// without a cookie jar) is gone after a day; one whose cookie comes back
// keeps the full session TTL.
func TestUnusedGuestsExpire(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker())
	name := map[string]string{"name": "n"}
	returning := e.newBrowser()
	_, u, _ := e.doAs(returning, "POST", "/api/me", name) // stores the guest
	id := u["id"].(string)
	e.doAs(returning, "GET", "/api/me", nil)                      // the cookie comes back
	_, once, _ := e.doAs(&http.Client{}, "POST", "/api/me", name) // no jar: never comes back
	oneShot := once["id"].(string)
	if !e.stored(id) || !e.stored(oneShot) {
		t.Fatal("renaming did not store the guests")
	}
	e.redis.Miniredis().FastForward(25 * time.Hour)
	if got := e.me(returning); got != id {
		t.Fatalf("the returning guest became %s, want %s", got, id)
	}
	if !e.stored(id) {
		t.Fatal("the returning guest is no longer stored")
	}
	if e.stored(oneShot) {
		t.Fatal("a guest whose cookie never came back is still stored after a day")
	}
}

// Revoking a token ends its SSE stream too, not only its sockets.
func TestRevokedTokenEndsSSE(t *testing.T) {
	e, smtp := smtpEnv(t, progresstest.Embedded(t), withoutWorker())
	user := e.signIn(e.client, smtp, "sse@example.com")
	_, tok, _ := e.do("POST", "/api/tokens", nil)
	req, _ := http.NewRequest("GET", e.http.URL+"/api/groups/user%3A"+user["id"].(string)+"/events", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", "Bearer "+tok["token"].(string))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, res.Body); ended <- err }()
	eventually(t, "the stream to subscribe", func() bool { return e.hub.Stats().Subscribers == 1 })
	if status, _, _ := e.do("DELETE", "/api/tokens/"+tok["id"].(string), nil); status != http.StatusNoContent {
		t.Fatalf("revoke: %d", status)
	}
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("the stream ended with %v, want a clean end", err)
		}
	case <-ctx.Done():
		t.Fatal("the revoked token's SSE stream is still open")
	}
}

func TestJobSubmitRateLimit(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker(), withWebConfig(Config{JobRate: 0.01, JobBurst: 2}))
	body := map[string]any{"type": "steps", "params": map[string]int{"steps": 1}}
	for i := range 2 {
		if status, resp, _ := e.do("POST", "/api/jobs", body); status != http.StatusAccepted {
			t.Fatalf("job %d within the burst: %d %v", i, status, resp)
		}
	}
	status, resp, header := e.do("POST", "/api/jobs", body)
	if status != http.StatusTooManyRequests || errCode(resp) != CodeRateLimited || header.Get("Retry-After") == "" {
		t.Fatalf("over the burst: %d %v %v", status, resp, header)
	}
	if status, _, _ := e.doAs(e.newBrowser(), "POST", "/api/jobs", body); status != http.StatusAccepted {
		t.Fatalf("another user: %d", status)
	}
}

// Renames and room joins are announced to rooms, so they are limited per
// user like messages.
func TestRenameAndJoinChurnLimited(t *testing.T) {
	e := newEnv(t, progresstest.Embedded(t), withoutWorker())
	var status int
	for i := range 6 {
		status, _, _ = e.do("POST", "/api/me", map[string]string{"name": fmt.Sprint("n", i)})
	}
	if status != http.StatusTooManyRequests {
		t.Fatalf("sixth rename in a row: %d, want 429", status)
	}
	// Joining and leaving a room over and over is what could wash its
	// history away: the joins are limited. (Subscribing again to a room
	// the socket is in joins nothing, so it is not.)
	c := e.dial()
	var limited, rejoined bool
	for i := range 25 {
		c.send(map[string]any{"op": "subscribe", "group": "chat:churn", "ref": i})
		for {
			f := c.read()
			if f.Type == "error" && f.Code == CodeRateLimited {
				limited = true
			}
			if f.Type == "subscribed" || f.Type == "error" {
				break
			}
		}
		if i == 0 {
			c.send(map[string]any{"op": "subscribe", "group": "chat:churn", "ref": "again"})
			f := c.readUntil(func(f frame) bool { return f.Type == "subscribed" || f.Type == "error" })
			rejoined = f[len(f)-1].Type == "subscribed"
		}
		c.send(map[string]any{"op": "unsubscribe", "group": "chat:churn", "ref": i})
		c.readUntil(func(f frame) bool { return f.Type == "unsubscribed" })
	}
	if !limited {
		t.Fatal("25 joins in a row were all accepted")
	}
	if !rejoined {
		t.Fatal("subscribing again to a room the socket is in was refused")
	}
}

// clientFrom returns a browser (with a cookie jar when jar is set) whose
// connections come from ip: loopback holds all of 127.0.0.0/8, so tests
// can be several client addresses against a server on 127.0.0.1.
func clientFrom(ip string, jar bool) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 16}}
	if jar {
		c.Jar, _ = cookiejar.New(nil)
	}
	return c
}

// cookieOf returns client's current session cookie value.
func (e *testEnv) cookieOf(client *http.Client) string {
	e.t.Helper()
	u, _ := url.Parse(e.http.URL)
	for _, c := range client.Jar.Cookies(u) {
		if c.Name == sessionCookie {
			return c.Value
		}
	}
	e.t.Fatal("no session cookie")
	return ""
}

// stored reports whether user id is kept in Redis.
func (e *testEnv) stored(id string) bool {
	e.t.Helper()
	_, err := e.auth.User(context.Background(), id)
	if err != nil && !errors.Is(err, auth.ErrNotFound) {
		e.t.Fatal(err)
	}
	return err == nil
}

// Guests cost nothing until they act: 20,000 requests without a cookie,
// over pages, the API and static files, add (almost) no key to Redis.
func TestCookielessRequestsWriteNothing(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		ctx := t.Context()
		before, err := e.rdb.DBSize(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		paths := []string{"/", "/api/me", "/api/job-types", "/static/app.js"}
		const total, workers = 20000, 8
		client := clientFrom("127.0.0.1", false) // no jar: every request is a new guest
		var wg sync.WaitGroup
		var bad atomic.Int64
		var guests sync.Map
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < total; i += workers {
					res, err := client.Get(e.http.URL + paths[i%len(paths)])
					if err != nil {
						bad.Add(1)
						continue
					}
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != http.StatusOK {
						bad.Add(1)
					}
					for _, c := range res.Cookies() {
						if c.Name == sessionCookie {
							guests.Store(c.Value, true)
						}
					}
				}
			}()
		}
		wg.Wait()
		if n := bad.Load(); n > 0 {
			t.Fatalf("%d of %d requests failed", n, total)
		}
		var n int
		guests.Range(func(any, any) bool { n++; return true })
		if n != total/len(paths)*3 { // every request but the static ones made a guest
			t.Fatalf("%d distinct guest cookies, want %d", n, total/len(paths)*3)
		}
		after, err := e.rdb.DBSize(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		keys, _ := e.rdb.Keys(ctx, "*").Result()
		t.Logf("%d cookieless requests: %d keys before, %d after: %v", total, before, after, keys)
		if after-before > 50 {
			t.Fatalf("%d cookieless requests added %d keys to Redis, want at most 50", total, after-before)
		}
	})
}

// A guest is stored at its first action that needs state, and not before.
func TestGuestStoredWhenItActs(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		cases := []struct {
			name   string
			act    func(c *http.Client, id string)
			stores bool
		}{
			{"list jobs", func(c *http.Client, _ string) { e.doAs(c, "GET", "/api/jobs", nil) }, false},
			{"watch its user group", func(c *http.Client, id string) {
				ws := e.dialAs(c)
				ws.send(map[string]any{"op": "subscribe", "group": "user:" + id})
				if f := ws.read(); f.Type != "subscribed" {
					t.Fatalf("subscribe: %+v", f)
				}
			}, false},
			{"submit a job", func(c *http.Client, _ string) {
				if status, body, _ := e.doAs(c, "POST", "/api/jobs", map[string]any{"type": "steps", "params": map[string]int{"steps": 1}}); status != http.StatusAccepted {
					t.Fatalf("submit: %d %v", status, body)
				}
			}, true},
			{"post to chat", func(c *http.Client, _ string) {
				if status, body, _ := e.doAs(c, "POST", "/api/groups/chat%3Ag/messages", map[string]string{"text": "hi"}); status != http.StatusAccepted {
					t.Fatalf("post: %d %v", status, body)
				}
			}, true},
			{"set a name", func(c *http.Client, _ string) {
				if status, body, _ := e.doAs(c, "POST", "/api/me", map[string]string{"name": "zoe"}); status != http.StatusOK {
					t.Fatalf("rename: %d %v", status, body)
				}
			}, true},
			{"join a room on the socket", func(c *http.Client, _ string) {
				ws := e.dialAs(c)
				ws.send(map[string]any{"op": "subscribe", "group": "chat:g"})
				ws.readUntil(func(f frame) bool { return f.Type == "subscribed" })
			}, true},
			{"publish on the socket", func(c *http.Client, _ string) {
				ws := e.dialAs(c)
				ws.send(map[string]any{"op": "publish", "group": "chat:g", "data": map[string]string{"text": "hi"}})
				ws.readUntil(func(f frame) bool { return f.Type == "published" })
			}, true},
		}
		for _, tc := range cases {
			func() {
				c := e.newBrowser()
				id := e.me(c)
				if e.stored(id) {
					t.Fatalf("%s: a guest that only looked is stored", tc.name)
				}
				tc.act(c, id)
				if got := e.stored(id); got != tc.stores {
					t.Fatalf("stored after %s: %v, want %v", tc.name, got, tc.stores)
				}
				if tc.stores {
					ttl, err := e.rdb.PTTL(t.Context(), "ts:user:"+id).Result()
					if err != nil || ttl <= 0 {
						t.Fatalf("%s: a stored guest's TTL: %v %v", tc.name, ttl, err)
					}
				}
				if got := e.me(c); got != id {
					t.Fatalf("%s: the guest became %s, want %s", tc.name, got, id)
				}
			}()
		}
	})
}

// Storing new guests is limited per client IP: a client that keeps no
// cookies cannot turn each request into a new user (and a fresh job
// budget). Other addresses, and guests already stored, are not affected.
func TestNewGuestsLimitedPerIP(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker(), withAuthConfig(func(c *auth.Config) { c.NewGuestsPerIP = 3 }))
		job := map[string]any{"type": "steps", "params": map[string]int{"steps": 1}}
		known := clientFrom("127.0.0.1", true)
		if status, body, _ := e.doAs(known, "POST", "/api/jobs", job); status != http.StatusAccepted {
			t.Fatalf("first guest: %d %v", status, body)
		}
		script := clientFrom("127.0.0.1", false)
		for i := range 2 {
			if status, body, _ := e.doAs(script, "POST", "/api/jobs", job); status != http.StatusAccepted {
				t.Fatalf("new guest %d: %d %v", i+2, status, body)
			}
		}
		status, body, header := e.doAs(script, "POST", "/api/jobs", job)
		if status != http.StatusTooManyRequests || errCode(body) != CodeRateLimited || header.Get("Retry-After") == "" {
			t.Fatalf("fourth new guest from one IP: %d %v %v", status, body, header)
		}
		if msg := body["error"].(map[string]any)["message"].(string); !strings.Contains(msg, "new guests") {
			t.Fatalf("message %q does not say what was limited", msg)
		}
		// Looking around is still free.
		if status, _, _ := e.doAs(script, "GET", "/api/me", nil); status != http.StatusOK {
			t.Fatalf("GET /api/me over the limit: %d", status)
		}
		if status, _, _ := e.doAs(known, "POST", "/api/jobs", job); status != http.StatusAccepted {
			t.Fatalf("a guest stored before: %d", status)
		}
		if status, body, _ := e.doAs(clientFrom("127.0.0.2", false), "POST", "/api/jobs", job); status != http.StatusAccepted {
			t.Fatalf("a new guest from another IP: %d %v", status, body)
		}
		keys, err := e.rdb.Keys(t.Context(), "ts:bucket:guest-ip:*").Result()
		if err != nil || len(keys) != 2 {
			t.Fatalf("limit keys %v %v, want one per IP", keys, err)
		}
	})
}

// A guest that logs out, stored or not, is gone for good: its cookie does
// not come back, neither as that guest nor as a fresh one with its id.
// Sign-in ends the guest cookie the same way.
func TestEndedGuestCookieStaysEnded(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e, smtp := smtpEnv(t, srv, withoutWorker())
		replay := func(cookie string) string {
			t.Helper()
			status, body, header := e.doAs(&http.Client{}, "GET", "/api/me", nil, "Cookie", sessionCookie+"="+cookie)
			if status != http.StatusOK || header.Get("Set-Cookie") == "" {
				t.Fatalf("replayed cookie: %d %v, want 200 with a new guest cookie", status, body)
			}
			return body["id"].(string)
		}
		cases := []struct {
			name string
			act  func(c *http.Client)               // before the guest ends
			end  func(c *http.Client) (int, string) // ends it
		}{
			{"stateless guest logs out", func(*http.Client) {}, func(c *http.Client) (int, string) {
				status, _, _ := e.doAs(c, "POST", "/api/auth/logout", nil)
				return status, ""
			}},
			{"stored guest logs out", func(c *http.Client) { e.doAs(c, "POST", "/api/me", map[string]string{"name": "x"}) }, func(c *http.Client) (int, string) {
				status, _, _ := e.doAs(c, "POST", "/api/auth/logout", nil)
				return status, ""
			}},
			{"guest signs in", func(c *http.Client) { e.doAs(c, "POST", "/api/me", map[string]string{"name": "y"}) }, func(c *http.Client) (int, string) {
				u := e.signIn(c, smtp, "ended@example.com")
				return http.StatusOK, u["id"].(string)
			}},
		}
		// Logging out without a cookie ends nothing and writes nothing.
		before, _ := e.rdb.DBSize(t.Context()).Result()
		for range 100 {
			if status, body, _ := e.doAs(&http.Client{}, "POST", "/api/auth/logout", nil); status != http.StatusNoContent {
				t.Fatalf("cookieless logout: %d %v", status, body)
			}
		}
		if after, _ := e.rdb.DBSize(t.Context()).Result(); after != before {
			t.Fatalf("100 cookieless logouts added %d keys", after-before)
		}
		for _, tc := range cases {
			func() {
				c := e.newBrowser()
				id := e.me(c)
				cookie := e.cookieOf(c)
				tc.act(c)
				ws := e.dialAs(c)
				ws.send(map[string]any{"op": "subscribe", "group": "user:" + id})
				if f := ws.read(); f.Type != "subscribed" {
					t.Fatalf("subscribe: %+v", f)
				}
				status, _ := tc.end(c)
				if status != http.StatusNoContent && status != http.StatusOK {
					t.Fatalf("%s: ending the guest: %d", tc.name, status)
				}
				if code := ws.closeCode(); code != closePolicy {
					t.Fatalf("%s: the ended guest's socket closed with %d, want 1008", tc.name, code)
				}
				if got := replay(cookie); got == id {
					t.Fatalf("%s: the ended guest's cookie came back as %s", tc.name, got)
				}
				// Not even as a stored guest that acts.
				status, body, _ := e.doAs(&http.Client{}, "POST", "/api/me", map[string]string{"name": "back"}, "Cookie", sessionCookie+"="+cookie)
				if status != http.StatusOK || body["id"] == id {
					t.Fatalf("%s: acting with the ended cookie: %d %v", tc.name, status, body)
				}
			}()
		}
	})
}

// Nobody can lock somebody else out: wrong codes for an email from one
// address do not stop its owner, at another address, from asking for a
// code and signing in with it.
func TestNobodyCanLockOutTheOwner(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e, smtp := smtpEnv(t, srv, withoutWorker())
		attacker := clientFrom("127.0.0.2", true)
		const victim = "victim@example.com"
		for round := range 4 {
			if status, body, _ := e.doAs(attacker, "POST", "/api/auth/code", map[string]string{"email": victim}); status != http.StatusAccepted {
				t.Fatalf("round %d: code request %d %v", round, status, body)
			}
			code := authtest.Code(t, smtp.Next(t))
			wrong := "000000"
			if code == wrong {
				wrong = "111111"
			}
			for range 5 {
				status, body, _ := e.doAs(attacker, "POST", "/api/auth/login", map[string]string{"email": victim, "code": wrong})
				if status != http.StatusBadRequest && status != http.StatusTooManyRequests {
					t.Fatalf("round %d: a wrong code: %d %v", round, status, body)
				}
			}
		}
		owner := clientFrom("127.0.0.3", true)
		if status, body, _ := e.doAs(owner, "POST", "/api/auth/code", map[string]string{"email": victim}); status != http.StatusAccepted {
			t.Fatalf("the owner's code request after the attack: %d %v", status, body)
		}
		code := authtest.Code(t, smtp.Next(t))
		status, user, _ := e.doAs(owner, "POST", "/api/auth/login", map[string]string{"email": victim, "code": code})
		if status != http.StatusOK || user["email"] != victim {
			t.Fatalf("the owner's sign-in after the attack: %d %v", status, user)
		}
		// The attacker's own address is the one that is limited.
		status, body, header := e.doAs(attacker, "POST", "/api/auth/login", map[string]string{"email": victim, "code": "123456"})
		if status != http.StatusTooManyRequests || header.Get("Retry-After") == "" {
			t.Fatalf("the attacker after 20 wrong codes: %d %v", status, body)
		}
	})
}

// Login errors say what happened, so a person knows what to do.
func TestLoginErrorsSayWhatHappened(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e, smtp := smtpEnv(t, srv, withoutWorker(), withAuthConfig(func(c *auth.Config) { c.LoginsPerEmailIP = 100 }))
		login := func(email, code string) (int, string) {
			t.Helper()
			status, body, _ := e.doAs(e.client, "POST", "/api/auth/login", map[string]string{"email": email, "code": code})
			if status == http.StatusOK {
				return status, ""
			}
			msg, _ := body["error"].(map[string]any)["message"].(string)
			return status, msg
		}
		requestCode := func(email string) string {
			t.Helper()
			if status, body, _ := e.do("POST", "/api/auth/code", map[string]string{"email": email}); status != http.StatusAccepted {
				t.Fatalf("request code: %d %v", status, body)
			}
			return authtest.Code(t, smtp.Next(t))
		}
		code := requestCode("tries@example.com")
		wrong := "000000"
		if code == wrong {
			wrong = "111111"
		}
		steps := []struct {
			code   string
			status int
			msg    string
		}{
			{wrong, 400, "wrong code: 4 tries left"},
			{wrong, 400, "wrong code: 3 tries left"},
			{wrong, 400, "wrong code: 2 tries left"},
			{wrong, 400, "wrong code: 1 try left"},
			{wrong, 400, "wrong code, and that was the last try"},
			{code, 400, "too many wrong tries"},
		}
		for i, st := range steps {
			if status, msg := login("tries@example.com", st.code); status != st.status || !strings.HasPrefix(msg, st.msg) {
				t.Fatalf("try %d: %d %q, want %d %q", i+1, status, msg, st.status, st.msg)
			}
		}
		code = requestCode("used@example.com")
		if status, msg := login("used@example.com", code); status != http.StatusOK {
			t.Fatalf("sign-in: %d %q", status, msg)
		}
		if status, msg := login("used@example.com", code); status != 400 || !strings.Contains(msg, "already used") {
			t.Fatalf("a used code: %d %q", status, msg)
		}
		if status, msg := login("never@example.com", "123456"); status != 400 || !strings.Contains(msg, "no code was requested") {
			t.Fatalf("no code requested: %d %q", status, msg)
		}
		code = requestCode("late@example.com")
		if m := srv.Miniredis(); m != nil {
			m.FastForward(11 * time.Minute)
		} else {
			// A real server's clock cannot be moved: shorten what is left of
			// this code's life (the code lives while more than CodeTTL of its
			// key's TTL remains).
			if err := e.rdb.PExpire(t.Context(), "ts:code:late@example.com", 10*time.Minute-time.Millisecond).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if status, msg := login("late@example.com", code); status != 400 || !strings.Contains(msg, "expired") {
			t.Fatalf("an expired code: %d %q", status, msg)
		}
	})
}

// The guest cookie follows the session cookie's rules: HttpOnly,
// SameSite=Lax, Secure over TLS or with SecureCookies.
func TestGuestCookieAttributes(t *testing.T) {
	for _, secure := range []bool{false, true} {
		e := newEnv(t, progresstest.Embedded(t), withoutWorker(), withWebConfig(Config{SecureCookies: secure}))
		res, err := http.Get(e.http.URL + "/api/me")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		cs := res.Cookies()
		if len(cs) != 1 || cs[0].Name != sessionCookie || !cs[0].HttpOnly || cs[0].SameSite != http.SameSiteLaxMode ||
			cs[0].Secure != secure || cs[0].MaxAge <= 0 || !strings.HasPrefix(cs[0].Value, "g1.") {
			t.Fatalf("SecureCookies %v: cookie %+v", secure, cs)
		}
	}
}
