// Command api serves taskstream's HTTP API, WebSocket and pages. Without
// REDIS_URL it runs everything in one process: an embedded Redis and a
// worker. See README.md (or api -h) for its flags and environment
// variables.
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
	cfg, err := app.ParseAPI(os.Args[1:])
	if help := (*app.HelpError)(nil); errors.As(err, &help) {
		fmt.Print(help.Usage)
		return
	}
	if err != nil {
		// One line: the setting, its value and what it should be.
		fmt.Fprintln(os.Stderr, "api:", err)
		os.Exit(2)
	}
	logger, _ := app.NewLogger(cfg.LogLevel, cfg.LogFormat) // checked by ParseAPI
	app.RouteLibraryLogs(logger)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.RunAPI(ctx, cfg, logger); err != nil {
		logger.Error("api failed", "err", err)
		stop()
		os.Exit(1)
	}
}
