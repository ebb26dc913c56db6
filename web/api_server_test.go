package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// adminBearer is the Authorization header value of the configured admin
// token.
const adminBearer = "Bearer " + testAdminToken

// mint creates a token as the caller authenticated by header (a session's
// client with no header, or an admin's "Authorization" pair) and returns
// its Authorization value.
func (e *testEnv) mint(client *http.Client, scopes []string, header ...string) string {
	e.t.Helper()
	bearer, _ := e.mintID(client, scopes, header...)
	return bearer
}

// mintID is mint that also returns the token's id.
func (e *testEnv) mintID(client *http.Client, scopes []string, header ...string) (bearer, id string) {
	e.t.Helper()
	status, body, _ := e.doAs(client, "POST", "/api/tokens", map[string]any{"name": "test", "scopes": scopes}, header...)
	if status != http.StatusCreated {
		e.t.Fatalf("mint %v: %d %v", scopes, status, body)
	}
	return "Bearer " + body["token"].(string), body["id"].(string)
}

// adminToken mints an admin's token with scopes.
func (e *testEnv) adminToken(scopes ...string) string {
	e.t.Helper()
	return e.mint(&http.Client{}, scopes, "Authorization", adminBearer)
}

// publishAs posts body to path with the Authorization value bearer (none
// when empty) from a client without cookies.
func (e *testEnv) publishAs(bearer, path string, body any) (int, map[string]any) {
	e.t.Helper()
	var header []string
	if bearer != "" {
		header = []string{"Authorization", bearer}
	}
	status, out, _ := e.doAs(&http.Client{}, "POST", path, body, header...)
	return status, out
}

// Scopes are checked when a token is minted: their grammar, who may give
// publish and admin rights, and that an admin's tokens say what they may
// do. They are stored with the token and listed.
func TestMintScopedTokens(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e, smtp := smtpEnv(t, srv, withoutWorker())
		e.signIn(e.client, smtp, "scopes@example.com")
		admin := []string{"Authorization", adminBearer}
		program := &http.Client{}
		tests := []struct {
			name   string
			client *http.Client
			header []string
			body   any
			status int
			code   string
		}{
			{"user, no body", e.client, nil, nil, http.StatusCreated, ""},
			{"user, history", e.client, nil, map[string]any{"scopes": []string{"history:*", "presence:chat:lobby"}}, http.StatusCreated, ""},
			{"user, publish", e.client, nil, map[string]any{"scopes": []string{"publish:chat:*"}}, http.StatusForbidden, CodeForbidden},
			{"user, admin", e.client, nil, map[string]any{"scopes": []string{"admin:*"}}, http.StatusForbidden, CodeForbidden},
			{"guest", e.newBrowser(), nil, map[string]any{"scopes": []string{"history:*"}}, http.StatusForbidden, CodeForbidden},
			{"admin, every kind", program, admin, map[string]any{"name": "bench", "scopes": []string{"publish:chat:*", "publish:user:*", "history:*", "presence:chat:*"}}, http.StatusCreated, ""},
			{"admin, admin scope", program, admin, map[string]any{"scopes": []string{"admin:*"}}, http.StatusCreated, ""},
			{"admin, no scopes", program, admin, map[string]any{"name": "x"}, http.StatusBadRequest, CodeBadRequest},
			{"unknown action", program, admin, map[string]any{"scopes": []string{"delete:*"}}, http.StatusBadRequest, CodeBadRequest},
			{"no pattern", program, admin, map[string]any{"scopes": []string{"publish"}}, http.StatusBadRequest, CodeBadRequest},
			{"bad kind", program, admin, map[string]any{"scopes": []string{"publish:metrics:*"}}, http.StatusBadRequest, CodeBadRequest},
			{"bad room", program, admin, map[string]any{"scopes": []string{"publish:chat:a.b"}}, http.StatusBadRequest, CodeBadRequest},
			{"presence of a job", program, admin, map[string]any{"scopes": []string{"presence:job:*"}}, http.StatusBadRequest, CodeBadRequest},
			{"narrow admin", program, admin, map[string]any{"scopes": []string{"admin:chat:*"}}, http.StatusBadRequest, CodeBadRequest},
			{"too many", program, admin, map[string]any{"scopes": strings.Split(strings.Repeat("history:*,", 33), ",")[:33]}, http.StatusBadRequest, CodeBadRequest},
			{"long name", program, admin, map[string]any{"name": strings.Repeat("n", 65), "scopes": []string{"history:*"}}, http.StatusBadRequest, CodeBadRequest},
			{"unknown field", program, admin, map[string]any{"scope": []string{"history:*"}}, http.StatusBadRequest, CodeBadRequest},
			{"scopes not a list", program, admin, `{"scopes": "history:*"}`, http.StatusBadRequest, CodeBadRequest},
		}
		for _, tt := range tests {
			status, body, _ := e.doAs(tt.client, "POST", "/api/tokens", tt.body, tt.header...)
			if status != tt.status || errCode(body) != tt.code {
				t.Errorf("%s: %d %v, want %d %q", tt.name, status, body, tt.status, tt.code)
			}
		}
		// Listed with their names and scopes, without secrets.
		listed := func(header ...string) map[string]bool {
			_, list, _ := e.doAs(e.client, "GET", "/api/tokens", nil, header...)
			out := map[string]bool{}
			for _, tok := range asList(list["tokens"]) {
				m := tok.(map[string]any)
				out[fmt.Sprint(m["name"], " ", m["scopes"], " ", m["token"] != nil)] = true
			}
			return out
		}
		for _, want := range []struct {
			header []string
			tokens []string
		}{
			{admin, []string{"bench [publish:chat:* publish:user:* history:* presence:chat:*] false", "<nil> [admin:*] false"}},
			{nil, []string{"<nil> [] false", "<nil> [history:* presence:chat:lobby] false"}},
		} {
			got := listed(want.header...)
			if len(got) != len(want.tokens) {
				t.Errorf("listed %v, want %v", got, want.tokens)
			}
			for _, w := range want.tokens {
				if !got[w] {
					t.Errorf("listed %v, want %q among them", got, w)
				}
			}
		}
	})
}

