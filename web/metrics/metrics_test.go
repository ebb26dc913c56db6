package metrics

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// countingHook counts the commands sent through a client (pipelines
// count each command).
type countingHook struct{ n atomic.Int64 }

func (h *countingHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h *countingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(int64(len(cmds))); return next(ctx, cmds) }
}

// pendingOf scrapes url over HTTP and returns asynq_queue_size{queue=q,
// state=pending}.
func pendingOf(t *testing.T, url, q string) float64 {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mfs["asynq_queue_size"].GetMetric() {
		if hasLabels(m, "queue", q, "state", "pending") {
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no asynq_queue_size{queue=%q,state=pending}", q)
	return 0
}

func hasLabels(m *dto.Metric, kv ...string) bool {
	found := 0
	for _, l := range m.GetLabel() {
		for i := 0; i+1 < len(kv); i += 2 {
			if l.GetName() == kv[i] && l.GetValue() == kv[i+1] {
				found++
			}
		}
	}
	return found == len(kv)/2
}

// The queue figures are read at most once per QueueRefresh: within it a
// scrape gets the cached figures; after it, fresh ones.
func TestQueueFiguresAreCached(t *testing.T) {
	cases := []struct {
		name        string
		refresh     time.Duration
		wantSecond  float64 // pending on the second scrape, after a second enqueue
		wantNewRead bool    // the second scrape reads Redis
	}{
		{"within the interval", time.Hour, 1, false},
		{"after the interval", time.Nanosecond, 2, true},
	}
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				rdb := srv.Client(t)
				hook := &countingHook{}
				rdb.AddHook(hook)
				q := "cache" + string(rune('a'+i))
				client := asynq.NewClientFromRedisClient(rdb)
				enqueue := func() {
					if _, err := client.Enqueue(asynq.NewTask("t", nil), asynq.Queue(q)); err != nil {
						t.Fatal(err)
					}
				}
				m := New(Config{Queues: []string{q}, Inspector: asynq.NewInspectorFromRedisClient(rdb), QueueRefresh: tc.refresh})
				web := httptest.NewServer(m.Handler())
				defer web.Close()
				enqueue()
				if got := pendingOf(t, web.URL, q); got != 1 {
					t.Fatalf("first scrape: pending %v, want 1", got)
				}
				enqueue()
				before := hook.n.Load()
				if got := pendingOf(t, web.URL, q); got != tc.wantSecond {
					t.Errorf("second scrape: pending %v, want %v", got, tc.wantSecond)
				}
				if read := hook.n.Load() > before; read != tc.wantNewRead {
					t.Errorf("second scrape read Redis: %v, want %v", read, tc.wantNewRead)
				}
			})
		}
	})
}

// Concurrent scrapes of a stale cache share one read: they cost no more
// Redis commands than a single scrape.
func TestConcurrentScrapesShareOneRead(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		rdb := srv.Client(t)
		hook := &countingHook{}
		rdb.AddHook(hook)
		queues := []string{"shared1", "shared2"}
		client := asynq.NewClientFromRedisClient(rdb)
		for _, q := range queues {
			if _, err := client.Enqueue(asynq.NewTask("t", nil), asynq.Queue(q)); err != nil {
				t.Fatal(err)
			}
		}
		scrapeCost := func(scrapes int) int64 {
			m := New(Config{Queues: queues, Inspector: asynq.NewInspectorFromRedisClient(rdb), QueueRefresh: time.Hour})
			web := httptest.NewServer(m.Handler())
			defer web.Close()
			before := hook.n.Load()
			var wg sync.WaitGroup
			for range scrapes {
				wg.Go(func() {
					if got := pendingOf(t, web.URL, queues[0]); got != 1 {
						t.Errorf("pending %v, want 1", got)
					}
				})
			}
			wg.Wait()
			return hook.n.Load() - before
		}
		one, many := scrapeCost(1), scrapeCost(20)
		if one == 0 {
			t.Fatal("a scrape sent no Redis command: the hook does not see the inspector")
		}
		// The first scrape may also load asynq's scripts (EVALSHA, then
		// EVAL): no more than one scrape's commands, never twenty's.
		if many > one {
			t.Fatalf("20 concurrent scrapes sent %d Redis commands, one scrape %d: want no more", many, one)
		}
	})
}
