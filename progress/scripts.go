package progress

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/redis/go-redis/v9"
)

// scriptRegistry holds every script made with NewScript (AppendGuards
// included), by digest, for LoadScripts. Its zero value is ready: package
// variables of this package and of those that import it may call
// NewScript in their initializers, in whatever order Go runs them.
var scriptRegistry struct {
	mu      sync.Mutex
	scripts map[string]*redis.Script
}

// NewScript returns redis.NewScript(src), registered so that LoadScripts
// loads it: every Lua script of taskstream is made with it (a test fails
// on a redis.NewScript anywhere else), so a process can put all of its
// scripts in Redis's cache at start instead of its first calls each
// meeting NOSCRIPT. A script made on the fly is registered when made: one
// made after the start's LoadScripts is loaded by its first refused call,
// as before.
func NewScript(src string) *redis.Script {
	s := redis.NewScript(src)
	scriptRegistry.mu.Lock()
	defer scriptRegistry.mu.Unlock()
	if scriptRegistry.scripts == nil {
		scriptRegistry.scripts = map[string]*redis.Script{}
	}
	if _, ok := scriptRegistry.scripts[s.Hash()]; !ok {
		scriptRegistry.scripts[s.Hash()] = s
	}
	return s
}

// Scripts returns the scripts made with NewScript so far, one per source,
// in the order of their digests.
func Scripts() []*redis.Script {
	scriptRegistry.mu.Lock()
	defer scriptRegistry.mu.Unlock()
	out := make([]*redis.Script, 0, len(scriptRegistry.scripts))
	for _, s := range scriptRegistry.scripts {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *redis.Script) int { return cmp.Compare(a.Hash(), b.Hash()) })
	return out
}

// LoadScripts loads every script made with NewScript (Scripts) into the
// script cache of rdb's Redis: on a Cluster into every node's, masters and
// replicas (go-redis's ClusterClient.ScriptLoad sends it to each shard),
// since a script's calls go to the node of their keys. It returns how
// many scripts it loaded (none when one load failed: some may be loaded
// all the same). A process calls it at start, so that its first script
// calls go by digest; a Redis that loses its scripts later (a restart, a
// failover to a replica that never had them, SCRIPT FLUSH) is mended call
// by call, as without it (Script.Run's EVAL, scriptPass's loads).
func LoadScripts(ctx context.Context, rdb redis.UniversalClient) (int, error) {
	scripts := Scripts()
	if err := loadScripts(ctx, rdb, scripts); err != nil {
		return 0, err
	}
	return len(scripts), nil
}

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
			return fmt.Errorf("progress: load script %s: %w", s.Hash(), err)
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