// A scoped token serves the server API only: not the job routes, the
// token routes or the socket. GET /api/me tells it who it is.
func TestScopedTokenLimitedToItsRoutes(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		tok := e.adminToken("publish:chat:*")
		program := &http.Client{}
		for _, rt := range []struct{ method, path string }{
			{"GET", "/api/jobs"}, {"GET", "/api/tokens"}, {"POST", "/api/tokens"},
			{"POST", "/api/notify"}, {"GET", "/api/groups/chat%3Alobby/events?wait=0"}, {"GET", "/ws"},
		} {
			status, body, _ := e.doAs(program, rt.method, rt.path, nil, "Authorization", tok)
			if status != http.StatusForbidden || errCode(body) != CodeForbidden {
				t.Errorf("%s %s with a scoped token: %d %v, want 403", rt.method, rt.path, status, body)
			}
		}
		if status, me, _ := e.doAs(program, "GET", "/api/me", nil, "Authorization", tok); status != http.StatusOK || me["id"] != "admin" {
			t.Errorf("GET /api/me with an admin's scoped token: %d %v", status, me)
		}
		// The admin:* scope may do everything, as the configured token.
		all := e.adminToken("admin:*")
		if status, body, _ := e.doAs(program, "GET", "/api/tokens", nil, "Authorization", all); status != http.StatusOK {
			t.Errorf("GET /api/tokens with admin:*: %d %v", status, body)
		}
	})
}

