package metrics

import (
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	queueSizeDesc = prometheus.NewDesc("asynq_queue_size",
		"Tasks in an asynq queue, by queue and state (read at most once per QUEUE_METRICS_REFRESH).", []string{"queue", "state"}, nil)
	queueLatencyDesc = prometheus.NewDesc("asynq_queue_latency_seconds",
		"Age of the oldest pending task of an asynq queue: how far behind its workers are.", []string{"queue"}, nil)
)

// queueCollector exports asynq's queue figures from a cache that it
// refreshes at most once per Config.QueueRefresh. Asynq's own x/metrics
// collector is not used: it is a separate module at a 2021 pseudo-version
// and reads Redis on every scrape.
type queueCollector struct {
	insp    *asynq.Inspector
	queues  []string
	refresh time.Duration
	logger  *slog.Logger

	// mu is held across a refresh, so concurrent scrapes wait for the one
	// refresh in flight and then share its result.
	mu    sync.Mutex
	read  time.Time // when the cache was last refreshed (or tried)
	infos map[string]*asynq.QueueInfo
}

func newQueueCollector(cfg Config) *queueCollector {
	qs := slices.Clone(cfg.Queues)
	slices.Sort(qs)
	return &queueCollector{
		insp: cfg.Inspector, queues: slices.Compact(qs), refresh: cfg.QueueRefresh,
		logger: cfg.Logger, infos: map[string]*asynq.QueueInfo{},
	}
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueSizeDesc
	ch <- queueLatencyDesc
}

// snapshot returns the cached figures, refreshed first when they are older
// than the refresh interval. A failed read keeps the previous figures
// (logged) and is not retried before the interval is over either, so a
// Redis outage does not turn every scrape into a round of timeouts.
func (c *queueCollector) snapshot() map[string]*asynq.QueueInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.insp != nil && (c.read.IsZero() || time.Since(c.read) >= c.refresh) {
		c.read = time.Now()
		for _, q := range c.queues {
			info, err := c.insp.GetQueueInfo(q)
			switch {
			case errors.Is(err, asynq.ErrQueueNotFound):
				// No task was ever enqueued there: all zeros.
				delete(c.infos, q)
			case err != nil:
				c.logger.Warn("reading asynq queue for metrics failed; keeping the last figures", "queue", q, "err", err)
			default:
				c.infos[q] = info
			}
		}
	}
	return maps.Clone(c.infos)
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	infos := c.snapshot()
	for _, q := range c.queues {
		info := infos[q]
		if info == nil {
			info = &asynq.QueueInfo{}
		}
		counts := []int{info.Pending, info.Active, info.Scheduled, info.Retry, info.Archived, info.Completed, info.Aggregating}
		for i, state := range QueueStates {
			ch <- prometheus.MustNewConstMetric(queueSizeDesc, prometheus.GaugeValue, float64(counts[i]), q, state)
		}
		ch <- prometheus.MustNewConstMetric(queueLatencyDesc, prometheus.GaugeValue, info.Latency.Seconds(), q)
	}
}

// withKinds returns counts with every known kind present (zero when
// absent).
func withKinds[V int | uint64](counts map[string]V) map[string]V {
	out := make(map[string]V, len(counts)+len(Kinds))
	for _, k := range Kinds {
		out[k] = 0
	}
	maps.Copy(out, counts)
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
