package app

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
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
	logger.Info("serving profiles", "url", "http://"+displayAddr(ln.Addr())+"/debug/pprof/")
	return serveAside(ln, mux, "debug", false, logger), nil
}
