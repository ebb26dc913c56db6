package main

import (
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/progress/progresstest"
	"taskstream/wire"
)

type presenceFrame struct {
	Type  string `json:"type"`
	Event string `json:"event"`
	Data  struct {
		Users []struct{ ID, Name string } `json:"users"`
		User  struct{ ID, Name string }   `json:"user"`
	} `json:"data"`
}

// nextPresence reads until the next presence event and returns its names.
func nextPresence(t *testing.T, ws *websocket.Conn, timeout time.Duration) []string {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(timeout))
	for {
		var f presenceFrame
		if err := ws.ReadJSON(&f); err != nil {
			t.Fatalf("waiting for presence: %v", err)
		}
		if f.Type == "event" && f.Event == "presence" {
			var names []string
			for _, u := range f.Data.Users {
				names = append(names, u.Name)
			}
			return names
		}
	}
}

// replayedPresence reads a fresh subscription's replay and returns the
// last presence list in it.
func replayedPresence(t *testing.T, ws *websocket.Conn) []string {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	var sub wire.SubscribedFrame
	if err := ws.ReadJSON(&sub); err != nil || sub.Type != wire.TypeSubscribed {
		t.Fatalf("subscribe: %v %+v", err, sub)
	}
	var last []string
	for range sub.Replayed {
		var f presenceFrame
		if err := ws.ReadJSON(&f); err != nil {
			t.Fatal(err)
		}
		if f.Event == "presence" {
			last = last[:0]
			for _, u := range f.Data.Users {
				last = append(last, u.Name)
			}
		}
	}
	return last
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
	w := subscribe(t, watcher, baseA, "chat:lobby")
	if got := nextPresence(t, w, 10*time.Second); strings.Join(got, ",") != "watcher" {
		t.Fatalf("presence %v", got)
	}
	ada := browser()
	setName(t, ada, baseA, "ada") // the session cookie works on both replicas
	onA := subscribe(t, ada, baseA, "chat:lobby")
	if got := nextPresence(t, w, 10*time.Second); strings.Join(got, ",") != "ada,watcher" {
		t.Fatalf("after ada joined on A: %v", got)
	}
	onB := subscribe(t, ada, baseB, "chat:lobby")
	// Joining again through B publishes nothing: check B's own view of the
	// list, which its subscribe replays from the room's history.
	if got := replayedPresence(t, onB); strings.Join(got, ",") != "ada,watcher" {
		t.Fatalf("seen through B: %v", got)
	}
	onA.Close()
	onB.Close()
	if got := nextPresence(t, w, 10*time.Second); strings.Join(got, ",") != "watcher" {
		t.Fatalf("after both of ada's sockets closed: %v", got)
	}

	// Bo is connected only through B, which dies without a word.
	bo := browser()
	setName(t, bo, baseB, "bo")
	subscribe(t, bo, baseB, "chat:lobby")
	if got := nextPresence(t, w, 10*time.Second); strings.Join(got, ",") != "bo,watcher" {
		t.Fatalf("after bo joined on B: %v", got)
	}
	b.signal(syscall.SIGKILL)
	<-b.done
	if got := nextPresence(t, w, 30*time.Second); strings.Join(got, ",") != "watcher" {
		t.Fatalf("after B was killed: %v", got)
	}
	a.stop()
}