// POST /api/publish: the event lands in the group's log with the log's
// seq and epoch and reaches live subscribers; group rules and scopes hold
// and every bad input gets its typed error.
func TestPublishAPI(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e, smtp := smtpEnv(t, srv, withoutWorker())
		e.signIn(e.client, smtp, "pub@example.com")
		userTok := e.mint(e.client, nil)
		chatOnly := e.adminToken("publish:chat:*")
		lobbyOnly := e.adminToken("publish:chat:lobby", "history:*")
		every := e.adminToken("publish:*")
		revoked, id := e.mintID(&http.Client{}, []string{"publish:*"}, "Authorization", adminBearer)
		if status, _, _ := e.doAs(&http.Client{}, "DELETE", "/api/tokens/"+id, nil, "Authorization", adminBearer); status != http.StatusNoContent {
			t.Fatalf("revoke: %d", status)
		}
		admin := dialWS(t, "ws"+strings.TrimPrefix(e.http.URL, "http")+"/ws", "Authorization", adminBearer)
		admin.send(map[string]any{"op": "subscribe", "group": "user:someone"})
		if f := admin.read(); f.Type != wire.TypeSubscribed {
			t.Fatalf("subscribe: %+v", f)
		}

		ok := map[string]any{"group": "chat:lobby", "event": "message", "data": map[string]any{"text": "hi"}}
		big := strings.Repeat("x", 64<<10)
		tests := []struct {
			name   string
			bearer string
			body   any
			status int
			code   string
		}{
			{"no token", "", ok, http.StatusForbidden, CodeForbidden},
			{"bad token", "Bearer tsk_nope", ok, http.StatusUnauthorized, CodeUnauthenticated},
			{"revoked token", revoked, ok, http.StatusUnauthorized, CodeUnauthenticated},
			{"a user's token", userTok, ok, http.StatusForbidden, CodeForbidden},
			{"wrong scope: kind", chatOnly, map[string]any{"group": "user:someone", "event": "notification", "data": map[string]any{"title": "t"}}, http.StatusForbidden, CodeForbidden},
			{"wrong scope: room", lobbyOnly, map[string]any{"group": "chat:other", "event": "message", "data": nil}, http.StatusForbidden, CodeForbidden},
			{"reserved state", adminBearer, map[string]any{"group": "job:abc", "event": "state", "data": map[string]any{"state": "completed"}}, http.StatusForbidden, CodeForbidden},
			{"reserved result", every, map[string]any{"group": "job:abc", "event": "result", "data": map[string]any{"result": 1}}, http.StatusForbidden, CodeForbidden},
			{"reserved progress", every, map[string]any{"group": "job:abc", "event": "progress", "data": map[string]any{}}, http.StatusForbidden, CodeForbidden},
			{"reserved presence", every, map[string]any{"group": "chat:lobby", "event": "presence", "data": map[string]any{"users": []any{}}}, http.StatusForbidden, CodeForbidden},
			{"unknown kind", every, map[string]any{"group": "metrics:x", "event": "x", "data": 1}, http.StatusBadRequest, CodeBadRequest},
			{"bad group", every, map[string]any{"group": "chat:a b", "event": "x", "data": 1}, http.StatusBadRequest, CodeBadRequest},
			{"no group", every, map[string]any{"event": "x", "data": 1}, http.StatusBadRequest, CodeBadRequest},
			{"bad event", every, map[string]any{"group": "chat:lobby", "event": "Message!", "data": 1}, http.StatusBadRequest, CodeBadRequest},
			{"no event", every, map[string]any{"group": "chat:lobby", "data": 1}, http.StatusBadRequest, CodeBadRequest},
			{"no data", every, map[string]any{"group": "chat:lobby", "event": "message"}, http.StatusBadRequest, CodeBadRequest},
			{"data too large", every, map[string]any{"group": "chat:lobby", "event": "message", "data": big}, http.StatusRequestEntityTooLarge, CodeTooLarge},
			{"unknown field", every, map[string]any{"group": "chat:lobby", "event": "message", "data": 1, "seq": 5}, http.StatusBadRequest, CodeBadRequest},
			{"malformed JSON", every, `{"group": "chat:lobby", "event": "message", "data": {`, http.StatusBadRequest, CodeBadRequest},
			{"trailing data", every, `{"group": "chat:lobby", "event": "message", "data": 1}]`, http.StatusBadRequest, CodeBadRequest},
			{"not an object", every, `["chat:lobby"]`, http.StatusBadRequest, CodeBadRequest},
			{"body too large", every, `{"group": "chat:lobby", "event": "message", "data": "` + strings.Repeat("x", 1<<20) + `"}`, http.StatusRequestEntityTooLarge, CodeTooLarge},
		}
		for _, tt := range tests {
			status, body := e.publishAs(tt.bearer, "/api/publish", tt.body)
			if status != tt.status || errCode(body) != tt.code {
				t.Errorf("%s: %d %v, want %d %q", tt.name, status, body, tt.status, tt.code)
			}
		}
		res := e.doRaw("POST", "/api/publish", []byte(`{}`), "Authorization", every, "Content-Type", "text/plain")
		wantAPIError(t, res, http.StatusUnsupportedMediaType, CodeUnsupportedMedia)

		// Allowed: the log's seq and epoch, and the subscriber gets it.
		var epoch string
		for i, tt := range []struct {
			bearer string
			body   map[string]any
		}{
			{lobbyOnly, ok},
			{chatOnly, map[string]any{"group": "chat:lobby", "event": "message", "data": map[string]any{"text": "again"}}},
			{every, map[string]any{"group": "user:someone", "event": "notification", "data": map[string]any{"title": "t"}}},
			{adminBearer, map[string]any{"group": "user:someone", "event": "custom.thing", "data": nil}},
			{every, map[string]any{"group": "job:abc", "event": "note", "data": []int{1}}},
		} {
			status, body := e.publishAs(tt.bearer, "/api/publish", tt.body)
			if status != http.StatusOK || body["group"] != tt.body["group"] || body["epoch"] == "" {
				t.Fatalf("publish %d: %d %v", i, status, body)
			}
			want := map[int]float64{0: 1, 1: 2, 2: 1, 3: 2, 4: 1}[i]
			if body["seq"] != want {
				t.Errorf("publish %d: seq %v, want %v", i, body["seq"], want)
			}
			if i == 2 {
				epoch = body["epoch"].(string)
			}
		}
		for _, want := range []struct {
			seq   int64
			event string
			data  string
		}{{1, "notification", `{"title":"t"}`}, {2, "custom.thing", "null"}} {
			f := admin.read()
			if f.Type != wire.TypeEvent || f.Seq != want.seq || f.Epoch != epoch || f.Event != want.event || string(f.Data) != want.data {
				t.Errorf("the subscriber got %+v, want seq %d %s %s of epoch %s", f, want.seq, want.event, want.data, epoch)
			}
		}
	})
}

