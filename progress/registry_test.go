package progress

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// scriptBackend is a Redis the registry's tests load scripts into: the
// client the code uses, and a client of each master, where the scripts
// must be (one for a single server).
type scriptBackend struct {
	rdb     redis.UniversalClient
	masters []*redis.Client
}

// forEachScriptBackend runs body on a new embedded Redis, a new
// redis-server and a new 3-master Cluster, whose script caches start
// empty.
func forEachScriptBackend(t *testing.T, body func(t *testing.T, b scriptBackend)) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		body(t, scriptBackend{rdb: srv.Client(t), masters: []*redis.Client{srv.Client(t)}})
	})
	t.Run("cluster", func(t *testing.T) {
		c := progresstest.NewCluster(t, 3)
		b := scriptBackend{rdb: c.Client(t)}
		for _, n := range c.Nodes {
			b.masters = append(b.masters, n.Client(t))
		}
		body(t, b)
	})
}

// cachedScripts returns, per master, how many of scripts its script cache
// holds.
func (b scriptBackend) cachedScripts(t *testing.T, scripts []*redis.Script) []int {
	t.Helper()
	hashes := make([]string, len(scripts))
	for i, s := range scripts {
		hashes[i] = s.Hash()
	}
	var held []int
	for _, m := range b.masters {
		exists, err := m.ScriptExists(t.Context(), hashes...).Result()
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, len(slices.DeleteFunc(exists, func(e bool) bool { return !e })))
	}
	return held
}

// LoadScripts puts every registered script in the cache of every master,
// in one round trip per master: none is there before, all are after
// (SCRIPT EXISTS on each master).
func TestLoadScriptsLoadsEveryMaster(t *testing.T) {
	// A guard made now is registered too (jobs makes some on the fly).
	guard := NewAppendGuard(`local function guard() return 1, nil end`, 0, 0)
	scripts := Scripts()
	for _, s := range []*redis.Script{appendScript, newerScript, publishOnceScript, renewLease, releaseLease, joinScript, leaveScript, sweepScript, guard.script} {
		if !slices.Contains(scripts, s) {
			t.Fatalf("the registry lacks a script of this package (%s); it holds %d", s.Hash(), len(scripts))
		}
	}
	forEachScriptBackend(t, func(t *testing.T, b scriptBackend) {
		none := make([]int, len(b.masters))
		if held := b.cachedScripts(t, scripts); !slices.Equal(held, none) {
			t.Fatalf("a new Redis holds %v of the %d scripts per master, want none", held, len(scripts))
		}
		traffic := &scriptTraffic{}
		hookScriptTraffic(t, b.rdb, traffic)
		hashes := make([]string, len(scripts))
		for i, s := range scripts {
			hashes[i] = s.Hash()
		}
		n, err := LoadScripts(t.Context(), b.rdb)
		if err != nil {
			t.Fatal(err)
		}
		if n < len(scripts) { // other tests may register more meanwhile
			t.Errorf("LoadScripts loaded %d scripts, want %d", n, len(scripts))
		}
		all := slices.Repeat([]int{len(scripts)}, len(b.masters))
		if held := b.cachedScripts(t, scripts); !slices.Equal(held, all) {
			t.Errorf("after LoadScripts the masters hold %v scripts, want %v", held, all)
		}
		// The scripts' digests are as they were (go-redis's Script.Load on
		// a pipeline would have set them to its empty reply).
		for i, s := range scripts {
			if s.Hash() != hashes[i] {
				t.Fatalf("LoadScripts changed a script's digest from %s to %q", hashes[i], s.Hash())
			}
		}
		// One pipeline per master, whatever the number of scripts.
		if trips, loads := traffic.loadRoundTrips(), traffic.counts().Loads; trips != len(b.masters) || loads != n*len(b.masters) {
			t.Errorf("LoadScripts sent %d SCRIPT LOADs in %d round trips, want %d in %d (one per master)", loads, trips, n*len(b.masters), len(b.masters))
		}
	})
}

