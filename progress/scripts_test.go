package progress

import (
	"context"
	"errors"
	"fmt"
	"sync"

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
	for _, c := range cmds {
		switch args := c.Args(); {
		case c.Name() == "eval":
			h.evals++
		case c.Name() == "evalsha":
			h.evalShas++
		case c.Name() == "script" && len(args) > 1 && fmt.Sprint(args[1]) == "load":
			h.loads++
		}
	}
}

func (h *scriptTraffic) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *scriptTraffic) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.saw([]redis.Cmder{cmd})
		args := cmd.Args()
		if cmd.Name() != "script" || len(args) < 2 || fmt.Sprint(args[1]) != "load" {
			return next(ctx, cmd)
		}
		switch h.fault {
		case loadRefused:
			err := errors.New("test: SCRIPT LOAD refused")
			cmd.SetErr(err)
			return err
		case loadForgotten:
			err := next(ctx, cmd)
			if ferr := h.flusher.ScriptFlush(ctx).Err(); ferr != nil {
				return ferr
			}
			return err
		}
		return next(ctx, cmd)
	}
}

func (h *scriptTraffic) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.saw(cmds)
		return next(ctx, cmds)
	}
}
