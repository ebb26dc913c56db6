// Command loadgen measures fan-out: N WebSocket clients subscribe to one
// group, a publisher appends M events at rate R with progress.Log.Publish
// on the same Redis, and it reports delivered messages per second,
// delivery latency (receive time − event ts) and RSS per socket, as
// Markdown. Loopback only; every phase is bounded. See BENCHMARKS.md.
//
// With -scenario it runs scenarios (join, idle, fanout, latency, bytes,
// restart) on taskstream's cmd/api and on the reference, gorilla/websocket's
// examples/chat, each on a fresh server process, back to back, and prints
// both figures side by side with their ratio (bench/compare wraps it).
//
//	go run ./cmd/loadgen -redis-url redis://127.0.0.1:6379        # server in this process
//	go run ./cmd/loadgen -url http://127.0.0.1:8080 -redis-url redis://127.0.0.1:6379 -server-pid PID
//	go run ./cmd/loadgen -scenario all -redis-url redis://127.0.0.1:6379
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
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	cfg.progress = os.Stderr
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, logger); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}
