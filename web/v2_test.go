package web

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// rawMessages reads server messages from c until n frames of the
// published events (events "message" and "notification") arrived, and
// returns every message.
func rawMessages(t *testing.T, c *wsClient, n int) [][]byte {
	t.Helper()
	var msgs [][]byte
	got := 0
	for got < n {
		_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			t.Fatalf("read: %v (after %d of %d events)", err, got, n)
		}
		msgs = append(msgs, data)
		for frame := range wire.SplitFrames(data) {
			if f, err := wire.DecodeFrame(frame); err == nil && f.Type == wire.TypeEvent && (f.Event == wire.EventMessage || f.Event == wire.EventNotification) {
				got++
			}
		}
	}
	return msgs
}

// A socket that offers taskstream.v2 gets it: frames batched into
// messages, lean event frames (no type; the epoch only when it differs
// from the last one the socket was given for the group, here when the
// group's first log starts and when the log was lost; ts in base 36), a
// 100-byte chat text in at most 200 bytes on the wire. A socket that does
// not offer it on the same group gets v1 frames byte for byte.
func TestSubprotocolV2(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		group := wire.ChatGroup("load-1234abcd").String()
		// A group without a log when subscribed: its first event brings
		// the epoch. (Asked first: both sockets are then this guest's.)
		userGroup := wire.UserGroup(e.me(e.client)).String()
		v2 := e.dial("Sec-WebSocket-Protocol", wire.SubprotocolV2)
		v1 := e.dial()
		if p := v2.conn.Subprotocol(); p != wire.SubprotocolV2 {
			t.Fatalf("v2 socket negotiated %q", p)
		}
		if p := v1.conn.Subprotocol(); p != "" {
			t.Fatalf("v1 socket negotiated %q", p)
		}
		// Subscribed before the events: the first messages are kept for
		// the checks below (a v2 message may hold events after it).
		first := map[*wsClient][][]byte{}
		for _, c := range []*wsClient{v1, v2} {
			c.send(map[string]any{"op": "subscribe", "group": group, "ref": 1})
			c.send(map[string]any{"op": "subscribe", "group": userGroup, "ref": 2})
			for subscribed := 0; subscribed < 2; {
				_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, msg, err := c.conn.ReadMessage()
				if err != nil {
					t.Fatal(err)
				}
				for frame := range wire.SplitFrames(msg) {
					if f, err := wire.DecodeFrame(frame); err == nil && f.Type == wire.TypeSubscribed {
						subscribed++
						if f.Group == userGroup && f.Epoch != "" {
							t.Fatalf("%s has a log: %s", userGroup, frame)
						}
					}
				}
				first[c] = append(first[c], msg)
			}
		}
		// The room's log starts with its members' join (presence sends it
		// within its interval: now), so the chat messages below are not
		// the first events of a log and carry no epoch.
		if err := e.pres.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		text := strings.Repeat("x", 100)
		var published []*progress.Event
		publish := func(n int) {
			for i := range n {
				ev, err := e.log.Publish(context.Background(), group, wire.EventMessage, map[string]string{"text": text[:100-len(strconv.Itoa(i))] + strconv.Itoa(i)})
				if err != nil {
					t.Fatal(err)
				}
				published = append(published, ev)
			}
		}
		publish(20)
		// The log is lost (a Redis restart without persistence, for this
		// group only): the next events have a new epoch.
		if err := e.rdb.Del(t.Context(), "ts:{"+group+"}:meta", "ts:{"+group+"}:log").Err(); err != nil {
			t.Fatal(err)
		}
		publish(20)
		for range 3 {
			ev, err := e.log.Publish(context.Background(), userGroup, wire.EventNotification, map[string]string{"title": "hi"})
			if err != nil {
				t.Fatal(err)
			}
			published = append(published, ev)
		}
		if published[23].Epoch == published[0].Epoch {
			t.Fatalf("no new log after the loss: epoch %s before and after", published[0].Epoch)
		}
		byPos := map[string]*progress.Event{}
		for _, ev := range published {
			byPos[ev.Group+"/"+ev.Epoch+"/"+strconv.FormatInt(ev.Seq, 10)] = ev
		}

		// v1: one frame per message, each byte for byte the event's frame.
		var v1Events int
		for _, msg := range append(first[v1], rawMessages(t, v1, len(published))...) {
			if bytes.IndexByte(msg, '\n') >= 0 {
				t.Fatalf("a v1 message with several frames: %q", msg)
			}
			f, err := wire.DecodeFrame(msg)
			if err != nil || f.Type == wire.TypeEvent && !bytes.HasPrefix(msg, []byte(`{"type":"event"`)) {
				t.Fatalf("v1 frame %q: %v", msg, err)
			}
			if ev := byPos[f.Group+"/"+f.Epoch+"/"+strconv.FormatInt(f.Seq, 10)]; f.Type == wire.TypeEvent && ev != nil {
				v1Events++
				if !bytes.Equal(msg, ev.Frame()) {
					t.Fatalf("v1 frame\n%s\nwant\n%s", msg, ev.Frame())
				}
			}
		}
		if v1Events != len(published) {
			t.Fatalf("v1 socket got %d of the %d events", v1Events, len(published))
		}

		// v2: lean frames, the epoch rule, the sizes.
		var dec wire.Decoder
		last := map[string]string{} // the epoch this socket was last given, per group
		frames, events, maxSize := 0, 0, 0
		msgs := append(first[v2], rawMessages(t, v2, len(published))...)
		for _, msg := range msgs {
			for raw := range wire.SplitFrames(msg) {
				frames++
				lean, err := wire.DecodeFrame(raw)
				if err != nil {
					t.Fatalf("v2 frame %q: %v", raw, err)
				}
				f, _ := dec.Decode(raw)
				switch f.Type {
				case wire.TypeSubscribed:
					last[f.Group] = f.Epoch
					continue
				case wire.TypeEvent:
				default:
					continue
				}
				if bytes.Contains(raw, []byte(`"type"`)) {
					t.Fatalf("a v2 event frame with a type: %s", raw)
				}
				if carries := lean.Epoch != ""; carries != (last[f.Group] != f.Epoch) {
					t.Fatalf("event frame %s: epoch given %v, the socket's last epoch %q, the event's %q", raw, carries, last[f.Group], f.Epoch)
				} else if f.Group == userGroup && f.Seq == 1 && !carries {
					t.Fatalf("the first event of a group subscribed without a log has no epoch: %s", raw)
				}
				last[f.Group] = f.Epoch
				ev := byPos[f.Group+"/"+f.Epoch+"/"+strconv.FormatInt(f.Seq, 10)]
				if ev == nil {
					continue // presence traffic of the room
				}
				events++
				if f.Group == userGroup {
					continue
				}
				if f.Event != ev.Name || !bytes.Equal(f.Data, ev.Data) || f.TS != ev.Time.UTC().Truncate(time.Millisecond).Format(time.RFC3339Nano) {
					t.Fatalf("v2 frame %s decoded to %+v, want %s", raw, f, ev.Frame())
				}
				// Sent alone, a frame is a message of its own: a 4-byte
				// header at 126 bytes and more, 2 below.
				size := len(raw) + 4
				if len(raw) < 126 {
					size = len(raw) + 2
				}
				maxSize = max(maxSize, size)
				if size > 200 {
					t.Fatalf("a 100-byte chat text takes %d bytes on the wire: %s", size, raw)
				}
			}
		}
		if events != len(published) {
			t.Fatalf("v2 socket got %d of the %d events", events, len(published))
		}
		t.Logf("v2: %d frames in %d messages, largest chat frame %d bytes on the wire; v1: %d bytes", frames, len(msgs), maxSize, len(published[0].Frame())+4)
	})
}

