package web

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"taskstream/progress/progresstest"
)

// wantAPIError fails unless res is the protocol's error answer: the status,
// a JSON body {"error": {"code", "message"}} with the code, and a message.
// It returns the message.
func wantAPIError(t *testing.T, res rawResponse, status int, code string) string {
	t.Helper()
	if res.status != status {
		t.Errorf("status %d, want %d (body %s)", res.status, status, res.body)
	}
	if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q, want application/json (body %s)", ct, res.body)
	}
	var body struct {
		Error *struct {
			Code    *string
			Message *string
		}
	}
	dec := json.NewDecoder(bytes.NewReader(res.body))
	if err := dec.Decode(&body); err != nil || body.Error == nil || body.Error.Code == nil || body.Error.Message == nil {
		t.Fatalf("body %q is not {\"error\": {\"code\", \"message\"}} (%v)", res.body, err)
	}
	if *body.Error.Code != code {
		t.Errorf("code %q, want %q (message %q)", *body.Error.Code, code, *body.Error.Message)
	}
	if strings.TrimSpace(*body.Error.Message) == "" {
		t.Errorf("empty message")
	}
	return *body.Error.Message
}

func TestBadHTTPInput(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		done := e.submit("steps", map[string]any{"steps": 1, "interval_ms": 0})
		e.waitState(done, "completed")
		steps := e.submit("steps", map[string]any{"steps": 1, "interval_ms": 0})
		e.waitState(steps, "completed")

		const ctJSON = "application/json"
		// A body of exactly the limit is accepted: one object padded with
		// JSON whitespace.
		atLimit := []byte(`{"type": "steps", "params": {"steps": 1, "interval_ms": 0}}`)
		atLimit = append(atLimit, bytes.Repeat([]byte(" "), 1<<20-len(atLimit))...)
		overLimit := append(bytes.Clone(atLimit), ' ')

		for _, tc := range []struct {
			name    string
			method  string
			path    string
			body    string
			raw     []byte   // instead of body, when not nil
			header  []string // Content-Type application/json unless given
			status  int
			code    string   // "" for a success
			mention []string // words the message must contain
		}{
			{name: "malformed JSON", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {`, status: 400, code: CodeBadRequest},
			{name: "not an object", method: "POST", path: "/api/jobs", body: `["steps"]`, status: 400, code: CodeBadRequest},
			{name: "two objects", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 1}} {}`, status: 400, code: CodeBadRequest},
			{name: "empty body", method: "POST", path: "/api/jobs", raw: []byte{}, status: 400, code: CodeBadRequest},
			{name: "unknown top-level field", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 1}, "priority": 9}`, status: 400, code: CodeBadRequest, mention: []string{"priority"}},
			{name: "unknown type", method: "POST", path: "/api/jobs", body: `{"type": "nope", "params": {}}`, status: 400, code: CodeBadRequest, mention: []string{"nope"}},
			{name: "missing type", method: "POST", path: "/api/jobs", body: `{"params": {"steps": 1}}`, status: 400, code: CodeBadRequest, mention: []string{"type"}},
			{name: "steps=0", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 0}}`, status: 400, code: CodeBadRequest, mention: []string{"steps"}},
			{name: "missing params", method: "POST", path: "/api/jobs", body: `{"type": "steps"}`, status: 400, code: CodeBadRequest, mention: []string{"steps"}},
			{name: "steps too many", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 100001}}`, status: 400, code: CodeBadRequest, mention: []string{"steps"}},
			{name: "fail_at beyond steps", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 2, "fail_at": 3}}`, status: 400, code: CodeBadRequest, mention: []string{"fail_at"}},
			{name: "fail_times without fail_at", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 2, "fail_times": 1}}`, status: 400, code: CodeBadRequest, mention: []string{"fail_times"}},
			{name: "unknown param field", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 1, "bogus": true}}`, status: 400, code: CodeBadRequest, mention: []string{"bogus"}},
			{name: "param of the wrong type", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": "ten"}}`, status: 400, code: CodeBadRequest, mention: []string{"steps"}},
			{name: "params not an object", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": [1]}`, status: 400, code: CodeBadRequest},
			{name: "primes n too small", method: "POST", path: "/api/jobs", body: `{"type": "primes", "params": {"n": 1}}`, status: 400, code: CodeBadRequest, mention: []string{"n"}},
			{name: "report rows missing", method: "POST", path: "/api/jobs", body: `{"type": "report", "params": {"seed": 1}}`, status: 400, code: CodeBadRequest, mention: []string{"rows"}},
			{name: "text/plain", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 1}}`, header: []string{"Content-Type", "text/plain"}, status: 415, code: CodeUnsupportedMedia},
			{name: "no Content-Type", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 1}}`, header: []string{"Content-Type", ""}, status: 415, code: CodeUnsupportedMedia},
			{name: "json with charset", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 1, "interval_ms": 0}}`, header: []string{"Content-Type", "application/json; charset=utf-8"}, status: 202},
			{name: "body at the limit", method: "POST", path: "/api/jobs", raw: atLimit, status: 202},
			{name: "body over the limit", method: "POST", path: "/api/jobs", raw: overLimit, status: 413, code: CodeTooLarge},
			{name: "body far over the limit", method: "POST", path: "/api/jobs", raw: bytes.Repeat([]byte("x"), 3<<20), status: 413, code: CodeTooLarge},
			{name: "bad limit", method: "GET", path: "/api/jobs?limit=0", status: 400, code: CodeBadRequest, mention: []string{"limit"}},
			{name: "limit not a number", method: "GET", path: "/api/jobs?limit=ten", status: 400, code: CodeBadRequest, mention: []string{"limit"}},
			{name: "get unknown job", method: "GET", path: "/api/jobs/nosuchjob", status: 404, code: CodeNotFound},
			{name: "cancel unknown job", method: "POST", path: "/api/jobs/nosuchjob/cancel", status: 404, code: CodeNotFound},
			{name: "artifact of unknown job", method: "GET", path: "/api/jobs/nosuchjob/artifact", status: 404, code: CodeNotFound},
			{name: "artifact of a type without one", method: "GET", path: "/api/jobs/" + steps + "/artifact", status: 404, code: CodeNotFound},
			{name: "cancel completed job", method: "POST", path: "/api/jobs/" + done + "/cancel", status: 409, code: CodeConflict},
			{name: "foreign Origin submit", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 1}}`, header: []string{"Origin", "http://evil.example"}, status: 403, code: CodeForbidden, mention: []string{"evil.example"}},
			{name: "foreign Origin cancel", method: "POST", path: "/api/jobs/" + done + "/cancel", header: []string{"Origin", "http://evil.example"}, status: 403, code: CodeForbidden},
			{name: "garbage Origin", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 1}}`, header: []string{"Origin", "null"}, status: 403, code: CodeForbidden},
			{name: "own Origin submit", method: "POST", path: "/api/jobs", body: `{"type": "steps", "params": {"steps": 1, "interval_ms": 0}}`, header: []string{"Origin", e.http.URL}, status: 202},
			{name: "foreign Origin may read", method: "GET", path: "/api/jobs/" + done, header: []string{"Origin", "http://evil.example"}, status: 200},
			{name: "unknown API route", method: "GET", path: "/api/nope", status: 404, code: CodeNotFound},
			{name: "unknown route", method: "GET", path: "/nope", status: 404, code: CodeNotFound},
			{name: "wrong method on jobs", method: "DELETE", path: "/api/jobs", status: 405, code: CodeMethodNotAllowed},
			{name: "wrong method on a job", method: "PUT", path: "/api/jobs/" + done, status: 405, code: CodeMethodNotAllowed},
			{name: "GET on cancel", method: "GET", path: "/api/jobs/" + done + "/cancel", status: 405, code: CodeMethodNotAllowed},
			{name: "POST on the socket", method: "POST", path: "/ws", status: 405, code: CodeMethodNotAllowed},
			{name: "socket without Upgrade", method: "GET", path: "/ws", status: 400, code: CodeBadRequest},
		} {
			t.Run(tc.name, func(t *testing.T) {
				body := tc.raw
				if body == nil && tc.body != "" {
					body = []byte(tc.body)
				}
				header := []string{"Content-Type", ctJSON}
				if tc.method == "GET" {
					header = nil
				}
				header = append(header, tc.header...)
				res := e.doRaw(tc.method, tc.path, body, header...)
				if tc.code == "" {
					if res.status != tc.status {
						t.Fatalf("status %d, want %d (body %s)", res.status, tc.status, res.body)
					}
					return
				}
				msg := wantAPIError(t, res, tc.status, tc.code)
				for _, w := range tc.mention {
					if !strings.Contains(msg, w) {
						t.Errorf("message %q does not name %q", msg, w)
					}
				}
			})
		}
	})
}

// The socket refuses a foreign Origin before upgrading, with the
// protocol's JSON error body.
func TestSocketRefusesForeignOrigin(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		url := "ws" + strings.TrimPrefix(e.http.URL, "http") + "/ws"
		for _, origin := range []string{"http://evil.example", "null", "http://" + strings.TrimPrefix(e.http.URL, "http://") + ".evil.example"} {
			t.Run(origin, func(t *testing.T) {
				conn, res, err := websocket.DefaultDialer.Dial(url, http.Header{"Origin": {origin}})
				if err == nil {
					conn.Close()
					t.Fatalf("dial with Origin %s succeeded", origin)
				}
				if res == nil {
					t.Fatalf("dial failed without a response: %v", err)
				}
				raw, _ := io.ReadAll(res.Body)
				wantAPIError(t, rawResponse{status: res.StatusCode, header: res.Header, body: raw}, http.StatusForbidden, CodeForbidden)
			})
		}
		// The server's own origin is welcome.
		c := e.dial("Origin", e.http.URL)
		c.send(map[string]any{"op": "ping", "ref": "p"})
		if f := c.read(); f.Type != "pong" {
			t.Fatalf("got %+v, want pong", f)
		}
		if n := e.web.ConnCount(); n != 1 {
			t.Errorf("ConnCount %d after refusals, want 1", n)
		}
	})
}

// A frame over the limit closes the socket with 1009; a frame of exactly
// the limit is served.
func TestSocketFrameTooLarge(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		c := e.dial()
		ping := []byte(`{"op": "ping", "ref": "big"}`)
		atLimit := append(bytes.Clone(ping), bytes.Repeat([]byte(" "), 64<<10-len(ping))...)
		if err := c.conn.WriteMessage(websocket.TextMessage, atLimit); err != nil {
			t.Fatal(err)
		}
		if f := c.read(); f.Type != "pong" || string(f.Ref) != `"big"` {
			t.Fatalf("frame of exactly 64 KiB: got %+v, want pong big", f)
		}
		if err := c.conn.WriteMessage(websocket.TextMessage, append(atLimit, ' ')); err != nil {
			t.Fatal(err)
		}
		if code := c.closeCode(); code != websocket.CloseMessageTooBig {
			t.Fatalf("close code %d, want 1009", code)
		}
		eventually(t, "the server to drop the socket", func() bool { return e.web.ConnCount() == 0 })
	})
}

// badFrames are frames the server cannot use; each gets an error frame
// (with the ref, when the frame had a usable one) and the socket stays.
// jobID is a job that exists.
func badFrames(jobID string) []struct {
	name    string
	binary  bool
	frame   string
	code    string
	wantRef string // the raw JSON ref expected on the error, "" for none
} {
	return []struct {
		name    string
		binary  bool
		frame   string
		code    string
		wantRef string
	}{
		{name: "not JSON", frame: `hello`, code: CodeBadRequest},
		{name: "empty frame", frame: ``, code: CodeBadRequest},
		{name: "JSON array", frame: `[{"op": "ping", "ref": "a"}]`, code: CodeBadRequest},
		{name: "JSON string", frame: `"ping"`, code: CodeBadRequest},
		{name: "truncated object", frame: `{"op": "ping", "ref": "t"`, code: CodeBadRequest},
		{name: "op of the wrong type", frame: `{"op": 5, "ref": "r1"}`, code: CodeBadRequest, wantRef: `"r1"`},
		{name: "unknown op", frame: `{"op": "dance", "ref": "r2"}`, code: CodeBadRequest, wantRef: `"r2"`},
		{name: "missing op", frame: `{"group": "job:` + jobID + `", "ref": 3}`, code: CodeBadRequest, wantRef: `3`},
		{name: "empty group id", frame: `{"op": "subscribe", "group": "job:", "ref": "r4"}`, code: CodeBadRequest, wantRef: `"r4"`},
		{name: "group with spaces", frame: `{"op": "subscribe", "group": "no spaces allowed", "ref": "r5"}`, code: CodeBadRequest, wantRef: `"r5"`},
		{name: "missing group", frame: `{"op": "subscribe", "ref": "r6"}`, code: CodeBadRequest, wantRef: `"r6"`},
		{name: "unknown group kind", frame: `{"op": "subscribe", "group": "bank:vault", "ref": "r7"}`, code: CodeBadRequest, wantRef: `"r7"`},
		{name: "negative after", frame: `{"op": "subscribe", "group": "job:` + jobID + `", "after": -1, "ref": "r8"}`, code: CodeBadRequest, wantRef: `"r8"`},
		{name: "after not a number", frame: `{"op": "subscribe", "group": "job:` + jobID + `", "after": "x", "ref": "r9"}`, code: CodeBadRequest, wantRef: `"r9"`},
		{name: "ref an object", frame: `{"op": "ping", "ref": {"a": 1}}`, code: CodeBadRequest},
		{name: "unknown job", frame: `{"op": "subscribe", "group": "job:nosuchjob", "ref": "r10"}`, code: CodeNotFound, wantRef: `"r10"`},
		{name: "user group", frame: `{"op": "subscribe", "group": "user:x", "ref": "r11"}`, code: CodeForbidden, wantRef: `"r11"`},
		{name: "bad chat room", frame: `{"op": "subscribe", "group": "chat:a.b", "ref": "r12"}`, code: CodeBadRequest, wantRef: `"r12"`},
		{name: "publish to a job", frame: `{"op": "publish", "group": "job:` + jobID + `", "data": {"text": "hi"}, "ref": "r13"}`, code: CodeForbidden, wantRef: `"r13"`},
		{name: "publish to a user", frame: `{"op": "publish", "group": "user:x", "data": {"text": "hi"}, "ref": 14}`, code: CodeForbidden, wantRef: `14`},
		{name: "publish without data", frame: `{"op": "publish", "group": "chat:lobby", "ref": "r15"}`, code: CodeBadRequest, wantRef: `"r15"`},
		{name: "publish empty text", frame: `{"op": "publish", "group": "chat:lobby", "data": {"text": "  "}, "ref": "r16"}`, code: CodeBadRequest, wantRef: `"r16"`},
		{name: "publish unknown data field", frame: `{"op": "publish", "group": "chat:lobby", "data": {"html": "<b>"}, "ref": "r17"}`, code: CodeBadRequest, wantRef: `"r17"`},
		{name: "binary frame", binary: true, frame: "\x00\x01\x02", code: CodeBadRequest},
	}
}

// Every bad frame gets an error frame and the SAME socket still answers
// a ping afterwards.
func TestSocketBadFrames(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		id := e.submit("steps", map[string]any{"steps": 1})
		conn := e.dial().conn
		for _, tc := range badFrames(id) {
			t.Run(tc.name, func(t *testing.T) {
				c := &wsClient{t: t, conn: conn}
				typ := websocket.TextMessage
				if tc.binary {
					typ = websocket.BinaryMessage
				}
				if err := conn.WriteMessage(typ, []byte(tc.frame)); err != nil {
					t.Fatal(err)
				}
				f := c.read()
				if f.Type != "error" || f.Code != tc.code || f.Message == "" {
					t.Errorf("got %+v, want an error frame with code %s and a message", f, tc.code)
				}
				if string(f.Ref) != tc.wantRef {
					t.Errorf("ref %s, want %q", f.Ref, tc.wantRef)
				}
				c.send(map[string]any{"op": "ping", "ref": "p"})
				if f := c.read(); f.Type != "pong" || string(f.Ref) != `"p"` {
					t.Fatalf("after the bad frame: got %+v, want pong p", f)
				}
			})
		}
		if n := e.web.ConnCount(); n != 1 {
			t.Errorf("ConnCount %d, want 1", n)
		}
	})
}

// A socket that sends garbage (and is finally closed for an oversized
// frame) while watching a job does not disturb another socket watching
// the same job: it still gets every event, in order, to the end.
func TestBadFramesDoNotAffectOtherSockets(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv)
		id := e.submit("steps", map[string]any{"steps": 30, "interval_ms": 20})
		group := "job:" + id

		good := e.dial()
		good.send(map[string]any{"op": "subscribe", "group": group, "ref": "g"})
		if f := good.read(); f.Type != "subscribed" {
			t.Fatalf("good socket: %+v, want subscribed", f)
		}

		bad := e.dial()
		bad.send(map[string]any{"op": "subscribe", "group": group, "ref": "b"})
		bad.readUntil(func(f frame) bool { return f.Type == "subscribed" })
		for _, tc := range badFrames(id) {
			typ := websocket.TextMessage
			if tc.binary {
				typ = websocket.BinaryMessage
			}
			if err := bad.conn.WriteMessage(typ, []byte(tc.frame)); err != nil {
				t.Fatal(err)
			}
			// Its own job events may come before the error frame.
			bad.readUntil(func(f frame) bool { return f.Type == "error" })
		}
		if err := bad.conn.WriteMessage(websocket.TextMessage, bytes.Repeat([]byte("{"), 64<<10+1)); err != nil {
			t.Fatal(err)
		}
		if code := bad.closeCode(); code != websocket.CloseMessageTooBig {
			t.Fatalf("bad socket closed with %d, want 1009", code)
		}

		frames := good.readUntil(isTerminalEvent)
		for i, f := range frames {
			if f.Type != "event" || f.Group != group || f.Seq != int64(i+1) {
				t.Fatalf("frame %d = %+v: want event %d of %s (no gap, no other frame)", i, f, i+1, group)
			}
		}
		last := frames[len(frames)-1]
		if last.Event != "result" || string(last.Data) != `{"result":{"steps":30}}` {
			t.Fatalf("last event %s %s, want the result", last.Event, last.Data)
		}
		good.send(map[string]any{"op": "ping", "ref": "p"})
		if f := good.read(); f.Type != "pong" {
			t.Fatalf("good socket after the job: %+v, want pong", f)
		}
	})
}