// publishBatch posts events as one batch and returns the status and the
// results.
func (e *testEnv) publishBatch(bearer string, events ...any) (int, []map[string]any, map[string]any) {
	e.t.Helper()
	status, body := e.publishAs(bearer, "/api/publish/batch", map[string]any{"events": events})
	var results []map[string]any
	for _, r := range asList(body["results"]) {
		results = append(results, r.(map[string]any))
	}
	return status, results, body
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

// POST /api/publish/batch: each event gets its own result or error, in
// order; the batch's own limits and shape are checked first.
func TestPublishBatchAPI(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker(), withWebConfig(Config{PublishBatch: 5}))
		tok := e.adminToken("publish:chat:*", "publish:job:*")
		msg := func(room string) map[string]any {
			return map[string]any{"group": "chat:" + room, "event": "message", "data": map[string]any{"text": room}}
		}
		sub := e.dial()
		sub.send(map[string]any{"op": "subscribe", "group": "chat:a"})
		sub.readUntil(func(f frame) bool { return f.Type == wire.TypeSubscribed })
		status, results, body := e.publishBatch(tok,
			msg("a"),
			map[string]any{"group": "job:j1", "event": "state", "data": map[string]any{"state": "completed"}},
			map[string]any{"group": "user:u1", "event": "notification", "data": map[string]any{"title": "t"}},
			map[string]any{"group": "chat:a", "event": "message", "data": 1, "extra": true},
			msg("a"),
		)
		if status != http.StatusOK || len(results) != 5 {
			t.Fatalf("batch: %d %v", status, body)
		}
		wantCodes := []string{"", CodeForbidden, CodeForbidden, CodeBadRequest, ""}
		for i, r := range results {
			if errCode(r) != wantCodes[i] {
				t.Errorf("result %d: %v, want code %q", i, r, wantCodes[i])
			}
			if wantCodes[i] != "" {
				if msg, _ := r["error"].(map[string]any)["message"].(string); msg == "" || len(r) != 1 {
					t.Errorf("result %d: %v, want only an error with a message", i, r)
				}
			}
		}
		// The subscriber's join takes a seq of the room too, before or
		// between them.
		first, second := results[0]["seq"].(float64), results[4]["seq"].(float64)
		if first < 1 || second <= first || results[0]["epoch"] != results[4]["epoch"] || results[0]["group"] != "chat:a" {
			t.Errorf("results %v and %v, want rising seqs of chat:a in one epoch", results[0], results[4])
		}
		// The subscriber gets both, in order (its own presence aside).
		var got []string
		for len(got) < 2 {
			if f := sub.read(); f.Event == "message" {
				got = append(got, fmt.Sprintf("%d %s %s", f.Seq, f.Epoch, f.Data))
			}
		}
		if got[0] != fmt.Sprintf(`%.0f %s {"text":"a"}`, first, results[0]["epoch"]) || got[1] != fmt.Sprintf(`%.0f %s {"text":"a"}`, second, results[0]["epoch"]) {
			t.Errorf("the subscriber got %q", got)
		}
		// The batch's own limits, and its shape, fail it as a whole.
		six := make([]any, 6)
		for i := range six {
			six[i] = msg("b")
		}
		for _, tt := range []struct {
			name   string
			bearer string
			body   any
			status int
			code   string
		}{
			{"over the cap", tok, map[string]any{"events": six}, http.StatusRequestEntityTooLarge, CodeTooLarge},
			{"empty", tok, map[string]any{"events": []any{}}, http.StatusBadRequest, CodeBadRequest},
			{"no events", tok, map[string]any{}, http.StatusBadRequest, CodeBadRequest},
			{"events not a list", tok, map[string]any{"events": msg("b")}, http.StatusBadRequest, CodeBadRequest},
			{"malformed JSON", tok, `{"events": [`, http.StatusBadRequest, CodeBadRequest},
			{"unknown field", tok, map[string]any{"events": []any{msg("b")}, "atomic": true}, http.StatusBadRequest, CodeBadRequest},
			{"body too large", tok, `{"events": [{"group": "chat:b", "event": "message", "data": "` + strings.Repeat("x", 1<<20) + `"}]}`, http.StatusRequestEntityTooLarge, CodeTooLarge},
			{"no token", "", map[string]any{"events": []any{msg("b")}}, http.StatusOK, ""},
			{"bad token", "Bearer tsk_nope", map[string]any{"events": []any{msg("b")}}, http.StatusUnauthorized, CodeUnauthenticated},
		} {
			status, body := e.publishAs(tt.bearer, "/api/publish/batch", tt.body)
			if status != tt.status || errCode(body) != tt.code {
				t.Errorf("%s: %d %v, want %d %q", tt.name, status, body, tt.status, tt.code)
			}
			if tt.name == "no token" && errCode(asList(body["results"])[0].(map[string]any)) != CodeForbidden {
				t.Errorf("a batch with no token: %v, want its event forbidden", body)
			}
		}
		// Nothing of the refused batches reached chat:b.
		snap, err := e.log.Read(t.Context(), "chat:b", 0)
		if err != nil || len(snap.Events) != 0 {
			t.Errorf("chat:b holds %d events (%v), want none", len(snap.Events), err)
		}
	})
}

