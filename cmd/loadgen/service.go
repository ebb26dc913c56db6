package main

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

// service is the taskstream API in this process, started the way cmd/api
// starts it (app.RunAPI, so it is wired like the real thing) on a free
// loopback port, without a worker: the load is group fan-out, not jobs.
type service struct {
	URL      string
	RedisURL string
	Mini     bool // on an in-process miniredis started here

	mini    *miniredis.Miniredis
	stopAPI context.CancelFunc
	apiDone chan error
	logger  *slog.Logger
}

// startService starts the API on redisURL (empty: a miniredis started
// here) and waits until it answers /healthz.
func startService(ctx context.Context, redisURL, prefix string, sendQueue int, logger *slog.Logger) (*service, error) {
	s := &service{RedisURL: redisURL, logger: logger}
	if redisURL == "" {
		m := miniredis.NewMiniRedis()
		m.ClockTTL(true) // as app.Open does for its embedded Redis
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("start miniredis: %w", err)
		}
		s.mini, s.Mini, s.RedisURL = m, true, "redis://"+m.Addr()
	}
	addr, err := freeAddr()
	if err != nil {
		s.Close()
		return nil, err
	}
	cfg := app.APIConfig{
		Common:        app.Common{RedisURL: s.RedisURL, RedisMode: progress.ModeSingle, Prefix: prefix},
		Addr:          addr,
		SendQueue:     sendQueue,
		SessionSecret: randomSecret(),
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

// Close stops the API, then miniredis.
func (s *service) Close() {
	if s.stopAPI != nil {
		s.stopAPI()
		if err := <-s.apiDone; err != nil {
			s.logger.Warn("api", "err", err)
		}
		s.stopAPI = nil
	}
	if s.mini != nil {
		s.mini.Close()
	}
}

// randomSecret signs this run's session cookies (a set secret also keeps
// RunAPI from warning that it made one up).
func randomSecret() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// freeAddr returns a loopback address with a port nobody listened on a
// moment ago.
func freeAddr() (string, error) {
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
