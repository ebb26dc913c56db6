package progresstest

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// CommandHook is a go-redis hook that hands the commands of each round
// trip (one command, or a whole pipeline) to the function before they go
// out, for tests that count or inspect a client's Redis traffic:
//
//	rdb.AddHook(progresstest.CommandHook(func(cmds []redis.Cmder) { trips.Add(1) }))
type CommandHook func(cmds []redis.Cmder)

// DialHook passes dials through.
func (f CommandHook) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook hands f a single command.
func (f CommandHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		f([]redis.Cmder{cmd})
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook hands f a pipeline's commands, once for the round
// trip.
func (f CommandHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		f(cmds)
		return next(ctx, cmds)
	}
}