// A pipeline of script calls on a Redis whose scripts were loaded at
// start goes by digest once, with no SCRIPT LOAD and no EVAL; without the
// start's load the same pipeline meets NOSCRIPT, loads and goes again.
func TestLoadedScriptsSpareFirstCallsNoScript(t *testing.T) {
	forEachScriptBackend(t, func(t *testing.T, b scriptBackend) {
		const posts = 30
		for i, tc := range []struct {
			name    string
			preload bool
		}{
			{name: "not loaded at start"},
			{name: "loaded at start", preload: true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := t.Context()
				// A new Redis's cache: the previous case's loads gone.
				if err := b.rdb.ScriptFlush(ctx).Err(); err != nil {
					t.Fatal(err)
				}
				if tc.preload {
					if _, err := LoadScripts(ctx, b.rdb); err != nil {
						t.Fatal(err)
					}
				}
				traffic := &scriptTraffic{}
				hookScriptTraffic(t, b.rdb, traffic)
				var batch []Post
				for j := range posts {
					batch = append(batch, Post{fmt.Sprintf("job:preload%d-%d", i, j), "note", j})
				}
				_, errs := NewLog(b.rdb, LogConfig{}).PublishMany(ctx, batch)
				for j, err := range errs {
					if err != nil {
						t.Fatalf("post %d: %v", j, err)
					}
				}
				got := traffic.counts()
				if tc.preload && (got.Loads != 0 || got.Evals != 0 || got.EvalShas != posts) {
					t.Errorf("after the start's load the batch made %+v, want %d EVALSHAs and no load or EVAL", got, posts)
				}
				if !tc.preload && (got.Loads == 0 || got.EvalShas != 2*posts) {
					t.Errorf("without the start's load the batch made %+v, want the script loaded and %d EVALSHAs", got, 2*posts)
				}
			})
		}
	})
}

// Every script of the module is made with NewScript, so LoadScripts knows
// it: a redis.NewScript anywhere else (outside tests) fails here.
func TestEveryScriptIsRegistered(t *testing.T) {
	fset := token.NewFileSet()
	var found []string
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != ".." && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		if rel, _ := filepath.Rel("..", path); filepath.ToSlash(rel) == "progress/scripts.go" {
			return nil // NewScript itself
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		found = append(found, directScripts(fset, f)...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) > 0 {
		t.Errorf("scripts made without progress.NewScript, which LoadScripts would not load at start:\n%s", strings.Join(found, "\n"))
	}
}

// directScripts returns the positions of f's calls of go-redis's script
// constructors, under whatever name f imports go-redis.
func directScripts(fset *token.FileSet, f *ast.File) []string {
	pkg := ""
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p == "github.com/redis/go-redis/v9" {
			pkg = "redis"
			if imp.Name != nil {
				pkg = imp.Name.Name
			}
		}
	}
	if pkg == "" {
		return nil
	}
	var found []string
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if x, ok := sel.X.(*ast.Ident); ok && x.Name == pkg && strings.HasPrefix(sel.Sel.Name, "NewScript") {
			found = append(found, fset.Position(call.Pos()).String()+": "+pkg+"."+sel.Sel.Name)
		}
		return true
	})
	return found
}

// directScripts finds go-redis's script constructors however go-redis is
// imported, and nothing else.
func TestDirectScripts(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      int
	}{
		{"plain", `import "github.com/redis/go-redis/v9"
var s = redis.NewScript("return 1")`, 1},
		{"renamed, server digest", `import r "github.com/redis/go-redis/v9"
func f() { _ = r.NewScriptServerSHA("return 1"); _ = r.NewScript("return 2") }`, 2},
		{"through the registry", `import "taskstream/progress"
var s = progress.NewScript("return 1")`, 0},
		{"another package's NewScript", `import "github.com/redis/go-redis/v9"
var s = other.NewScript("return 1"); var c redis.Cmdable`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, "x.go", "package x\n"+tc.src, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			if got := directScripts(fset, f); len(got) != tc.want {
				t.Errorf("found %q, want %d", got, tc.want)
			}
		})
	}
}

// The registry keeps one script per source, whichever NewScript made it.
func TestNewScriptRegistersEachSourceOnce(t *testing.T) {
	src := "return 'registry test " + newEpoch() + "'"
	a, b := NewScript(src), NewScript(src)
	var held []*redis.Script
	for _, s := range Scripts() {
		if s.Hash() == a.Hash() {
			held = append(held, s)
		}
	}
	if len(held) != 1 || held[0] != a || b.Hash() != a.Hash() {
		t.Fatalf("two NewScripts of one source: the registry holds %d of it (the first: %v)", len(held), len(held) == 1 && held[0] == a)
	}
}
