package main

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"taskstream/client"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// room is a chat room's members as a client keeps them: a subscribed
// frame's users, then joins and leaves as set operations.
type room map[string]string // id → name

func newRoom(t *testing.T, sub *wire.SubscribedFrame) room {
	t.Helper()
	if sub.Users == nil {
		t.Fatalf("subscribed frame without users: %+v", sub)
	}
	r := room{}
	for _, u := range sub.Users {
		r[u.ID] = u.Name
	}
	return r
}

func (r room) names() string {
	names := []string{}
	for _, n := range r {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

// wait reads conn's frames into r until its names are want, failing after
// timeout. A full presence list on the wire fails the test: lists are no
// longer sent.
func (r room) wait(t *testing.T, conn *client.Conn, want string, timeout time.Duration) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	for r.names() != want {
		f, err := conn.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for members %q (have %q): %v", want, r.names(), err)
		}
		var d struct{ User wire.Member }
		switch f.Event {
		case wire.EventJoin, wire.EventLeave:
			if err := json.Unmarshal(f.Data, &d); err != nil {
				t.Fatalf("%s data %s: %v", f.Event, f.Data, err)
			}
		case wire.EventPresence:
			t.Fatalf("a full presence list was sent: %s", f.Data)
		}
		switch f.Event {
		case wire.EventJoin:
			r[d.User.ID] = d.User.Name
		case wire.EventLeave:
			delete(r, d.User.ID)
		}
	}
}

func setName(t *testing.T, c *http.Client, base, name string) {
	t.Helper()
	res, err := c.Post(base+"/api/me", "application/json", strings.NewReader(`{"name":"`+name+`"}`))
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("set name: %v %v", err, res)
	}
	res.Body.Close()
}

// Two API processes on one Redis: a user connected through both is counted
// once, stays while one socket remains, leaves when both close; a user
// whose replica is killed is dropped once the presence TTL passes.
func TestPresenceAcrossTwoAPIProcesses(t *testing.T) {
	t.Parallel()
	redis := progresstest.Real(t)
	env := []string{"REDIS_URL=" + redis.URL(), "PORT=", "PRESENCE_TTL=3s",
		"SESSION_SECRET=shared-secret-of-both-replicas-0123456789"}
	addrA, addrB := freeAddr(t), freeAddr(t)
	baseA, baseB := "http://"+addrA, "http://"+addrB
	a := start(t, "api-a", filepath.Join(binDir, "api")+" -addr "+addrA, env...)
	b := start(t, "api-b", filepath.Join(binDir, "api")+" -addr "+addrB, env...)
	waitHealthy(t, baseA, a)
	waitHealthy(t, baseB, b)

	watcher := browser()
	setName(t, watcher, baseA, "watcher")
	lobby := wire.ChatGroup("lobby").String()
	w, sub := join(t, watcher, baseA, lobby)
	members := newRoom(t, sub)
	members.wait(t, w, "watcher", 10*time.Second)
	ada := browser()
	setName(t, ada, baseA, "ada") // the session cookie works on both replicas
	onA, _ := join(t, ada, baseA, lobby)
	members.wait(t, w, "ada,watcher", 10*time.Second)
	onB, sub := join(t, ada, baseB, lobby)
	// Joining again through B publishes nothing; B's subscribed frame
	// lists who is in the room (ada through A).
	if got := newRoom(t, sub).names(); got != "ada,watcher" {
		t.Fatalf("seen through B: %v", got)
	}
	onA.Close()
	onB.Close()
	members.wait(t, w, "watcher", 10*time.Second)

	// Bo is connected only through B, which dies without a word.
	bo := browser()
	setName(t, bo, baseB, "bo")
	join(t, bo, baseB, lobby)
	members.wait(t, w, "bo,watcher", 10*time.Second)
	b.signal(syscall.SIGKILL)
	<-b.done
	members.wait(t, w, "watcher", 30*time.Second)
	a.stop()
}
