package web

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"taskstream/progress/progresstest"
)

// goroutineID is the running goroutine's id, from its stack's first line
// ("goroutine 42 [running]:"): how a test tells which goroutine ran a call.
func goroutineID() string {
	var buf [64]byte
	line := buf[:runtime.Stack(buf[:], false)]
	line = bytes.TrimPrefix(line, []byte("goroutine "))
	id, _, _ := bytes.Cut(line, []byte(" "))
	return string(id)
}

// The pool runs each call on a worker, not on the caller's goroutine, and
// a worker that finished a call takes the next one: calls made one after
// another reuse one goroutine (whose stack has grown), up to maxIdle
// parked workers; after close every call runs on its caller's goroutine.
func TestStackPoolReusesWorkers(t *testing.T) {
	p := newStackPool(2)
	me := goroutineID()
	var first string
	for i := range 5 {
		var ran string
		if tp := p.run(func() { ran = goroutineID() }); tp != nil {
			t.Fatalf("call %d panicked: %v", i, tp)
		}
		if ran == me {
			t.Fatalf("call %d ran on the caller's goroutine", i)
		}
		if i == 0 {
			first = ran
		} else if ran != first {
			t.Fatalf("call %d ran on goroutine %s, the first on %s: want the parked worker", i, ran, first)
		}
		// The worker parks after it answered: wait until it did, so the
		// next call finds it.
		for p.parked.Load() < 1 {
			runtime.Gosched()
		}
	}

	// Calls at once: each gets a worker (none waits for another), and no
	// more than maxIdle stay parked once they are done.
	const calls = 6
	var started, release sync.WaitGroup
	started.Add(calls)
	release.Add(1)
	var done sync.WaitGroup
	for range calls {
		done.Add(1)
		go func() {
			defer done.Done()
			p.run(func() { started.Done(); release.Wait() })
		}()
	}
	started.Wait() // every call runs at once: none was queued behind another
	release.Done()
	done.Wait()
	if n := p.parked.Load(); n > 2 {
		t.Fatalf("%d workers parked, want at most maxIdle 2", n)
	}

	p.close()
	if n := p.parked.Load(); n != 0 {
		t.Fatalf("%d workers parked after close", n)
	}
	var ran string
	p.run(func() { ran = goroutineID() })
	if ran != me {
		t.Fatalf("a call after close ran on goroutine %s, want the caller's %s", ran, me)
	}
}

// A panic of a call comes back to the caller with the stack where it
// happened, and the worker survives it.
func TestStackPoolCarriesPanics(t *testing.T) {
	errBoom := errors.New("boom")
	cases := []struct {
		name  string
		value any
	}{
		{"error", errBoom},
		{"string", "bad state"},
		{"abort", http.ErrAbortHandler},
	}
	p := newStackPool(1)
	defer p.close()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tp := p.run(func() { panicsWith(tc.value) })
			if tp == nil {
				t.Fatal("the panic was lost")
			}
			if tp.value != tc.value {
				t.Fatalf("panic value %v, want %v", tp.value, tc.value)
			}
			if !bytes.Contains(tp.stack, []byte("web.panicsWith")) {
				t.Fatalf("the stack does not show where it panicked:\n%s", tp.stack)
			}
			if s := fmt.Sprint(tp); !strings.Contains(s, fmt.Sprint(tc.value)) || !strings.Contains(s, "web.panicsWith") {
				t.Fatalf("the panic prints as %q: want its value and stack", s)
			}
			if tp := p.run(func() {}); tp != nil {
				t.Fatalf("the next call panicked: %v", tp)
			}
		})
	}
}

//go:noinline
func panicsWith(v any) { panic(v) }

// Sockets' handshakes and frames run on the server's stack pool, and the
// server's Shutdown stops its workers: none is left parked.
func TestShutdownStopsStackPool(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		e := newEnv(t, srv, withoutWorker())
		for range 3 {
			c := e.dial()
			c.send(map[string]any{"op": "subscribe", "group": "chat:pool", "ref": "s"})
			if f := c.read(); f.Type != "subscribed" {
				t.Fatalf("got %+v, want subscribed", f)
			}
		}
		// The workers park after they answered: the last one may not have
		// yet when the client read its answer.
		eventually(t, "a worker parked", func() bool { return e.web.stacks.parked.Load() > 0 })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.web.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		if n := e.web.stacks.parked.Load(); n != 0 {
			t.Fatalf("%d workers still parked after Shutdown", n)
		}
	})
}
