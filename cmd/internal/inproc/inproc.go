// Package inproc owns taskstream started in this process, wired exactly as
// cmd/api and cmd/worker wire it (app.RunAPI, app.RunWorker), for tools and
// benchmarks: the API on a free loopback port, on a given Redis or on a
// miniredis started here, and a worker only when asked for.
package inproc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/alicebob/miniredis/v2"

	"taskstream/cmd/internal/app"
	"taskstream/progress"
)

// Options says how to start the service. The zero value is the API on a
// miniredis started here, with the defaults of app.RunAPI.
type Options struct {
	RedisURL     string       // the Redis to use; empty: a miniredis started here
	Prefix       string       // Redis key prefix (app.Common.Prefix)
	SendQueue    int          // per-socket send queue (app.APIConfig.SendQueue); 0: the default
	ProgressRate float64      // at most this many progress events per second per job; 0: the default
	AdminToken   string       // an admin bearer token the API accepts (app.APIConfig.AdminTokens); "": none
	Logger       *slog.Logger // nil: slog.Default()
}

// Service is taskstream in this process. The API runs without a worker;
// StartWorker adds one later, so a caller can, say, attach every watcher to
// a job before the job runs.
type Service struct {
	URL      string // the API's base URL, http://127.0.0.1:port
	RedisURL string // the Redis the service uses (the miniredis's when Mini)
	Mini     bool   // on a miniredis started here

	common  app.Common
	logger  *slog.Logger
	mini    *miniredis.Miniredis
	stopAPI context.CancelFunc
	apiDone chan error
	stopW   context.CancelFunc
	wDone   chan error
}

// Start starts the API as o says and waits until it answers /healthz
// (at most 30 s, or until ctx ends).
func Start(ctx context.Context, o Options) (*Service, error) {
	logger := o.Logger
	if logger == nil {
		logger = slog.Default()
	}
	s := &Service{RedisURL: o.RedisURL, logger: logger}
	if o.RedisURL == "" {
		m := miniredis.NewMiniRedis()
		m.ClockTTL(true) // as app.Open does for its embedded Redis
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("start miniredis: %w", err)
		}
		s.mini, s.Mini, s.RedisURL = m, true, "redis://"+m.Addr()
	}
	addr, err := FreeAddr()
	if err != nil {
		s.Close()
		return nil, err
	}
	s.common = app.Common{RedisURL: s.RedisURL, RedisMode: progress.ModeSingle, Prefix: o.Prefix, ReportRate: o.ProgressRate}
	cfg := app.APIConfig{Common: s.common, Addr: addr, SendQueue: o.SendQueue, SessionSecret: randomSecret()}
	if o.AdminToken != "" {
		cfg.AdminTokens = []string{o.AdminToken}
	}
	apiCtx, cancel := context.WithCancel(context.Background())
	s.stopAPI, s.apiDone = cancel, make(chan error, 1)
	go func() { s.apiDone <- app.RunAPI(apiCtx, cfg, logger) }()
	s.URL = "http://" + addr
	if err := waitHealthy(ctx, s.URL, s.apiDone); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// StartWorker starts a worker (as cmd/worker would) that picks jobs up
// within 20 ms. A second call does nothing.
func (s *Service) StartWorker() {
	if s.stopW != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopW, s.wDone = cancel, make(chan error, 1)
	cfg := app.WorkerConfig{Common: s.common, Worker: app.Worker{Concurrency: 4, PollInterval: 20 * time.Millisecond, ShutdownTimeout: 2 * time.Second}}
	go func() { s.wDone <- app.RunWorker(ctx, cfg, s.logger) }()
}

// Close stops the worker, then the API, then miniredis. A second call does
// nothing.
func (s *Service) Close() {
	if s.stopW != nil {
		s.stopW()
		if err := <-s.wDone; err != nil {
			s.logger.Warn("worker", "err", err)
		}
		s.stopW = nil
	}
	if s.stopAPI != nil {
		s.stopAPI()
		if err := <-s.apiDone; err != nil {
			s.logger.Warn("api", "err", err)
		}
		s.stopAPI = nil
	}
	if s.mini != nil {
		s.mini.Close()
		s.mini = nil
	}
}

// randomSecret signs this run's session cookies (a set secret also keeps
// RunAPI from warning that it made one up).
func randomSecret() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// FreeAddr returns a loopback address with a port nobody listened on a
// moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// waitHealthy polls base/healthz until it answers 200, the server fails,
// or 30 s pass.
func waitHealthy(ctx context.Context, base string, failed <-chan error) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/healthz", nil)
		if res, err := client.Do(req); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-failed:
			return fmt.Errorf("the in-process server stopped: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("the in-process server did not answer %s/healthz: %w", base, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