// wantEvents fails unless events (EventFrames) are the seqs from, from+1, …
// of group in epoch.
func wantEvents(t *testing.T, events []any, group, epoch string, from int64, n int) {
	t.Helper()
	if len(events) != n {
		t.Fatalf("%d events, want %d", len(events), n)
	}
	for i, raw := range events {
		b, _ := json.Marshal(raw)
		var f wire.EventFrame
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			t.Fatalf("event %d is not an event frame: %v (%s)", i, err, b)
		}
		if f.Type != wire.TypeEvent || f.Group != group || f.Epoch != epoch || f.Seq != from+int64(i) || f.TS == "" {
			t.Errorf("event %d: %s, want seq %d of %s in epoch %s", i, b, from+int64(i), group, epoch)
		}
	}
}

// history reads path as client (with header pairs) and returns the status
// and body.
func (e *testEnv) history(client *http.Client, group, query string, header ...string) (int, map[string]any) {
	e.t.Helper()
	status, body, _ := e.doAs(client, "GET", "/api/groups/"+url.PathEscape(group)+"/history"+query, nil, header...)
	return status, body
}

// GET /api/groups/{group}/history: pages of the group's log with the
// socket's resume rules, for whoever may watch the group or holds a
// history scope for it.
func TestHistoryAPI(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e, smtp := smtpEnv(t, srv, withoutWorker())
		owner := e.signIn(e.client, smtp, "history@example.com")["id"].(string)
		group := "user:" + owner
		pub := e.adminToken("publish:*")
		var epoch string
		for i := range 5 {
			status, body := e.publishAs(pub, "/api/publish", map[string]any{"group": group, "event": "notification", "data": map[string]any{"title": fmt.Sprint(i)}})
			if status != http.StatusOK {
				t.Fatalf("publish: %d %v", status, body)
			}
			epoch = body["epoch"].(string)
		}
		pages := []struct {
			query     string
			from      int64
			n         int
			recovered bool
		}{
			{"", 1, 5, true},
			{"?after=0", 1, 5, true},
			{"?after=2&limit=2", 3, 2, true},
			{"?after=4&limit=1000", 5, 1, true},
			{"?after=5", 0, 0, true},
			{"?after=2&epoch=" + epoch, 3, 3, true},
			{"?after=2&epoch=older", 1, 5, false}, // the log the caller knew is gone: start over
			{"?after=6", 1, 5, false},             // beyond the log: start over
			{"?after=9223372036854775807&limit=2", 1, 2, false},
		}
		for _, p := range pages {
			status, body := e.history(e.client, group, p.query)
			if status != http.StatusOK || body["group"] != group || body["epoch"] != epoch || body["last_seq"] != 5.0 || body["recovered"] != p.recovered {
				t.Errorf("history%s: %d %v, want last_seq 5 of epoch %s, recovered %v", p.query, status, body, epoch, p.recovered)
				continue
			}
			wantEvents(t, asList(body["events"]), group, epoch, p.from, p.n)
		}
		// Trimmed past the caller's position.
		if err := e.rdb.XDel(t.Context(), "ts:{"+group+"}:log", "1-0", "2-0").Err(); err != nil {
			t.Fatal(err)
		}
		if _, body := e.history(e.client, group, "?after=1"); body["recovered"] != false {
			t.Errorf("history after a trimmed seq: %v, want recovered false", body)
		} else {
			wantEvents(t, asList(body["events"]), group, epoch, 3, 3)
		}
		// A group without a log.
		if status, body := e.history(e.client, "chat:empty", ""); status != http.StatusOK || body["epoch"] != "" || body["last_seq"] != 0.0 || body["recovered"] != true || len(asList(body["events"])) != 0 {
			t.Errorf("the history of an empty room: %d %v", status, body)
		}

		userAll := e.mint(e.client, []string{"history:*"})
		presenceOnly := e.mint(e.client, []string{"presence:chat:*"})
		other := e.newBrowser()
		otherTok := func() string { // another signed-in user's token with history:*
			e.signIn(other, smtp, "other@example.com")
			return e.mint(other, []string{"history:*"})
		}()
		program := &http.Client{}
		for _, tt := range []struct {
			name   string
			client *http.Client
			header []string
			group  string
			query  string
			status int
			code   string
		}{
			{"the owner's session", e.client, nil, group, "", http.StatusOK, ""},
			{"the owner's history:* token", program, []string{"Authorization", userAll}, group, "", http.StatusOK, ""},
			{"the owner's presence-only token", program, []string{"Authorization", presenceOnly}, group, "", http.StatusForbidden, CodeForbidden},
			{"another user's session", other, nil, group, "", http.StatusForbidden, CodeForbidden},
			{"another user's history:* token", program, []string{"Authorization", otherTok}, group, "", http.StatusForbidden, CodeForbidden},
			{"a guest", e.newBrowser(), nil, group, "", http.StatusForbidden, CodeForbidden},
			{"a guest, a chat room", e.newBrowser(), nil, "chat:lobby", "", http.StatusOK, ""},
			{"an admin's history:* token", program, []string{"Authorization", e.adminToken("history:*")}, group, "", http.StatusOK, ""},
			{"an admin's history:chat:* token", program, []string{"Authorization", e.adminToken("history:chat:*")}, group, "", http.StatusForbidden, CodeForbidden},
			{"an admin's exact-group token", program, []string{"Authorization", e.adminToken("history:" + group)}, group, "", http.StatusOK, ""},
			{"an admin's publish token", program, []string{"Authorization", pub}, group, "", http.StatusForbidden, CodeForbidden},
			{"the admin", program, []string{"Authorization", adminBearer}, group, "", http.StatusOK, ""},
			{"a bad token", program, []string{"Authorization", "Bearer tsk_x"}, group, "", http.StatusUnauthorized, CodeUnauthenticated},
			{"a job that does not exist", e.client, nil, "job:nope", "", http.StatusNotFound, CodeNotFound},
			{"a bad group", e.client, nil, "chat:a b", "", http.StatusBadRequest, CodeBadRequest},
			{"an unknown kind", e.client, nil, "metrics:x", "", http.StatusBadRequest, CodeBadRequest},
			{"a negative after", e.client, nil, group, "?after=-1", http.StatusBadRequest, CodeBadRequest},
			{"a fractional after", e.client, nil, group, "?after=1.5", http.StatusBadRequest, CodeBadRequest},
			{"after beyond int64", e.client, nil, group, "?after=9223372036854775808", http.StatusBadRequest, CodeBadRequest},
			{"limit 0", e.client, nil, group, "?limit=0", http.StatusBadRequest, CodeBadRequest},
			{"limit over the cap", e.client, nil, group, "?limit=1001", http.StatusBadRequest, CodeBadRequest},
			{"limit not a number", e.client, nil, group, "?limit=ten", http.StatusBadRequest, CodeBadRequest},
		} {
			status, body := e.history(tt.client, tt.group, tt.query, tt.header...)
			if status != tt.status || errCode(body) != tt.code {
				t.Errorf("%s: %d %v, want %d %q", tt.name, status, body, tt.status, tt.code)
			}
		}
	})
}

