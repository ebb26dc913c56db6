package progress

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"taskstream/progress/progresstest"
)

// leaderProbe counts how many competitors lead at once and who leads.
type leaderProbe struct {
	mu      sync.Mutex
	leading map[int]bool
	maxAtOnce,
	wins int
	changed chan struct{}
}

func newLeaderProbe() *leaderProbe {
	return &leaderProbe{leading: map[int]bool{}, changed: make(chan struct{}, 100)}
}

func (p *leaderProbe) lead(id int) func(ctx context.Context) {
	return func(ctx context.Context) {
		p.mu.Lock()
		p.leading[id] = true
		p.wins++
		if n := len(p.leading); n > p.maxAtOnce {
			p.maxAtOnce = n
		}
		p.mu.Unlock()
		p.changed <- struct{}{}
		<-ctx.Done()
		p.mu.Lock()
		delete(p.leading, id)
		p.mu.Unlock()
	}
}

// leader returns the one competitor leading now, waiting for there to be
// exactly one.
func (p *leaderProbe) leader(t *testing.T, except int) int {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		p.mu.Lock()
		if len(p.leading) == 1 {
			for id := range p.leading {
				if id != except {
					p.mu.Unlock()
					return id
				}
			}
		}
		p.mu.Unlock()
		select {
		case <-p.changed:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no single leader other than %d: leading %v", except, p.leading)
		}
	}
}

func TestRunAsLeaderElectsOneAndFailsOver(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		cfg := LeaderConfig{Key: "test:leader", TTL: 300 * time.Millisecond}
		probe := newLeaderProbe()
		stops := map[int]context.CancelFunc{}
		var wg sync.WaitGroup
		for id := range 3 {
			ctx, cancel := context.WithCancel(context.Background())
			stops[id] = cancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := RunAsLeader(ctx, rdb, cfg, probe.lead(id)); err != nil {
					t.Errorf("RunAsLeader: %v", err)
				}
			}()
		}
		defer func() {
			for _, stop := range stops {
				stop()
			}
			wg.Wait()
		}()

		first := probe.leader(t, -1)
		// A graceful stop releases the lease: another takes over.
		stops[first]()
		second := probe.leader(t, first)

		// A leader whose lease is taken from it (it stalled past its TTL
		// and another process won the key) steps down.
		if err := rdb.Set(context.Background(), cfg.Key, "someone-else", time.Second).Err(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			probe.mu.Lock()
			still := probe.leading[second]
			probe.mu.Unlock()
			if !still {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the leader kept leading after its lease was taken")
			}
			time.Sleep(10 * time.Millisecond)
		}
		// Once the usurper's lease expires, one of the remaining two leads.
		probe.leader(t, first)

		probe.mu.Lock()
		defer probe.mu.Unlock()
		if probe.maxAtOnce != 1 {
			t.Errorf("%d competitors led at once, want 1", probe.maxAtOnce)
		}
	})
}

func TestRunAsLeaderStepsDownWhenRedisIsGone(t *testing.T) {
	srv := progresstest.Real(t)
	rdb := srv.Client(t)
	var leading atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunAsLeader(ctx, rdb, LeaderConfig{Key: "test:leader", TTL: 300 * time.Millisecond},
			func(ctx context.Context) {
				leading.Store(true)
				<-ctx.Done()
				leading.Store(false)
			})
	}()
	waitFor(t, "a leader", leading.Load)
	// Without Redis the leader can not know whether its lease still holds:
	// it must stop before the TTL could have let another take over.
	srv.Stop()
	waitFor(t, "the leader to step down", func() bool { return !leading.Load() })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRunAsLeaderNeedsAKey(t *testing.T) {
	srv := progresstest.Embedded(t)
	if err := RunAsLeader(context.Background(), srv.Client(t), LeaderConfig{}, func(context.Context) {}); err == nil {
		t.Fatal("RunAsLeader with no key: want an error")
	}
}
