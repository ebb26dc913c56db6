// Command worker runs taskstream job handlers from the shared Redis
// (REDIS_URL is required). Run as many as the queue needs. See README.md
// for its flags and environment variables.
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
	cfg, err := app.ParseWorker(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	logger, err := app.NewLogger(cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	app.RouteLibraryLogs(logger)
	logger.Info("worker starting", "redis_mode", cfg.RedisMode, "concurrency", cfg.Concurrency)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.RunWorker(ctx, cfg, logger); err != nil {
		logger.Error("worker failed", "err", err)
		os.Exit(1)
	}
}
