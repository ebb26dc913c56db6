package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"taskstream/client"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// wantError checks that err is a *client.Error with status and code.
func wantError(t *testing.T, what string, err error, status int, code string) *client.Error {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) || e.Status != status || e.Code != code || e.Message == "" {
		t.Fatalf("%s: error %v (%#v), want %d %s with a message", what, err, e, status, code)
	}
	return e
}

// Every route of a guest's: who am I, a name, job types, submit (with
// its option fields and an Idempotency-Key passed through), get, list,
// a cancel that conflicts, an artifact, a chat message, a long-poll, and
// typed errors for what the server refuses.
func TestGuestRoutes(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{})
		c := newClient(t, s, client.Config{})
		ctx := context.Background()

		if err := c.Health(ctx); err != nil {
			t.Fatal(err)
		}
		// Ready once the hub's subscription is up; unavailable until then.
		eventually(t, "ready", func() bool {
			err := c.Ready(ctx)
			if err != nil && !client.IsCode(err, wire.CodeUnavailable) {
				t.Fatalf("Ready: %v, want nil or unavailable", err)
			}
			return err == nil
		})
		doc, err := c.OpenAPI(ctx)
		var openapi struct {
			OpenAPI string         `json:"openapi"`
			Paths   map[string]any `json:"paths"`
		}
		if err != nil || json.Unmarshal(doc, &openapi) != nil || openapi.OpenAPI == "" || openapi.Paths["/api/jobs/{id}"] == nil {
			t.Fatalf("OpenAPI: %.200s %v", doc, err)
		}
		me, err := c.Me(ctx)
		if err != nil || !me.Guest || me.ID == "" {
			t.Fatalf("Me: %+v %v", me, err)
		}
		if again, _ := c.Me(ctx); again.ID != me.ID {
			t.Fatalf("the cookie jar did not keep the guest: %s then %s", me.ID, again.ID)
		}
		if u, err := c.SetName(ctx, "ada"); err != nil || u.Name != "ada" || u.ID != me.ID {
			t.Fatalf("SetName: %+v %v", u, err)
		}
		_, err = c.SetName(ctx, "")
		wantError(t, "empty name", err, http.StatusBadRequest, wire.CodeBadRequest)

		types, err := c.JobTypes(ctx)
		if err != nil || len(types) == 0 {
			t.Fatalf("JobTypes: %v %v", types, err)
		}
		names := map[string]bool{}
		for _, jt := range types {
			names[jt.Type] = json.Valid(jt.Params) && jt.Description != ""
		}
		if !names["steps"] || !names["report"] {
			t.Fatalf("job types %v", names)
		}

		job, err := c.Submit(ctx, client.SubmitRequest{Type: "report", Params: map[string]any{"rows": 50, "seed": 7}}, client.IdempotencyKey("k1"))
		if err != nil || job.ID == "" || job.Type != "report" || job.Owner != me.ID {
			t.Fatalf("Submit: %+v %v", job, err)
		}
		_, err = c.Submit(ctx, client.SubmitRequest{Type: "nope"})
		wantError(t, "unknown type", err, http.StatusBadRequest, wire.CodeBadRequest)
		_, err = c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: json.RawMessage(`{"steps":0}`)})
		if e := wantError(t, "steps 0", err, http.StatusBadRequest, wire.CodeBadRequest); !strings.Contains(e.Message, "steps") {
			t.Fatalf("the message does not name the field: %q", e.Message)
		}

		w, err := c.Watch(ctx, job.Group(), client.Position{})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		for {
			_, err := w.Next(ctx)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		got, err := c.Job(ctx, job.ID)
		if err != nil || got.State != wire.StateCompleted || !got.Terminal() || got.Artifact == "" || got.LastSeq == 0 {
			t.Fatalf("Job: %+v %v", got, err)
		}
		art, err := c.Artifact(ctx, job.ID)
		if err != nil {
			t.Fatal(err)
		}
		csv, err := io.ReadAll(art)
		art.Close()
		if err != nil || strings.Count(string(csv), "\n") < 50 {
			t.Fatalf("artifact of %d bytes: %v", len(csv), err)
		}
		_, err = c.Cancel(ctx, job.ID)
		wantError(t, "cancel a finished job", err, http.StatusConflict, wire.CodeConflict)
		_, err = c.Job(ctx, "no-such-job")
		wantError(t, "unknown job", err, http.StatusNotFound, wire.CodeNotFound)

		list, err := c.Jobs(ctx, 10)
		if err != nil || len(list) != 1 || list[0].ID != job.ID {
			t.Fatalf("Jobs: %+v %v", list, err)
		}

		// The job's history by long-poll: everything, then nothing newer.
		b, err := c.Poll(ctx, job.Group(), client.Position{}, 0)
		if err != nil || !b.Recovered || len(b.Events) == 0 || b.LastSeq != got.LastSeq || !b.Events[len(b.Events)-1].Final() {
			t.Fatalf("Poll: %+v %v", b, err)
		}
		if b, err := c.Poll(ctx, job.Group(), b.Position(), 0); err != nil || len(b.Events) != 0 {
			t.Fatalf("Poll after the end: %+v %v", b, err)
		}

		// Someone else's job.
		other := newClient(t, s, client.Config{})
		_, err = other.Job(ctx, job.ID)
		wantError(t, "someone else's job", err, http.StatusForbidden, wire.CodeForbidden)
		_, err = other.Cancel(ctx, job.ID)
		wantError(t, "cancel someone else's job", err, http.StatusForbidden, wire.CodeForbidden)

		// A chat message, seen by a watcher of the room.
		room := wire.ChatGroup("client-test").String()
		cw, err := other.Watch(ctx, room, client.Position{})
		if err != nil {
			t.Fatal(err)
		}
		defer cw.Close()
		if err := c.PostMessage(ctx, "client-test", "hello"); err != nil {
			t.Fatal(err)
		}
		for {
			ev, err := cw.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var m struct {
				Text string
				User struct{ Name string }
			}
			if ev.Event == wire.EventMessage && ev.Decode(&m) == nil && m.Text == "hello" && m.User.Name == "ada" {
				break
			}
		}
		err = c.PostMessage(ctx, "client-test", "")
		wantError(t, "empty message", err, http.StatusBadRequest, wire.CodeBadRequest)

		// Notify needs an admin token; a bad token is 401.
		_, err = c.Notify(ctx, client.Notification{User: me.ID, Title: "x"})
		wantError(t, "notify as a guest", err, http.StatusForbidden, wire.CodeForbidden)
		bad := newClient(t, s, client.Config{Token: "not-a-token"})
		_, err = bad.Me(ctx)
		wantError(t, "a bad token", err, http.StatusUnauthorized, wire.CodeUnauthenticated)
	})
}

