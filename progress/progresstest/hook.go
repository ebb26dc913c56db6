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

// ReplyHook is CommandHook's counterpart for replies: it hands the
// commands of each round trip to the function once their replies (or
// errors) are in, for tests that count what Redis answered (NOSCRIPT, …).
type ReplyHook func(cmds []redis.Cmder)

// DialHook passes dials through.
func (f ReplyHook) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook hands f a single command, answered.
func (f ReplyHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		f([]redis.Cmder{cmd})
		return err
	}
}

// ProcessPipelineHook hands f a pipeline's commands, answered, once for
// the round trip.
func (f ReplyHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		f(cmds)
		return err
	}
}
