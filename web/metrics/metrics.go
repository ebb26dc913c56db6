// Package metrics owns taskstream's Prometheus registry and the definition
// of every metric family it exports: the one place to look for a metric's
// name, type, labels and meaning (README.md "Metrics" has the table).
//
// Each process builds one Metrics (tests build many: the registry is per
// instance, never the global default) and wires it into the parts it runs:
//   - progress.LogConfig.OnPublish = m.ObservePublish (publishes, timed);
//   - web.Deps.Metrics = m: web.New calls m.WatchHub (subscriptions, shared
//     Redis subscriptions, deliveries and replays, read from Hub.Counters
//     at scrape time) and m.WatchSockets (open connections by transport),
//     counts close codes and send queue overflows, and serves GET /metrics;
//   - jobs.Config.Observer = m (submitted, started, finished jobs);
//   - Config.Inspector (asynq queue sizes and latency, cached).
//
// progress and jobs do not import Prometheus: progress exposes counters and
// a hook, jobs calls the small jobs.Observer interface that Metrics
// implements.
//
// Every family is present from the first scrape, with zero values for the
// label values known in advance, so dashboards and alerts never see a
// missing series.
package metrics

import (
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"taskstream/progress"
	"taskstream/wire"
)

// Label values known in advance, exported as zeros from start-up.
var (
	// Transports are the ways a client receives events.
	Transports = []string{"websocket", "sse", "longpoll"}
	// Kinds are the group kinds of the protocol.
	Kinds = []string{wire.KindJob, wire.KindChat, wire.KindUser, wire.KindDashboard}
	// CloseCodes are the socket close codes the server sends.
	CloseCodes = []int{wire.CloseNormal, wire.CloseGoingAway, wire.ClosePolicy, wire.CloseTooBig, wire.CloseTryAgain}
	// Outcomes are the terminal states of a job.
	Outcomes = []string{"completed", "failed", "canceled"}
	// QueueStates are the task states asynq counts per queue.
	QueueStates = []string{"pending", "active", "scheduled", "retry", "archived", "completed", "aggregating"}
)

// Config configures a Metrics. The zero value is usable: every field has a
// documented default.
type Config struct {
	// JobTypes are the registered job types, exported with zero counts
	// from start-up. Default none (types appear when first used).
	JobTypes []string
	// Queues are the asynq queues whose size and latency are exported.
	// Default none.
	Queues []string
	// Inspector reads the queues' state. Default nil: the queue families
	// are exported with zeros.
	Inspector *asynq.Inspector
	// QueueRefresh is the most often the queues are read from Redis: a
	// scrape within QueueRefresh of the last read gets the cached figures,
	// and concurrent scrapes share one read, so scraping costs at most one
	// round of Redis calls per QueueRefresh whatever the scrape rate.
	// Default 5s.
	QueueRefresh time.Duration
	// Logger receives failures to read the queues. Default slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.QueueRefresh <= 0 {
		c.QueueRefresh = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Metrics holds one process's registry and metric families. Its methods
// are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	published      *prometheus.CounterVec
	publishSeconds prometheus.Histogram
	socketCloses   *prometheus.CounterVec
	overflows      prometheus.Counter
	jobsSubmitted  *prometheus.CounterVec
	jobsFinished   *prometheus.CounterVec
	jobDuration    *prometheus.HistogramVec
	queueWait      prometheus.Histogram

	stream *streamCollector
}

// New returns a Metrics with every family registered on a fresh registry,
// the Go and process collectors included.
func New(cfg Config) *Metrics {
	cfg = cfg.withDefaults()
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskstream_events_published_total",
			Help: "Events appended to group logs (and published) by this process, by group kind.",
		}, []string{"kind"}),
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "taskstream_publish_seconds",
			Help:    "Time of one append step to a group log (a Log.Publish, each post of a pipeline of them, a PublishOnce batch, or a guarded append such as a job's end), failures included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
		socketCloses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskstream_socket_closes_total",
			Help: "WebSocket connections closed, by the close code the server sent.",
		}, []string{"code"}),
		overflows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "taskstream_send_queue_overflows_total",
			Help: "Sockets closed with 1013 because their bounded send queue (or the hub's buffer while they caught up) overflowed.",
		}),
		jobsSubmitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskstream_jobs_submitted_total",
			Help: "Jobs accepted and enqueued by this process, by job type.",
		}, []string{"type"}),
		jobsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "taskstream_jobs_finished_total",
			Help: "Jobs that reached a terminal state in this process, by job type and outcome (completed, failed, canceled).",
		}, []string{"type", "outcome"}),
		jobDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "taskstream_job_duration_seconds",
			Help:    "Run time of finished jobs, from their first start to their terminal state, by job type.",
			Buckets: []float64{.1, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600},
		}, []string{"type"}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "taskstream_job_queue_wait_seconds",
			Help:    "Time from a job's submission to its first start on a worker.",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900},
		}),
		stream: &streamCollector{},
	}
	for _, k := range Kinds {
		m.published.WithLabelValues(k)
	}
	for _, c := range CloseCodes {
		m.socketCloses.WithLabelValues(strconv.Itoa(c))
	}
	for _, t := range cfg.JobTypes {
		m.jobsSubmitted.WithLabelValues(t)
		m.jobDuration.WithLabelValues(t)
		for _, o := range Outcomes {
			m.jobsFinished.WithLabelValues(t, o)
		}
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.published, m.publishSeconds, m.socketCloses, m.overflows,
		m.jobsSubmitted, m.jobsFinished, m.jobDuration, m.queueWait,
		m.stream,
		newQueueCollector(cfg),
	)
	return m
}

