package main

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"taskstream/internal/uring"
)

// A receive's last completion (no CQEFMore) that brings data the reader
// refuses (its callback says stop, the server's close, a protocol error)
// ends the socket once: one result for read, which then hands the socket
// back to its caller. The completion is played into complete directly,
// since the kernel posts data without CQEFMore only now and then (a full
// completion queue).
func TestRecvRingFinalCompletionFeedFailureFinishesOnce(t *testing.T) {
	if err := uring.Probe(); err != nil {
		t.Skip(err)
	}
	ring, err := uring.New(8, uring.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ring.Close()
	bufs, err := ring.RegisterBuffers(1, 2, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer bufs.Free()
	rr := &recvRing{ring: ring, bufs: bufs, socks: map[uint64]*ringSock{}}
	rd := newWSReader(func(int, []byte) {}, func([]byte, time.Time) bool { return false })
	rs := &ringSock{fd: -1, rd: rd, read: new(atomic.Int64), id: firstSockID, armed: true, result: make(chan error, 1)}
	rr.socks[rs.id] = rs
	frame := []byte{0x82, 2, 'h', 'i'} // a server's binary message "hi"
	n := copy(bufs.Bytes(0, len(frame)), frame)
	done := make(chan struct{})
	go func() {
		defer close(done)
		rr.complete(uring.CQE{UserData: rs.id, Res: int32(n), Flags: uring.CQEFBuffer}) // buffer 0, no more
	}()
	if err := <-rs.result; !errors.Is(err, errStopped) {
		t.Fatalf("result %v, want errStopped", err)
	}
	<-done
	select {
	case err := <-rs.result:
		t.Fatalf("a second result for the same socket: %v (finish ran twice)", err)
	default:
	}
}
