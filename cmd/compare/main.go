// Command compare watches one job over the four ways a client can follow
// it — WebSocket, Server-Sent Events, JSON long-poll and plain polling of
// the job — at the same time, and prints per transport the bytes on the
// wire per progress update (headers, handshakes and framing included) and
// the delivery delay, as a Markdown table. See BENCHMARKS.md.
//
//	go run ./cmd/compare                          # against http://localhost:8080
//	go run ./cmd/compare -embedded -redis-url redis://127.0.0.1:6379
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(2)
	}
	level := slog.LevelWarn
	if cfg.Verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, logger); err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}
