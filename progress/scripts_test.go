package progress

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// loadFault is what scriptTraffic does to the SCRIPT LOADs it sees.
type loadFault int

const (
	loadWorks     loadFault = iota
	loadRefused             // the load fails: nothing loaded
	loadForgotten           // the load works, then Redis loses its scripts again (SCRIPT FLUSH)
)

// scriptTraffic is a go-redis hook that counts a client's round trips and
// its script commands, and plays fault on its SCRIPT LOADs: the passes of
// a pipeline of scripts whose scripts Redis lacked (scriptPass) show in
// the counts.
type scriptTraffic struct {
	fault loadFault
	// flusher, a client without the hook, flushes the scripts for
	// loadForgotten.
	flusher redis.UniversalClient

	mu                            sync.Mutex
	trips, evals, evalShas, loads int
	loadTrips                     int // round trips that carried a SCRIPT LOAD
}

// scriptCounts is what a scriptTraffic counted.
type scriptCounts struct{ Trips, Evals, EvalShas, Loads int }

func (h *scriptTraffic) counts() scriptCounts {
	h.mu.Lock()
	defer h.mu.Unlock()
	return scriptCounts{h.trips, h.evals, h.evalShas, h.loads}
}

func (h *scriptTraffic) saw(cmds []redis.Cmder) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if name := cmds[0].Name(); name == "hello" || name == "client" {
		return // a new connection's setup, not the code's traffic
	}
	h.trips++
	if slices.ContainsFunc(cmds, isScriptLoad) {
		h.loadTrips++
	}
	for _, c := range cmds {
		switch {
		case c.Name() == "eval":
			h.evals++
		case c.Name() == "evalsha":
			h.evalShas++
		case isScriptLoad(c):
			h.loads++
		}
	}
}

// loadRoundTrips is how many of the round trips counted carried a SCRIPT
// LOAD.
func (h *scriptTraffic) loadRoundTrips() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.loadTrips
}

// isScriptLoad reports whether c is a SCRIPT LOAD.
func isScriptLoad(c redis.Cmder) bool {
	args := c.Args()
	return c.Name() == "script" && len(args) > 1 && fmt.Sprint(args[1]) == "load"
}

func (h *scriptTraffic) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *scriptTraffic) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.saw([]redis.Cmder{cmd})
		return h.playFault(ctx, []redis.Cmder{cmd}, func(ctx context.Context) error { return next(ctx, cmd) })
	}
}

func (h *scriptTraffic) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.saw(cmds)
		return h.playFault(ctx, cmds, func(ctx context.Context) error { return next(ctx, cmds) })
	}
}

// playFault sends cmds (send) with h's fault when they are SCRIPT LOADs
// (loadScripts pipelines them with nothing else), and as they are
// otherwise.
func (h *scriptTraffic) playFault(ctx context.Context, cmds []redis.Cmder, send func(context.Context) error) error {
	if !isScriptLoad(cmds[0]) {
		return send(ctx)
	}
	switch h.fault {
	case loadRefused:
		err := errors.New("test: SCRIPT LOAD refused")
		for _, c := range cmds {
			c.SetErr(err)
		}
		return err
	case loadForgotten:
		err := send(ctx)
		if ferr := h.flusher.ScriptFlush(ctx).Err(); ferr != nil {
			return ferr
		}
		return err
	}
	return send(ctx)
}

// hookScriptTraffic adds h where rdb's script traffic shows: on rdb, or on
// a Cluster on each node's client, which loadScripts' pipelines go to
// straight (the cluster client's own hooks do not see them; each node's
// see the script calls sent to it).
func hookScriptTraffic(t *testing.T, rdb redis.UniversalClient, h redis.Hook) {
	t.Helper()
	c, ok := rdb.(*redis.ClusterClient)
	if !ok {
		rdb.AddHook(h)
		return
	}
	if err := c.ForEachShard(t.Context(), func(_ context.Context, node *redis.Client) error {
		node.AddHook(h)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
