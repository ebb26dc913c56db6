// Command jobload measures jobs end to end through a running api: it
// submits `steps` jobs (POST /api/jobs) at a fixed rate (open loop, -rate)
// or with a fixed number in flight (closed loop, -inflight) for a while,
// watches every job over a socket from the start of its history, checks
// that each watcher saw every event of its job in order (seqs 1, 2, … with
// nothing skipped, `state pending` first, `state active` before the end,
// `result` last), and reports jobs/s finished, the submit → active and
// submit → finished latencies (p50/p95/p99), the failures by kind, and the
// load average. Loopback only. See bench/jobs and BENCHMARKS.md.
//
//	go run ./cmd/jobload -url http://127.0.0.1:8080 -token ADMIN -rate 1000 -duration 20s
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jobload:", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := runProfiled(ctx, cfg, logger)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jobload:", err)
		os.Exit(1)
	}
	rep.write(os.Stdout)
	if rep.Failed() > 0 {
		os.Exit(3)
	}
}

// runProfiled is run, under a CPU profile when cfg.CPUProfile says so.
func runProfiled(ctx context.Context, cfg config, logger *slog.Logger) (*report, error) {
	if cfg.CPUProfile == "" {
		return run(ctx, cfg, logger)
	}
	f, err := os.Create(cfg.CPUProfile)
	if err != nil {
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	rep, err := run(ctx, cfg, logger)
	pprof.StopCPUProfile()
	if cerr := f.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("-cpuprofile: %w", cerr)
	}
	return rep, err
}
