package client_test

import (
	"testing"
	"time"

	"taskstream/client"
	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// A watch resumes after every close but a policy one (1008, and the
// application's 4000–4999) or a frame too large (1009).
func TestCloseErrorResumable(t *testing.T) {
	for code, want := range map[int]bool{
		wire.CloseNormal: true, wire.CloseGoingAway: true, wire.CloseTryAgain: true, 1006: true,
		wire.ClosePolicy: false, wire.CloseTooBig: false, 4000: false, 4403: false, 4999: false,
	} {
		if got := (&client.CloseError{Code: code}).Resumable(); got != want {
			t.Errorf("close %d: resumable %v, want %v", code, got, want)
		}
	}
}

// A Conn offers taskstream.v2 unless Config.V1, and ReadFrame hands back
// the same full frames in both versions: type, epoch (lean frames leave
// it out) and ts in RFC 3339 (milliseconds in v2).
func TestConnBothVersions(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		s := newServer(t, srv, serverOptions{noWorker: true})
		for _, tc := range []struct {
			name string
			v1   bool
			want string
		}{{"v2", false, wire.SubprotocolV2}, {"v1", true, ""}} {
			t.Run(tc.name, func(t *testing.T) {
				c := newClient(t, s, client.Config{V1: tc.v1})
				me, err := c.Me(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				conn, err := c.Dial(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if p := conn.Subprotocol(); p != tc.want {
					t.Fatalf("subprotocol %q, want %q", p, tc.want)
				}
				group := wire.UserGroup(me.ID).String()
				if _, err := conn.Join(group, client.Position{}); err != nil {
					t.Fatal(err)
				}
				var published []*progress.Event
				for i := range 5 {
					ev, err := s.log.Publish(t.Context(), group, wire.EventNotification, map[string]any{"title": "n", "i": i})
					if err != nil {
						t.Fatal(err)
					}
					published = append(published, ev)
				}
				_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				for _, ev := range published {
					f, err := conn.ReadFrame()
					if err != nil {
						t.Fatal(err)
					}
					ts := ev.Time.UTC()
					if !tc.v1 {
						ts = ts.Truncate(time.Millisecond)
					}
					if f.Type != wire.TypeEvent || f.Group != group || f.Seq != ev.Seq || f.Epoch != ev.Epoch || f.Event != ev.Name ||
						string(f.Data) != string(ev.Data) || f.TS != ts.Format(time.RFC3339Nano) {
						t.Fatalf("frame %+v, want the event %s", f, ev.Frame())
					}
				}
			})
		}
	})
}