// countingConn counts the writes that reach the network.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// What a writer takes from the queue in one go leaves in one write(2),
// in both versions: v1 as one message per frame, v2 as one message.
func TestWriterOneWritePerBatch(t *testing.T) {
	for _, tc := range []struct {
		name     string
		protocol string
	}{{"v1", ""}, {"v2", wire.SubprotocolV2}} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 50
			s := &Server{cfg: Config{}.withDefaults()}
			frames := make([][]byte, n)
			for i := range frames {
				frames[i] = []byte(`{"type":"pong","ref":` + strconv.Itoa(i) + `}`)
			}
			counted := make(chan *countingConn, 1)
			done := make(chan struct{})
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ws, out, v2, err := upgradeSocket(w, r)
				if err != nil {
					return
				}
				cc := &countingConn{Conn: out.Conn}
				out.Conn = cc
				c := &conn{s: s, ws: ws, out: out, v2: v2, send: newSendQueue(1024, 1<<20), closed: make(chan struct{})}
				for _, f := range frames {
					c.send.push(f)
				}
				c.startWriting() // one writer takes the whole queue
				counted <- cc
				<-done
				c.close(closeNormal, "")
				c.send.writers.Wait()
				_ = ws.Close()
			})
			hs := httptest.NewServer(h)
			defer hs.Close()
			d := websocket.Dialer{Subprotocols: []string{tc.protocol}}
			if tc.protocol == "" {
				d.Subprotocols = nil
			}
			ws, _, err := d.Dial("ws"+strings.TrimPrefix(hs.URL, "http"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			cc := <-counted
			var got []string
			msgs := 0
			for len(got) < n {
				_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, data, err := ws.ReadMessage()
				if err != nil {
					t.Fatalf("read: %v after %d frames", err, len(got))
				}
				msgs++
				for f := range wire.SplitFrames(data) {
					got = append(got, string(f))
				}
			}
			// Counted before the handler is let go: its close frame is a
			// write of its own.
			writes := cc.writes.Load()
			close(done)
			for i, f := range got {
				if f != string(frames[i]) {
					t.Fatalf("frame %d %s, want %s", i, f, frames[i])
				}
			}
			wantMsgs := n
			if tc.protocol != "" {
				wantMsgs = 1
			}
			if msgs != wantMsgs {
				t.Errorf("%d frames came in %d messages, want %d", n, msgs, wantMsgs)
			}
			if writes != 1 {
				t.Errorf("%d frames took %d writes, want 1", n, writes)
			}
			// The close frame follows the batch.
			_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, _, err := ws.ReadMessage(); closeCodeOf(err) != closeNormal {
				t.Fatalf("after the batch: %v, want close %d", err, closeNormal)
			}
		})
	}
}
