package jobs

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
	"taskstream/progress/progresstest"
)

// Benchmarks of one job's cost on redis-server: what the API spends to
// submit one (record, first event, enqueue, snapshot), and a job's whole
// life with a worker (submit, dequeue, start, one progress event, end,
// notification). Each reports the Redis commands it costs per job, read
// from INFO commandstats, for capacity planning. Figures and commands are
// in BENCHMARKS.md.

// redisCalls returns the number of commands Redis has run so far.
func redisCalls(b *testing.B, rdb *redis.Client) int64 {
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, line := range strings.Split(info, "\n") {
		_, rest, ok := strings.Cut(line, ":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
		total += n
	}
	return total
}

func benchService(b *testing.B) (*Service, *redis.Client) {
	srv := progresstest.Real(b)
	rdb := srv.Client(b)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	log := progress.NewLog(rdb, progress.LogConfig{})
	reg, err := NewRegistry(Builtin()...)
	if err != nil {
		b.Fatal(err)
	}
	return NewService(rdb, reg, log, Config{ArtifactDir: b.TempDir(), Logger: quiet}), rdb
}

// BenchmarkSubmit: Service.Submit of a steps job, serially (the latency
// of a POST /api/jobs minus HTTP) and from 8 goroutines.
func BenchmarkSubmit(b *testing.B) {
	svc, rdb := benchService(b)
	ctx := context.Background()
	params := json.RawMessage(`{"steps":1,"interval_ms":0}`)
	b.Run("serial", func(b *testing.B) {
		before := redisCalls(b, rdb)
		for b.Loop() {
			if _, err := svc.Submit(ctx, "bench", "steps", params); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(redisCalls(b, rdb)-before-1)/float64(b.N), "redis-cmds/job")
	})
	b.Run("parallel8", func(b *testing.B) {
		b.SetParallelism(4) // 4×GOMAXPROCS(2) = 8 submitters
		before := redisCalls(b, rdb)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := svc.Submit(ctx, "bench", "steps", params); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(redisCalls(b, rdb)-before-1)/float64(b.N), "redis-cmds/job")
	})
}

// BenchmarkJobLife: b.N steps jobs of one step, submitted by 8 goroutines
// and run by one worker of concurrency 32, until every one has completed:
// jobs/s through one API-side service and one worker process (sharing the
// 2 cores with Redis), and the Redis commands each job costs in all.
func BenchmarkJobLife(b *testing.B) {
	svc, rdb := benchService(b)
	w := NewWorker(svc, rdb, WorkerConfig{Concurrency: 32, PollInterval: 10 * time.Millisecond})
	if err := w.Start(); err != nil {
		b.Fatal(err)
	}
	defer w.Shutdown()
	ctx := context.Background()
	params := json.RawMessage(`{"steps":1,"interval_ms":0}`)
	before := redisCalls(b, rdb)
	start := time.Now()
	ids := make(chan string, b.N)
	var wg sync.WaitGroup
	next := make(chan struct{}, b.N)
	for range b.N {
		next <- struct{}{}
	}
	close(next)
	for range 8 {
		wg.Go(func() {
			for range next {
				j, err := svc.Submit(ctx, "bench", "steps", params)
				if err != nil {
					b.Error(err)
					return
				}
				ids <- j.ID
			}
		})
	}
	wg.Wait()
	close(ids)
	for id := range ids {
		for {
			f, err := rdb.HGet(ctx, svc.store.jobKey(id), "final").Result()
			if err == nil && f == StateCompleted {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
	// The worker's own polling and heartbeats are counted too: they are
	// part of what a job costs at this rate.
	b.ReportMetric(float64(redisCalls(b, rdb)-before)/float64(b.N), "redis-cmds/job")
}