// GET /api/groups/{group}/presence: who is in a chat room, for whoever
// may watch it or holds a presence scope for it.
func TestPresenceAPI(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		alice := e.newBrowser()
		e.doAs(alice, "POST", "/api/me", map[string]string{"name": "alice"})
		aliceID := e.me(alice)
		c := e.dialAs(alice)
		c.send(map[string]any{"op": "subscribe", "group": "chat:room1"})
		path := "/api/groups/" + url.PathEscape("chat:room1") + "/presence"
		eventually(t, "alice to be present", func() bool {
			_, body, _ := e.do("GET", path, nil)
			return fmt.Sprint(body["users"]) == fmt.Sprintf("[map[id:%s name:alice]]", aliceID)
		})
		program := &http.Client{}
		for _, tt := range []struct {
			name   string
			client *http.Client
			bearer string
			path   string
			status int
			code   string
		}{
			{"a guest", e.newBrowser(), "", path, http.StatusOK, ""},
			{"presence:chat:*", program, e.adminToken("presence:chat:*"), path, http.StatusOK, ""},
			{"presence:chat:room1", program, e.adminToken("presence:chat:room1"), path, http.StatusOK, ""},
			{"presence:*", program, e.adminToken("presence:*"), path, http.StatusOK, ""},
			{"presence of another room", program, e.adminToken("presence:chat:room2"), path, http.StatusForbidden, CodeForbidden},
			{"history only", program, e.adminToken("history:*"), path, http.StatusForbidden, CodeForbidden},
			{"a bad token", program, "Bearer tsk_x", path, http.StatusUnauthorized, CodeUnauthenticated},
			{"a user group", e.client, "", "/api/groups/user%3Ax/presence", http.StatusBadRequest, CodeBadRequest},
			{"a job group", e.client, "", "/api/groups/job%3Ax/presence", http.StatusBadRequest, CodeBadRequest},
			{"a bad room", e.client, "", "/api/groups/chat%3Aa.b/presence", http.StatusBadRequest, CodeBadRequest},
		} {
			var header []string
			if tt.bearer != "" {
				header = []string{"Authorization", tt.bearer}
			}
			status, body, _ := e.doAs(tt.client, "GET", tt.path, nil, header...)
			if status != tt.status || errCode(body) != tt.code {
				t.Errorf("%s: %d %v, want %d %q", tt.name, status, body, tt.status, tt.code)
			}
			if status == http.StatusOK && (body["group"] != "chat:room1" || len(asList(body["users"])) != 1) {
				t.Errorf("%s: %v, want alice in chat:room1", tt.name, body)
			}
		}
	})
}

