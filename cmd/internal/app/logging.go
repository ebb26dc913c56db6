package app

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"
)

// RouteLibraryLogs sends what libraries log on their own through logger,
// so a JSON log (LOG_FORMAT=json) holds no plain-text line: go-redis's
// connection-pool messages (a global logger in go-redis) and the standard
// library's log package (net/http's "http: Accept error" and the like).
// Asynq's logs already go through the worker's slog adapter.
func RouteLibraryLogs(logger *slog.Logger) {
	slog.SetDefault(logger) // also redirects the log package to logger's handler
	redis.SetLogger(redisLogger{logger.With("component", "go-redis")})
}

// redisLogger adapts go-redis's Printf logger to slog. go-redis logs pool
// retries (a failed dial, a bad connection) at every attempt; the errors
// that matter reach our callers and are logged there with context, so
// these lines are debug: a start-up against an unreachable Redis stays one
// line.
type redisLogger struct{ l *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.l.DebugContext(ctx, strings.TrimSpace(fmt.Sprintf(format, v...)))
}