// Registry returns the registry every family is registered on, for
// callers that add their own collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// ObservePublish times one append step of the log (see
// progress.LogConfig.OnPublish for which) and counts the events it
// appended; it has the signature of progress.LogConfig.OnPublish.
func (m *Metrics) ObservePublish(group string, appended int, took time.Duration, err error) {
	m.publishSeconds.Observe(took.Seconds())
	if appended > 0 {
		m.published.WithLabelValues(wire.KindOf(group)).Add(float64(appended))
	}
}

// SocketClosed counts a socket the server closed with code.
func (m *Metrics) SocketClosed(code int) {
	m.socketCloses.WithLabelValues(strconv.Itoa(code)).Inc()
}

// SendQueueOverflow counts a socket dropped because it was too slow.
func (m *Metrics) SendQueueOverflow() { m.overflows.Inc() }

// JobSubmitted counts a job of type typ accepted by the API (jobs.Observer).
func (m *Metrics) JobSubmitted(typ string) { m.jobsSubmitted.WithLabelValues(typ).Inc() }

// JobStarted records how long a job waited between its submission and its
// first start (jobs.Observer).
func (m *Metrics) JobStarted(typ string, wait time.Duration) {
	m.queueWait.Observe(max(wait, 0).Seconds())
}

// JobFinished counts a job of type typ that reached outcome, and its run
// time when it ran (ran false: canceled before it started) (jobs.Observer).
func (m *Metrics) JobFinished(typ, outcome string, took time.Duration, ran bool) {
	m.jobsFinished.WithLabelValues(typ, outcome).Inc()
	if ran {
		m.jobDuration.WithLabelValues(typ).Observe(max(took, 0).Seconds())
	}
}

// WatchHub makes the hub's counts part of every scrape: subscriptions by
// kind, shared Redis subscriptions, events delivered and replayed.
// Without a hub (a worker process) those families are zero.
func (m *Metrics) WatchHub(h *progress.Hub) {
	m.stream.mu.Lock()
	defer m.stream.mu.Unlock()
	m.stream.hub = h
}

// WatchSockets makes count, which returns the open connections by
// transport ("websocket", "sse", "longpoll"), part of every scrape. It
// must be fast. The last call wins.
func (m *Metrics) WatchSockets(count func() map[string]int) {
	m.stream.mu.Lock()
	defer m.stream.mu.Unlock()
	m.stream.sockets = count
}

// streamCollector reads the hub's and the server's live counts at scrape
// time, so nothing on the delivery path touches Prometheus.
type streamCollector struct {
	mu      sync.Mutex
	hub     *progress.Hub
	sockets func() map[string]int
}

var (
	socketsDesc = prometheus.NewDesc("taskstream_sockets",
		"Open client connections on this process, by transport (websocket, sse, longpoll).", []string{"transport"}, nil)
	subscriptionsDesc = prometheus.NewDesc("taskstream_subscriptions",
		"Local subscriptions to groups held by this process's sockets and streams, by group kind.", []string{"kind"}, nil)
	hubGroupsDesc = prometheus.NewDesc("taskstream_hub_groups",
		"Shared Redis subscriptions held by this process: one per group with a local subscriber.", nil, nil)
	deliveredDesc = prometheus.NewDesc("taskstream_events_delivered_total",
		"Events handed to local subscribers (one per event per subscriber, replays included), by group kind.", []string{"kind"}, nil)
	replayDesc = prometheus.NewDesc("taskstream_replay_events_total",
		"Events delivered from a group's log to catch a subscriber up, rather than live.", nil, nil)
)

func (c *streamCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{socketsDesc, subscriptionsDesc, hubGroupsDesc, deliveredDesc, replayDesc} {
		ch <- d
	}
}

func (c *streamCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	hub, sockets := c.hub, c.sockets
	c.mu.Unlock()
	var st progress.HubCounters
	if hub != nil {
		st = hub.Counters()
	}
	var open map[string]int
	if sockets != nil {
		open = sockets()
	}
	for _, t := range Transports {
		ch <- prometheus.MustNewConstMetric(socketsDesc, prometheus.GaugeValue, float64(open[t]), t)
	}
	// Known kinds always; any other kind the hub saw as well.
	subs := withKinds(st.SubscribersByKind)
	for _, k := range sortedKeys(subs) {
		ch <- prometheus.MustNewConstMetric(subscriptionsDesc, prometheus.GaugeValue, float64(subs[k]), k)
	}
	delivered := withKinds(st.Delivered)
	for _, k := range sortedKeys(delivered) {
		ch <- prometheus.MustNewConstMetric(deliveredDesc, prometheus.CounterValue, float64(delivered[k]), k)
	}
	ch <- prometheus.MustNewConstMetric(hubGroupsDesc, prometheus.GaugeValue, float64(st.Groups))
	ch <- prometheus.MustNewConstMetric(replayDesc, prometheus.CounterValue, float64(st.Replayed))
}
