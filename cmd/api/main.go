// Command api serves taskstream's HTTP API, WebSocket and pages. Without
// REDIS_URL it runs everything in one process: an embedded Redis and a
// worker. See README.md for its flags and environment variables.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"taskstream/cmd/internal/app"
)

func main() {
	cfg, err := app.ParseAPI(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "api:", err)
		os.Exit(2)
	}
	logger, err := app.NewLogger(cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "api:", err)
		os.Exit(2)
	}
	app.RouteLibraryLogs(logger)
	if cfg.RedisURL == "" {
		logger.Info("running embedded: in-process Redis (miniredis) and worker, state is lost on exit; set REDIS_URL=redis://localhost:6379 to use a real Redis and run workers with go run ./cmd/worker")
	} else {
		logger.Info("running with Redis", "mode", cfg.RedisMode, "worker", cfg.RunWorker)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.RunAPI(ctx, cfg, logger); err != nil {
		logger.Error("api failed", "err", err)
		os.Exit(1)
	}
}
