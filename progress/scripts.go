package progress

import (
	"context"
	"fmt"
	"slices"

	"github.com/redis/go-redis/v9"
)

// scriptPass is one try of a pipeline of script calls (presence's
// runScripts, publishMany). The calls go by digest; those that find their
// script missing from Redis's cache (a new Redis, a restart, SCRIPT FLUSH)
// go again by digest once each missing script is loaded, one SCRIPT LOAD
// per script: sending the source with every call instead costs an EVAL
// each (hundreds in the first presence flush of a busy join on a new
// Redis, each one hashed again by Redis). Only when the load failed, or
// Redis lost the scripts again since, do they go with their source, as
// Script.Run would send them.
type scriptPass int

const (
	byDigest  scriptPass = iota // EVALSHA: the usual case, the scripts are cached
	afterLoad                   // EVALSHA again, the missing scripts loaded
	bySource                    // EVAL: the last try
)

// queue queues s's call on pipe as pass sends it.
func (pass scriptPass) queue(ctx context.Context, pipe redis.Pipeliner, s *redis.Script, keys []string, args []any) *redis.Cmd {
	if pass == bySource {
		return s.Eval(ctx, pipe, keys, args...)
	}
	return s.EvalSha(ctx, pipe, keys, args...)
}

// retry returns the pass that sends again the calls of pass whose scripts
// (missing) Redis lacked, having loaded them when that pass is afterLoad;
// false after the last pass (bySource, whose calls cannot miss).
func (pass scriptPass) retry(ctx context.Context, rdb redis.UniversalClient, missing []*redis.Script) (scriptPass, bool) {
	switch pass {
	case byDigest:
		if loadScripts(ctx, rdb, missing) == nil {
			return afterLoad, true
		}
		return bySource, true
	case afterLoad:
		return bySource, true
	}
	return pass, false
}

// loadScripts puts scripts in Redis's script cache; on a Cluster the
// client's SCRIPT LOAD goes to every node, where each script's calls may
// go by their keys.
func loadScripts(ctx context.Context, rdb redis.UniversalClient, scripts []*redis.Script) error {
	for _, s := range scripts {
		if err := s.Load(ctx, rdb).Err(); err != nil {
			return fmt.Errorf("progress: load a script: %w", err)
		}
	}
	return nil
}

// addScript adds s to scripts unless it is there already.
func addScript(scripts []*redis.Script, s *redis.Script) []*redis.Script {
	if slices.Contains(scripts, s) {
		return scripts
	}
	return append(scripts, s)
}

// IsNoScript reports whether err is Redis's answer to EVALSHA of a script
// it does not hold (a new Redis, a restart, SCRIPT FLUSH): nothing ran.
func IsNoScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }
