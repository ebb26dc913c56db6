package client_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"taskstream/client"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// The server API through the client: an admin mints a scoped token; the
// token publishes (single and batch, each event answered on its own),
// reads history page by page, is refused what its scopes do not allow
// and the events the server reserves; an admin reads a room's presence
// and disconnects a user, whose watch then ends with 1008.
func TestServerAPI(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{noWorker: true})
		ctx := context.Background()
		admin := newClient(t, s, client.Config{Token: adminToken})
		tok, err := admin.CreateToken(ctx, client.TokenRequest{Name: "publisher", Scopes: []string{"publish:chat:*", "history:chat:*"}})
		if err != nil || tok.Secret == "" || tok.Name != "publisher" || len(tok.Scopes) != 2 {
			t.Fatalf("CreateToken: %+v %v", tok, err)
		}
		pub := newClient(t, s, client.Config{Token: tok.Secret})

		// A guest named ada watches the room.
		ada := newClient(t, s, client.Config{})
		me, err := ada.SetName(ctx, "ada")
		if err != nil {
			t.Fatal(err)
		}
		room := wire.ChatGroup("api").String()
		w, err := ada.Watch(ctx, room, client.Position{})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		eventually(t, "ada in the room", func() bool {
			users, err := admin.Presence(ctx, "api")
			if err != nil {
				t.Fatalf("Presence: %v", err)
			}
			return len(users) == 1 && users[0].ID == me.ID && users[0].Name == "ada"
		})

		p, err := pub.Publish(ctx, client.PublishEvent{Group: room, Event: wire.EventMessage, Data: map[string]any{"text": "from a backend"}})
		if err != nil || p.Group != room || p.Seq == 0 || p.Epoch == "" {
			t.Fatalf("Publish: %+v %v", p, err)
		}
		for {
			ev, err := w.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Seq == p.Seq {
				if ev.Event != wire.EventMessage || ev.Epoch != p.Epoch {
					t.Fatalf("the published event arrived as %+v", ev.EventFrame)
				}
				break
			}
		}
		_, err = pub.Publish(ctx, client.PublishEvent{Group: room, Event: wire.EventJoin, Data: nil})
		wantError(t, "a reserved event", err, http.StatusForbidden, wire.CodeForbidden)
		_, err = pub.Publish(ctx, client.PublishEvent{Group: "user:" + me.ID, Event: "note", Data: 1})
		wantError(t, "outside the scopes", err, http.StatusForbidden, wire.CodeForbidden)
		_, err = pub.Submit(ctx, client.SubmitRequest{Type: "steps", Params: map[string]any{"steps": 1}})
		wantError(t, "a scoped token submitting", err, http.StatusForbidden, wire.CodeForbidden)

		results, err := pub.PublishBatch(ctx, []client.PublishEvent{
			{Group: room, Event: "note", Data: 1},
			{Group: room, Event: wire.EventPresence, Data: 2},
			{Group: room, Event: "note", Data: 3},
		})
		if err != nil || len(results) != 3 {
			t.Fatalf("PublishBatch: %+v %v", results, err)
		}
		if results[0].Err != nil || results[2].Err != nil || results[2].Seq != results[0].Seq+1 || results[0].Seq <= p.Seq {
			t.Fatalf("batch results %+v", results)
		}
		if e := results[1].Err; e == nil || e.Code != wire.CodeForbidden || e.Status != http.StatusForbidden {
			t.Fatalf("the reserved event of the batch: %+v", results[1])
		}
		_, err = pub.PublishBatch(ctx, nil)
		wantError(t, "an empty batch", err, http.StatusBadRequest, wire.CodeBadRequest)

		// History, two at a time, to the end; a lost epoch restarts.
		var all []client.Event
		var from client.Position
		for {
			b, err := pub.History(ctx, room, from, 2)
			if err != nil || !b.Recovered || len(b.Events) > 2 {
				t.Fatalf("History from %+v: %+v %v", from, b, err)
			}
			all = append(all, b.Events...)
			if len(b.Events) == 0 || b.Events[len(b.Events)-1].Seq >= b.LastSeq {
				break
			}
			from = b.Events[len(b.Events)-1].Position()
		}
		for i, ev := range all {
			if ev.Seq != int64(i)+1 {
				t.Fatalf("history %d has seq %d", i, ev.Seq)
			}
		}
		if last := all[len(all)-1]; last.Seq != results[2].Seq {
			t.Fatalf("history ends at %d, the last publish was %d", last.Seq, results[2].Seq)
		}
		b, err := pub.History(ctx, room, client.Position{Seq: 2, Epoch: "gone"}, 0)
		if err != nil || b.Recovered || len(b.Events) == 0 || b.Events[0].Seq != 1 {
			t.Fatalf("History from a lost epoch: %+v %v", b, err)
		}
		_, err = pub.History(ctx, "user:"+me.ID, client.Position{}, 0)
		wantError(t, "history outside the scopes", err, http.StatusForbidden, wire.CodeForbidden)

		// Disconnected: ada's watch stops with the policy close.
		if err := admin.Disconnect(ctx, me.ID); err != nil {
			t.Fatal(err)
		}
		for {
			_, err := w.Next(ctx)
			var ce *client.CloseError
			if errors.As(err, &ce) {
				if ce.Code != wire.ClosePolicy {
					t.Fatalf("closed with %d", ce.Code)
				}
				break
			}
			if err != nil {
				t.Fatalf("after the disconnect: %v", err)
			}
		}
		err = pub.Disconnect(ctx, me.ID)
		wantError(t, "a publisher disconnecting", err, http.StatusForbidden, wire.CodeForbidden)
	})
}