// A signed-in user's tokens: create (the secret once), list, use, revoke
// (then 401 and a closed socket); an admin notifies the user, who sees
// it on their notification group.
func TestTokensAndNotify(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{smtp: true, noWorker: true})
		c := newClient(t, s, client.Config{})
		ctx := context.Background()
		_, err := c.CreateToken(ctx, client.TokenRequest{})
		wantError(t, "a guest's token", err, http.StatusForbidden, wire.CodeForbidden)
		u := signIn(t, s, c, "ada@example.com")
		if u.Guest || u.Email != "ada@example.com" {
			t.Fatalf("Login: %+v", u)
		}
		tok, err := c.CreateToken(ctx, client.TokenRequest{})
		if err != nil || tok.ID == "" || tok.Secret == "" {
			t.Fatalf("CreateToken: %+v %v", tok, err)
		}
		list, err := c.Tokens(ctx)
		if err != nil || len(list) != 1 || list[0].ID != tok.ID || list[0].Secret != "" {
			t.Fatalf("Tokens: %+v %v", list, err)
		}
		bearer := newClient(t, s, client.Config{Token: tok.Secret})
		if me, err := bearer.Me(ctx); err != nil || me.ID != u.ID {
			t.Fatalf("Me with the token: %+v %v", me, err)
		}

		// The token's watch of the user's group gets the admin's notification.
		w, err := bearer.Watch(ctx, u.Group(), client.Position{})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		admin := newClient(t, s, client.Config{Token: adminToken})
		pub, err := admin.Notify(ctx, client.Notification{User: u.ID, Title: "done", Body: "job 42"})
		if err != nil || pub.Group != u.Group() || pub.Seq != 1 {
			t.Fatalf("Notify: %+v %v", pub, err)
		}
		ev, err := w.Next(ctx)
		var n struct{ Title, Body string }
		if err != nil || ev.Event != wire.EventNotification || ev.Seq != 1 || ev.Decode(&n) != nil || n.Title != "done" {
			t.Fatalf("notification: %+v %v", ev, err)
		}
		_, err = admin.Notify(ctx, client.Notification{Title: "no one"})
		wantError(t, "notify nobody", err, http.StatusBadRequest, wire.CodeBadRequest)

		// Revoked: the socket is closed with 1008 and the watch ends with
		// it; the token is refused from then on.
		if err := c.RevokeToken(ctx, tok.ID); err != nil {
			t.Fatal(err)
		}
		_, err = w.Next(ctx)
		var ce *client.CloseError
		if !errors.As(err, &ce) || ce.Code != wire.ClosePolicy || ce.Resumable() {
			t.Fatalf("the watch after revocation: %v, want a 1008 *CloseError", err)
		}
		if _, again := w.Next(ctx); !errors.Is(again, err) {
			t.Fatalf("Next after the end: %v, want %v again", again, err)
		}
		_, err = bearer.Me(ctx)
		wantError(t, "a revoked token", err, http.StatusUnauthorized, wire.CodeUnauthenticated)
		err = c.RevokeToken(ctx, tok.ID)
		wantError(t, "revoke twice", err, http.StatusNotFound, wire.CodeNotFound)

		if err := c.Logout(ctx); err != nil {
			t.Fatal(err)
		}
		if me, err := c.Me(ctx); err != nil || !me.Guest {
			t.Fatalf("Me after logout: %+v %v", me, err)
		}
	})
}
