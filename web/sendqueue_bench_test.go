package web

import (
	"fmt"
	"testing"

	"taskstream/progress"
	"taskstream/wire"
)

// BenchmarkSendQueue compares the plain queue (chat and other groups)
// with the conflating one of job groups, per event queued, for a writer
// that keeps up (take after every batch of 32) and one that is behind
// (take after every 4,096 events: the job queue conflates, the plain one
// would have closed the socket, so it is not measured there). The job
// stream is one log event per 50 progress events, 200-byte payloads.
func BenchmarkSendQueue(b *testing.B) {
	const group = "job:bench"
	events := make([]*progress.Event, 50)
	for i := range events {
		name := wire.EventProgress
		if i == 49 {
			name = wire.EventLog
		}
		events[i] = jobEvent(group, int64(i+1), name, 200)
		events[i].Frame() // encoded once per process: the hub's subscribers share it
	}
	for _, tc := range []struct {
		name  string
		every int // take after this many events
	}{{"keeping-up", 32}, {"behind", 4096}} {
		if tc.every == 32 {
			b.Run("plain/"+tc.name, func(b *testing.B) {
				q := newSendQueue(1024, 1<<20)
				b.ReportAllocs()
				for i := range b.N {
					if !q.push(events[i%len(events)].Frame()) {
						b.Fatal("refused")
					}
					if (i+1)%tc.every == 0 {
						q.take()
					}
				}
			})
		}
		b.Run(fmt.Sprintf("conflating/%s", tc.name), func(b *testing.B) {
			q := newSendQueue(1024, 1<<20)
			b.ReportAllocs()
			for i := range b.N {
				if !q.pushJob(events[i%len(events)], false, formV1) {
					b.Fatal("refused")
				}
				if (i+1)%tc.every == 0 {
					q.take()
				}
			}
		})
	}
}
