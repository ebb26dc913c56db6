package web

import (
	"bytes"
	"encoding/json"
	"testing"

	"taskstream/progress"
	"taskstream/wire"
)

// A subscribed frame whose member list comes from the encoder's memory is
// byte for byte what json.Marshal gives the whole frame, whichever list
// came before: the same slice, another of the same length, a shorter one
// on the same array, none, an empty one; and whichever frame came before
// with the same list (a frame shared by sockets that subscribed to the
// same state): another ref, group, epoch, last seq, replay count or
// recovered flag.
func TestSubscribedJSONUsers(t *testing.T) {
	room := []progress.Member{{ID: "u1", Name: "Ann <b>&"}, {ID: "u2", Name: "Bé \u2028"}, {ID: "u3", Name: `q"uote`}}
	other := []progress.Member{{ID: "v1", Name: "Vic"}, {ID: "v2", Name: "Wes"}, {ID: "v3", Name: "Xan"}}
	base := progress.SyncInfo{Epoch: "e1", LastSeq: 9, Replayed: 3, Recovered: true}
	with := func(f func(*progress.SyncInfo)) progress.SyncInfo { i := base; f(&i); return i }
	for _, tc := range []struct {
		name    string
		group   string
		members []progress.Member
		ref     json.RawMessage
		info    progress.SyncInfo
	}{
		{"a room", "chat:room", room, json.RawMessage(`"r1"`), base},
		{"the same frame again", "chat:room", room, json.RawMessage(`"r1"`), base},
		{"the same room again, no ref", "chat:room", room, nil, base},
		{"another ref", "chat:room", room, json.RawMessage(`"r2"`), base},
		{"another group", "chat:hall", room, json.RawMessage(`"r2"`), base},
		{"another epoch", "chat:hall", room, json.RawMessage(`"r2"`), with(func(i *progress.SyncInfo) { i.Epoch = "e2" })},
		{"another last seq", "chat:hall", room, json.RawMessage(`"r2"`), with(func(i *progress.SyncInfo) { i.LastSeq = 10 })},
		{"another replay count", "chat:hall", room, json.RawMessage(`"r2"`), with(func(i *progress.SyncInfo) { i.Replayed = 4 })},
		{"not recovered", "chat:hall", room, json.RawMessage(`"r2"`), with(func(i *progress.SyncInfo) { i.Recovered = false })},
		{"another room of the same size", "chat:room", other, nil, base},
		{"the first two of it", "chat:room", other[:2], nil, base},
		{"a job: no list", "job:j", nil, nil, base},
		{"an empty room", "chat:room", []progress.Member{}, nil, base},
		{"the first room again", "chat:room", room, json.RawMessage(`7`), base},
		{"the first frame again", "chat:room", room, json.RawMessage(`"r1"`), base},
	} {
		info := tc.info
		info.Members = tc.members
		got := subscribedJSON(tc.group, tc.ref, info)
		want, err := json.Marshal(wire.SubscribedFrame{Type: wire.TypeSubscribed, Group: tc.group, Ref: tc.ref, Epoch: info.Epoch,
			LastSeq: info.LastSeq, Replayed: info.Replayed, Recovered: info.Recovered, Users: tc.members})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, want)
		}
	}
}

// Sockets that subscribe with the same ref to the same state of a room
// are given one frame, not a copy each.
func TestSubscribedJSONShared(t *testing.T) {
	room := []progress.Member{{ID: "u1", Name: "Ann"}, {ID: "u2", Name: "Bob"}}
	info := progress.SyncInfo{Epoch: "e1", LastSeq: 9, Replayed: 9, Recovered: true, Initial: true, Members: room}
	a := subscribedJSON("chat:shared", json.RawMessage(`"1"`), info)
	b := subscribedJSON("chat:shared", json.RawMessage(`"1"`), info)
	if &a[0] != &b[0] {
		t.Error("two sockets of the same state got a frame each")
	}
	info.LastSeq, info.Replayed = 10, 10
	if c := subscribedJSON("chat:shared", json.RawMessage(`"1"`), info); &c[0] == &a[0] {
		t.Error("a later state of the room got the earlier frame")
	}
}
