package wire

import (
	"errors"
	"testing"
)

func TestParseGroup(t *testing.T) {
	tests := []struct {
		name string
		want Group
		ok   bool
	}{
		{"job:6f1c2a", JobGroup("6f1c2a"), true},
		{"chat:lobby", ChatGroup("lobby"), true},
		{"chat:Room_2-b", ChatGroup("Room_2-b"), true},
		{"user:u.1@x", UserGroup("u.1@x"), true},
		{"dashboard", DashboardGroup(), true},
		{"metrics:x", Group{Kind: "metrics", ID: "x"}, true}, // unknown kinds parse; the server authorizes
		{"", Group{}, false},
		{"job", Group{}, false},
		{"job:", Group{}, false},
		{"Job:1", Group{}, false},
		{"chat:a.b", Group{}, false}, // a room has no dots
		{"chat:" + string(make([]byte, 65)), Group{}, false},
		{"dashboard:1", Group{}, false},
		{"job:a b", Group{}, false},
		{"job:a:b", Group{}, false},
	}
	for _, tt := range tests {
		got, err := ParseGroup(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ParseGroup(%q) error %v, want ok=%v", tt.name, err, tt.ok)
			continue
		}
		if !tt.ok {
			if !errors.Is(err, ErrBadGroup) {
				t.Errorf("ParseGroup(%q) error %v does not wrap ErrBadGroup", tt.name, err)
			}
			continue
		}
		if got != tt.want || got.String() != tt.name {
			t.Errorf("ParseGroup(%q) = %+v (%q), want %+v", tt.name, got, got.String(), tt.want)
		}
	}
}

// Whatever parses formats back to the same name, and parses again to the
// same group.
func FuzzParseGroup(f *testing.F) {
	for _, s := range []string{"job:1", "chat:lobby", "dashboard", "user:a@b", "x:", ":", "chat:a.b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		g, err := ParseGroup(name)
		if err != nil {
			return
		}
		if g.String() != name {
			t.Fatalf("ParseGroup(%q).String() = %q", name, g.String())
		}
		if again, err := ParseGroup(g.String()); err != nil || again != g {
			t.Fatalf("round trip of %q: %+v, %v", name, again, err)
		}
	})
}

func TestHTTPStatusAndResumable(t *testing.T) {
	if HTTPStatus(CodeRateLimited) != 429 || HTTPStatus(CodeUnavailable) != 503 || HTTPStatus("nope") != 500 {
		t.Fatal("HTTPStatus maps codes wrongly")
	}
	for code, want := range map[int]bool{CloseNormal: true, CloseGoingAway: true, CloseTryAgain: true, ClosePolicy: false, CloseTooBig: false} {
		if Resumable(code) != want {
			t.Errorf("Resumable(%d) = %v, want %v", code, !want, want)
		}
	}
}

func TestReserved(t *testing.T) {
	tests := []struct {
		kind, event string
		want        bool
	}{
		{KindJob, EventState, true},
		{KindJob, EventProgress, true},
		{KindJob, EventLog, true},
		{KindJob, EventResult, true},
		{KindJob, EventFailed, true},
		{KindJob, "note", false},
		{KindChat, EventMessage, false},
		{KindChat, EventJoin, true},
		{KindChat, EventLeave, true},
		{KindChat, EventPresence, true},
		{KindChat, EventRename, true},
		{KindUser, EventNotification, false},
		{KindUser, EventState, false},
		{KindDashboard, EventStats, true},
		{KindDashboard, "note", false},
	}
	for _, tt := range tests {
		if got := Reserved(tt.kind, tt.event); got != tt.want {
			t.Errorf("Reserved(%q, %q) = %v, want %v", tt.kind, tt.event, got, tt.want)
		}
	}
}

func TestKnownKind(t *testing.T) {
	for kind, want := range map[string]bool{KindJob: true, KindChat: true, KindUser: true, KindDashboard: true, "metrics": false, "": false, "Job": false} {
		if KnownKind(kind) != want {
			t.Errorf("KnownKind(%q) = %v, want %v", kind, !want, want)
		}
	}
}
