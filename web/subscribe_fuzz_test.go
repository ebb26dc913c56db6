package web

import (
	"bytes"
	"context"
	"reflect"
	"testing"
	"time"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

// FuzzSubscribe drives the whole subscribe path with any client frame:
// decodeClientFrame, then, for an accepted subscribe, Hub.Subscribe with
// the frame's after and epoch on a group that holds history. A frame that
// is refused is bad_request; one that is accepted gets its first answer
// (never a failure: Redis is up) and that answer is right: recovered with
// the events after its position when the position is in this log (and
// the epoch, if any, is this log's), otherwise recovered:false with the
// whole history. "@EPOCH@" in the input stands for the log's real epoch,
// so the fuzzer reaches the matching-epoch branch too.
func FuzzSubscribe(f *testing.F) {
	for _, seed := range []string{
		`{"op":"subscribe","group":"chat:fuzz","ref":"1"}`,
		`{"op":"subscribe","group":"chat:fuzz","after":3,"ref":"1"}`,
		`{"op":"subscribe","group":"chat:fuzz","after":3,"epoch":"@EPOCH@","ref":"1"}`,
		`{"op":"subscribe","group":"chat:fuzz","after":7,"epoch":"@EPOCH@"}`,
		`{"op":"subscribe","group":"chat:fuzz","after":8,"epoch":"@EPOCH@"}`,
		`{"op":"subscribe","group":"chat:fuzz","after":3,"epoch":"stale"}`,
		`{"op":"subscribe","group":"chat:fuzz","after":9223372036854775807,"ref":"1"}`,
		`{"op":"subscribe","group":"chat:fuzz","after":9223372036854775808,"ref":"1"}`,
		`{"op":"subscribe","group":"chat:fuzz","after":-1,"ref":"1"}`,
		`{"op":"subscribe","group":"chat:fuzz","after":1.5,"ref":"1"}`,
		`{"op":"subscribe","group":"chat:fuzz","after":1e300,"ref":"1"}`,
		`{"op":"subscribe","group":"chat:fuzz","after":"3","ref":"1"}`,
		`{"op":"subscribe","group":"chat:fuzz","after":null,"epoch":null}`,
		`{"op":"subscribe","group":"chat:fuzz","after":0,"epoch":5}`,
		`{"op":"subscribe","group":"chat:fuzz","after":00012}`,
		`{"op":"ping"}`,
	} {
		f.Add([]byte(seed))
	}
	srv := progresstest.Embedded(f)
	rdb := srv.Client(f)
	log := progress.NewLog(rdb, progress.LogConfig{})
	hub := progress.NewHub(rdb, log, progress.HubConfig{Logger: quietLogger(f)})
	f.Cleanup(func() { _ = hub.Shutdown(context.Background()) })
	const group, n = "chat:fuzz", int64(7)
	var epoch string
	for range n {
		ev, err := log.Publish(context.Background(), group, "message", map[string]string{"text": "x"})
		if err != nil {
			f.Fatal(err)
		}
		epoch = ev.Epoch
	}

	f.Fuzz(func(t *testing.T, in []byte) {
		in = bytes.ReplaceAll(in, []byte("@EPOCH@"), []byte(epoch))
		fr, aerr := decodeClientFrame(in)
		if aerr != nil {
			if aerr.Code != CodeBadRequest || aerr.Message == "" {
				t.Fatalf("refused with %+v, want bad_request with a message", aerr)
			}
			return
		}
		if fr.Op != opSubscribe {
			return
		}
		var after int64
		if fr.After != nil {
			after = *fr.After
			if after < 0 {
				t.Fatalf("accepted after %d", after)
			}
		}
		sink := newBufferSink(int(n) + 10)
		sub, err := hub.Subscribe(group, after, fr.Epoch, sink)
		if err != nil {
			t.Fatalf("Subscribe(after %d, epoch %q): %v", after, fr.Epoch, err)
		}
		defer sub.Close()
		within := after <= n && (fr.Epoch == "" || fr.Epoch == epoch)
		want := progress.SyncInfo{Epoch: epoch, LastSeq: n, Replayed: int(n), Recovered: within, Initial: true}
		if within {
			want.Replayed = int(n - after)
		}
		// The answer and its replay, then nothing more (no live events).
		var items []streamItem
		deadline := time.After(10 * time.Second)
		for len(items) == 0 || len(items) < 1+items[0].info.Replayed {
			select {
			case <-sink.notify:
			case <-deadline:
				t.Fatalf("after %d epoch %q: no full answer in 10 s, got %d items", after, fr.Epoch, len(items))
			}
			got, lagged, failed := sink.take()
			if failed != nil || lagged {
				t.Fatalf("after %d epoch %q: failed %v lagged %v", after, fr.Epoch, failed, lagged)
			}
			items = append(items, got...)
			if items[0].info == nil {
				t.Fatalf("first item is not a SyncInfo")
			}
		}
		if !reflect.DeepEqual(*items[0].info, want) {
			t.Fatalf("after %d epoch %q: %+v, want %+v", after, fr.Epoch, *items[0].info, want)
		}
		for i, it := range items[1:] {
			if it.ev == nil || it.ev.Seq != n-int64(want.Replayed)+1+int64(i) || it.ev.Epoch != epoch {
				t.Fatalf("after %d: replay item %d is %+v", after, i, it)
			}
		}
	})
}
