// Command worker runs taskstream job handlers from the shared Redis
// (REDIS_URL is required). Run as many as the queue needs. See README.md
// (or worker -h) for its flags and environment variables.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"taskstream/cmd/internal/app"
)

func main() {
	cfg, err := app.ParseWorker(os.Args[1:])
	if help := (*app.HelpError)(nil); errors.As(err, &help) {
		fmt.Print(help.Usage)
		return
	}
	if err != nil {
		// One line: the setting, its value and what it should be.
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(2)
	}
	logger, _ := app.NewLogger(cfg.LogLevel, cfg.LogFormat) // checked by ParseWorker
	app.RouteLibraryLogs(logger)
	logger.Info("worker starting", "redis_mode", cfg.RedisMode, "concurrency", cfg.Concurrency)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.RunWorker(ctx, cfg, logger); err != nil {
		logger.Error("worker failed", "err", err)
		stop()
		os.Exit(1)
	}
}