// closeOf reads until the server closes c and returns the close frame's
// code and reason.
func closeOf(t *testing.T, c *wsClient) (int, string) {
	t.Helper()
	for {
		_, err := c.tryRead(10 * time.Second)
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("socket ended without a close frame: %v", err)
		}
		return ce.Code, ce.Text
	}
}

// POST /api/users/{id}/disconnect closes that user's sockets on every
// replica with 1008 and ends their SSE and long-poll streams, and nobody
// else's; only admins may. Token revocation holds across replicas too.
func TestDisconnectUserOnEveryReplica(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		a := newEnv(t, srv, withoutWorker())
		b := newEnv(t, srv, withoutWorker())
		victim, bystander := a.newBrowser(), a.newBrowser()
		id := a.me(victim)
		a.doAs(victim, "POST", "/api/me", map[string]string{"name": "victim"}) // stored, so both replicas know it
		// The guest cookie is valid on both replicas (one secret), and
		// cookie jars ignore ports: one browser, two replicas.
		onA, onB := a.dialAs(victim), b.dialAs(victim)
		other := b.dialAs(bystander)
		for _, c := range []*wsClient{onA, onB, other} {
			c.send(map[string]any{"op": "subscribe", "group": "chat:kick"})
			c.readUntil(func(f frame) bool { return f.Type == wire.TypeSubscribed })
		}

		// An SSE stream on b and a long-poll on a, of the same user.
		sseReq, _ := http.NewRequest("GET", b.http.URL+"/api/groups/"+url.PathEscape("user:"+id)+"/events", nil)
		sseReq.Header.Set("Accept", "text/event-stream")
		sse, err := victim.Do(sseReq)
		if err != nil || sse.StatusCode != http.StatusOK {
			t.Fatalf("SSE: %v %v", sse, err)
		}
		defer sse.Body.Close()
		sseEnded := make(chan error, 1)
		go func() { _, err := io.Copy(io.Discard, sse.Body); sseEnded <- err }()
		type answer struct {
			status int
			body   map[string]any
		}
		pollDone := make(chan answer, 1)
		go func() {
			req, _ := http.NewRequest("GET", a.http.URL+"/api/groups/"+url.PathEscape("user:"+id)+"/events?after=0&wait=60", nil)
			res, err := victim.Do(req)
			if err != nil {
				pollDone <- answer{}
				return
			}
			defer res.Body.Close()
			var body map[string]any
			_ = json.NewDecoder(res.Body).Decode(&body)
			pollDone <- answer{res.StatusCode, body}
		}()
		eventually(t, "the streams to start", func() bool {
			return a.web.openByTransport()[transportLongPoll] == 1 && b.web.openByTransport()[transportSSE] == 1
		})

		// Refused: no admin rights.
		program := &http.Client{}
		path := "/api/users/" + id + "/disconnect"
		for _, tt := range []struct {
			name   string
			client *http.Client
			bearer string
			status int
			code   string
		}{
			{"the user", victim, "", http.StatusForbidden, CodeForbidden},
			{"a publish token", program, a.adminToken("publish:*", "history:*", "presence:*"), http.StatusForbidden, CodeForbidden},
			{"a bad token", program, "Bearer tsk_x", http.StatusUnauthorized, CodeUnauthenticated},
		} {
			var header []string
			if tt.bearer != "" {
				header = []string{"Authorization", tt.bearer}
			}
			if status, body, _ := a.doAs(tt.client, "POST", path, nil, header...); status != tt.status || errCode(body) != tt.code {
				t.Errorf("%s: %d %v, want %d %q", tt.name, status, body, tt.status, tt.code)
			}
		}
		if status, body, _ := a.doAs(program, "POST", "/api/users/a%20b/disconnect", nil, "Authorization", adminBearer); status != http.StatusBadRequest {
			t.Errorf("a bad user id: %d %v", status, body)
		}

		// An admin:* token minted on a disconnects on b: both replicas act.
		kick := a.adminToken("admin:*")
		if status, body, _ := b.doAs(program, "POST", path, nil, "Authorization", kick); status != http.StatusAccepted || body["user"] != id {
			t.Fatalf("disconnect: %d %v", status, body)
		}
		for name, c := range map[string]*wsClient{"replica a": onA, "replica b": onB} {
			if code, reason := closeOf(t, c); code != wire.ClosePolicy || reason != "disconnected by an administrator" {
				t.Errorf("the user's socket on %s closed with %d %q, want 1008", name, code, reason)
			}
		}
		select {
		case err := <-sseEnded:
			if err != nil {
				t.Errorf("the SSE stream ended with %v, want a clean end", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("the user's SSE stream on replica b is still open")
		}
		select {
		case ans := <-pollDone:
			if ans.status != http.StatusForbidden || errCode(ans.body) != CodeForbidden {
				t.Errorf("the long-poll on replica a: %d %v, want 403 forbidden", ans.status, ans.body)
			}
		case <-time.After(10 * time.Second):
			t.Error("the user's long-poll on replica a is still waiting")
		}
		// Someone else's socket on b is untouched.
		other.send(map[string]any{"op": "ping", "ref": "still here"})
		if f := other.readUntil(func(f frame) bool { return f.Type == wire.TypePong }); string(f[len(f)-1].Ref) != `"still here"` {
			t.Errorf("the bystander's socket: %+v", f)
		}

		// A scoped token minted on a, revoked on b, is refused on a.
		tok, tokID := a.mintID(program, []string{"publish:chat:*"}, "Authorization", adminBearer)
		msg := map[string]any{"group": "chat:kick", "event": "message", "data": map[string]any{"text": "x"}}
		if status, body := b.publishAs(tok, "/api/publish", msg); status != http.StatusOK {
			t.Fatalf("publish on b: %d %v", status, body)
		}
		if status, _, _ := b.doAs(program, "DELETE", "/api/tokens/"+tokID, nil, "Authorization", adminBearer); status != http.StatusNoContent {
			t.Fatalf("revoke on b: %d", status)
		}
		if status, body := a.publishAs(tok, "/api/publish", msg); status != http.StatusUnauthorized || errCode(body) != CodeUnauthenticated {
			t.Errorf("the revoked token on a: %d %v", status, body)
		}
	})
}

