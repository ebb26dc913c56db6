package main

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"taskstream/client"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

// presenceNames returns the names of a presence event's users.
func presenceNames(t *testing.T, data []byte) []string {
	t.Helper()
	var p struct {
		Users []struct{ ID, Name string } `json:"users"`
	}
	if err := json.Unmarshal(data, &p); err != nil {
		t.Fatalf("presence data %s: %v", data, err)
	}
	names := []string{}
	for _, u := range p.Users {
		names = append(names, u.Name)
	}
	return names
}

// nextPresence reads until the next presence event and returns its names.
func nextPresence(t *testing.T, conn *client.Conn, timeout time.Duration) []string {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		f, err := conn.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for presence: %v", err)
		}
		if f.Type == wire.TypeEvent && f.Event == wire.EventPresence {
			return presenceNames(t, f.Data)
		}
	}
}

// replayedPresence reads a fresh subscription's replay (sub announced
// it) and returns the last presence list in it.
func replayedPresence(t *testing.T, conn *client.Conn, sub *wire.SubscribedFrame) []string {
	t.Helper()
	var last []string
	for range sub.Replayed {
		f, err := conn.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if f.Event == wire.EventPresence {
			last = presenceNames(t, f.Data)
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
	lobby := wire.ChatGroup("lobby").String()
	w, _ := join(t, watcher, baseA, lobby)
	if got := nextPresence(t, w, 10*time.Second); strings.Join(got, ",") != "watcher" {
		t.Fatalf("presence %v", got)
	}
	ada := browser()
	setName(t, ada, baseA, "ada") // the session cookie works on both replicas
	onA, _ := join(t, ada, baseA, lobby)
	if got := nextPresence(t, w, 10*time.Second); strings.Join(got, ",") != "ada,watcher" {
		t.Fatalf("after ada joined on A: %v", got)
	}
	onB, sub := join(t, ada, baseB, lobby)
	// Joining again through B publishes nothing: check B's own view of the
	// list, which its subscribe replays from the room's history.
	if got := replayedPresence(t, onB, sub); strings.Join(got, ",") != "ada,watcher" {
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
	join(t, bo, baseB, lobby)
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
