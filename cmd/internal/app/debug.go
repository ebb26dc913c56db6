package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// startDebug binds addr and serves Go's profiles (net/http/pprof, under
// /debug/pprof/) there until the returned stop is called. The profiles
// are on a listener of their own, never on the public one: they reveal
// the program's internals and a CPU profile costs CPU, so DEBUG_ADDR is
// for a loopback or operator-only address. The address is bound at once,
// before the process starts anything else, so a busy port fails start-up
// with nothing to undo.
func startDebug(addr string, logger *slog.Logger) (stop func(context.Context), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("debug: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	// No WriteTimeout: a CPU profile or a trace streams for as long as
	// its ?seconds= asks.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("debug server failed", "err", err)
		}
	}()
	logger.Info("serving profiles", "url", "http://"+displayAddr(ln.Addr())+"/debug/pprof/")
	return func(ctx context.Context) {
		// A profile being taken is cut short: the process is stopping.
		_ = srv.Close()
		<-done
	}, nil
}
