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
// on the same array, none, an empty one.
func TestSubscribedJSONUsers(t *testing.T) {
	room := []progress.Member{{ID: "u1", Name: "Ann <b>&"}, {ID: "u2", Name: "Bé \u2028"}, {ID: "u3", Name: `q"uote`}}
	other := []progress.Member{{ID: "v1", Name: "Vic"}, {ID: "v2", Name: "Wes"}, {ID: "v3", Name: "Xan"}}
	for _, tc := range []struct {
		name    string
		members []progress.Member
		ref     json.RawMessage
	}{
		{"a room", room, json.RawMessage(`"r1"`)},
		{"the same room again", room, nil},
		{"another room of the same size", other, nil},
		{"the first two of it", other[:2], nil},
		{"a job: no list", nil, nil},
		{"an empty room", []progress.Member{}, nil},
		{"the first room again", room, json.RawMessage(`7`)},
	} {
		info := progress.SyncInfo{Epoch: "e1", LastSeq: 9, Replayed: 3, Recovered: true, Members: tc.members}
		got := subscribedJSON("chat:room", tc.ref, info)
		want, err := json.Marshal(wire.SubscribedFrame{Type: wire.TypeSubscribed, Group: "chat:room", Ref: tc.ref, Epoch: "e1",
			LastSeq: 9, Replayed: 3, Recovered: true, Users: tc.members})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, want)
		}
	}
}
