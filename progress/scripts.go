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
	// sources holds each script's source by digest, for loadScripts'
	// pipelined SCRIPT LOADs: redis.Script keeps its own unexported.
	sources map[string]string
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
		scriptRegistry.sources = map[string]string{}
	}
	if _, ok := scriptRegistry.scripts[s.Hash()]; !ok {
		scriptRegistry.scripts[s.Hash()] = s
		scriptRegistry.sources[s.Hash()] = src
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
// script cache of rdb's Redis in one round trip: on a Cluster into every
// node's, masters and replicas, one pipeline per node (loadScripts), since
// a script's calls go to the node of their keys. It returns how
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
// go again by digest once the missing scripts are loaded (one pipeline of
// SCRIPT LOADs, loadScripts): sending the source with every call instead
// costs an EVAL each (hundreds in the first presence flush of a busy join
// on a new Redis, each one hashed again by Redis). Only when the load
// failed, or Redis lost the scripts again since, do they go with their
// source, as Script.Run would send them.
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

// loadScripts puts scripts in Redis's script cache in one round trip: a
// pipeline of SCRIPT LOADs (LoadScripts' few dozen at start, or the
// scripts a pass found missing), where one SCRIPT LOAD per script cost a
// round trip each. On a Cluster a pipeline goes to every node, masters
// and replicas, at once: a script's calls go to the node of their keys,
// and a cluster client's pipeline would send keyless SCRIPT LOADs to one
// node only. Hooks of the cluster client itself therefore do not see
// these loads; hooks of its nodes' clients do.
func loadScripts(ctx context.Context, rdb redis.UniversalClient, scripts []*redis.Script) error {
	if len(scripts) == 0 {
		return nil
	}
	srcs, err := scriptSources(scripts)
	if err != nil {
		return err
	}
	// A Cluster's (and a Ring's) nodes each get the pipeline.
	if c, ok := rdb.(interface {
		ForEachShard(context.Context, func(context.Context, *redis.Client) error) error
	}); ok {
		return c.ForEachShard(ctx, func(ctx context.Context, node *redis.Client) error {
			return pipelineLoads(ctx, node, scripts, srcs)
		})
	}
	return pipelineLoads(ctx, rdb, scripts, srcs)
}

// scriptSources returns the sources of scripts, all made with NewScript.
func scriptSources(scripts []*redis.Script) ([]string, error) {
	scriptRegistry.mu.Lock()
	defer scriptRegistry.mu.Unlock()
	srcs := make([]string, len(scripts))
	for i, s := range scripts {
		src, ok := scriptRegistry.sources[s.Hash()]
		if !ok {
			return nil, fmt.Errorf("progress: load script %s: not made with NewScript, its source is unknown", s.Hash())
		}
		srcs[i] = src
	}
	return srcs, nil
}

// pipelineLoads sends SCRIPT LOAD of each of srcs (the sources of scripts)
// to rdb's one Redis in one pipeline and returns the first load's error,
// naming its script. It queues the pipeline's own ScriptLoad, not
// Script.Load: that one reads its command's reply as soon as queued, so on
// a pipeline it would take the empty reply for the script's digest.
func pipelineLoads(ctx context.Context, rdb redis.Cmdable, scripts []*redis.Script, srcs []string) error {
	cmds, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, src := range srcs {
			pipe.ScriptLoad(ctx, src)
		}
		return nil
	})
	for i, cmd := range cmds {
		if cmd.Err() != nil {
			return fmt.Errorf("progress: load script %s: %w", scripts[i].Hash(), cmd.Err())
		}
	}
	if err != nil {
		return fmt.Errorf("progress: load scripts: %w", err)
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