// With Redis down, the server API answers 503 unavailable with
// Retry-After, never 500; a batch answers each event that passed its
// checks so, and the others with their own errors.
func TestServerAPIRedisDown(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker(), withProductionRedis())
		srv.Stop()
		program := &http.Client{}
		msg := map[string]any{"group": "chat:a", "event": "message", "data": 1}
		status, body, h := e.doAs(program, "POST", "/api/publish", msg, "Authorization", adminBearer)
		if status != http.StatusServiceUnavailable || errCode(body) != CodeUnavailable || h.Get("Retry-After") == "" {
			t.Errorf("publish: %d %v Retry-After %q", status, body, h.Get("Retry-After"))
		}
		status, body, h = e.doAs(program, "POST", "/api/publish/batch", map[string]any{"events": []any{
			msg, map[string]any{"group": "job:x", "event": "state", "data": 1}, msg,
		}}, "Authorization", adminBearer)
		results := asList(body["results"])
		if status != http.StatusOK || len(results) != 3 || h.Get("Retry-After") == "" {
			t.Fatalf("batch: %d %v Retry-After %q", status, body, h.Get("Retry-After"))
		}
		for i, want := range []string{CodeUnavailable, CodeForbidden, CodeUnavailable} {
			if got := errCode(results[i].(map[string]any)); got != want {
				t.Errorf("batch event %d: %v, want %s", i, results[i], want)
			}
		}
		for _, path := range []string{"/api/groups/chat%3Aa/history", "/api/groups/chat%3Aa/presence"} {
			status, body, h := e.doAs(program, "GET", path, nil, "Authorization", adminBearer)
			if status != http.StatusServiceUnavailable || errCode(body) != CodeUnavailable || h.Get("Retry-After") == "" {
				t.Errorf("GET %s: %d %v Retry-After %q", path, status, body, h.Get("Retry-After"))
			}
		}
		status, body, _ = e.doAs(program, "POST", "/api/users/u1/disconnect", nil, "Authorization", adminBearer)
		if status != http.StatusServiceUnavailable || errCode(body) != CodeUnavailable {
			t.Errorf("disconnect: %d %v", status, body)
		}
	})
}
