package app

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"taskstream/jobs"
	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/web/auth"
)

// scriptsBackend is a Redis a process starts on: its REDIS_URL and
// REDIS_MODE (empty: the embedded one), and a client of each master,
// where the scripts must be (nil: the embedded one, through the process's
// own client).
type scriptsBackend struct {
	url, mode string
	masters   []*redis.Client
}

// scriptsBackends starts each kind of Redis a process runs on, with an
// empty script cache: embedded, redis-server, redis-server behind a
// sentinel, and a 3-master Cluster.
var scriptsBackends = []struct {
	name  string
	start func(t *testing.T) scriptsBackend
}{
	{"embedded", func(t *testing.T) scriptsBackend { return scriptsBackend{} }},
	{"redis-server", func(t *testing.T) scriptsBackend {
		srv := progresstest.Real(t)
		return scriptsBackend{url: srv.URL(), mode: progress.ModeSingle, masters: []*redis.Client{srv.Client(t)}}
	}},
	{"sentinel", func(t *testing.T) scriptsBackend {
		srv := progresstest.Real(t)
		return scriptsBackend{url: progresstest.Sentinel(t, srv).SentinelURL(), mode: progress.ModeSentinel, masters: []*redis.Client{srv.Client(t)}}
	}},
	{"cluster", func(t *testing.T) scriptsBackend {
		c := progresstest.NewCluster(t, 3)
		b := scriptsBackend{url: c.URL(), mode: progress.ModeCluster}
		for _, n := range c.Nodes {
			b.masters = append(b.masters, n.Client(t))
		}
		return b
	}},
}

// openCore opens a process's Core on b as RunAPI does, logging into the
// returned buffer.
func openCore(t *testing.T, b scriptsBackend) (*Core, *syncBuffer) {
	t.Helper()
	clearEnv(t, nil)
	c, err := ParseAPI([]string{"-redis-url", b.url, "-redis-mode", cmp.Or(b.mode, progress.ModeSingle), "-artifact-dir", t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	core, err := Open(t.Context(), c.Common, c.Worker, c.ownerCache(), slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(core.Close)
	return core, logs
}

// syncBuffer is a bytes.Buffer that a logger and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A process's start loads every script of the process (progress's, jobs',
// web/auth's, and the web layer's submit admission, all linked in here)
// into every master, in each Redis mode, and logs how many.
func TestStartLoadsEveryScript(t *testing.T) {
	// web's init made the submit admission's scripts: making them again
	// adds none to the registry.
	scripts := progress.Scripts()
	jobs.PrepareAdmission(auth.LimitLua, auth.LimitKeys, auth.LimitArgs)
	if n := len(progress.Scripts()); n != len(scripts) {
		t.Fatalf("the submit admission's scripts were not made at start: %d scripts, then %d", len(scripts), n)
	}
	hashes := make([]string, len(scripts))
	for i, s := range scripts {
		hashes[i] = s.Hash()
	}
	for _, tc := range scriptsBackends {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.start(t)
			core, logs := openCore(t, b)
			masters := b.masters
			if masters == nil {
				masters = []*redis.Client{core.Redis.(*redis.Client)}
			}
			held := func() []int {
				var held []int
				for _, m := range masters {
					exists, err := m.ScriptExists(t.Context(), hashes...).Result()
					if err != nil {
						t.Fatal(err)
					}
					held = append(held, len(slices.DeleteFunc(exists, func(e bool) bool { return !e })))
				}
				return held
			}
			if h := held(); slices.Max(h) != 0 {
				t.Fatalf("before LoadScripts the masters hold %v of the %d scripts, want none", h, len(scripts))
			}
			core.LoadScripts(t.Context())
			if h, all := held(), slices.Repeat([]int{len(scripts)}, len(masters)); !slices.Equal(h, all) {
				t.Errorf("after LoadScripts the masters hold %v scripts, want %v", h, all)
			}
			if want := fmt.Sprintf(`msg="loaded the Lua scripts into Redis" scripts=%d `, len(scripts)); !strings.Contains(logs.String(), want) {
				t.Errorf("the log lacks %q:\n%s", want, logs)
			}
		})
	}
}

// The first script calls of a process that loaded its scripts at start
// meet no NOSCRIPT: a batch of appends and a submit behind the web
// layer's admission check (the job's creation and first event). Without
// the start's load the same calls meet it, which shows the count works.
func TestFirstScriptCallsAfterStartMeetNoNoScript(t *testing.T) {
	ours := map[string]bool{}
	for _, s := range progress.Scripts() {
		ours[s.Hash()] = true
	}
	for _, tc := range scriptsBackends {
		t.Run(tc.name, func(t *testing.T) {
			for _, preload := range []bool{false, true} {
				t.Run(fmt.Sprintf("loaded at start %v", preload), func(t *testing.T) {
					core, _ := openCore(t, tc.start(t))
					ctx := t.Context()
					if preload {
						core.LoadScripts(ctx)
					}
					var refused atomic.Int64
					core.Redis.AddHook(progresstest.ReplyHook(func(cmds []redis.Cmder) {
						for _, c := range cmds {
							if args := c.Args(); c.Name() == "evalsha" && len(args) > 1 && ours[fmt.Sprint(args[1])] && progress.IsNoScript(c.Err()) {
								refused.Add(1)
							}
						}
					}))
					var posts []progress.Post
					for i := range 20 {
						posts = append(posts, progress.Post{Group: fmt.Sprintf("job:first%d", i), Name: "note", Data: i})
					}
					if _, errs := core.Log.PublishMany(ctx, posts); slices.ContainsFunc(errs, func(err error) bool { return err != nil }) {
						t.Fatalf("publish: %v", errs)
					}
					_, _, err := core.Jobs.SubmitRequest(ctx, "u1", jobs.Request{
						Type: "steps", Params: json.RawMessage(`{"steps":1}`),
						Admit: &jobs.Admission{Lua: auth.LimitLua, Keys: []string{"ts:test:bucket"}, Args: []any{1, 1000, 10}},
					})
					if err != nil {
						t.Fatalf("submit: %v", err)
					}
					if n := refused.Load(); preload && n != 0 {
						t.Errorf("%d calls of the process's scripts met NOSCRIPT after the start's load, want none", n)
					} else if !preload && n == 0 {
						t.Error("without the start's load no call met NOSCRIPT: the count sees nothing")
					}
				})
			}
		})
	}
}

// refuseScriptLoads is a go-redis hook that fails every SCRIPT LOAD, alone
// or in a pipeline (progress.LoadScripts pipelines them), as a Redis
// whose ACL forbids it would.
type refuseScriptLoads struct{}

// refuse fails cmds, without sending them, when one is a SCRIPT LOAD.
func (refuseScriptLoads) refuse(cmds []redis.Cmder) error {
	if !slices.ContainsFunc(cmds, func(cmd redis.Cmder) bool {
		args := cmd.Args()
		return cmd.Name() == "script" && len(args) > 1 && fmt.Sprint(args[1]) == "load"
	}) {
		return nil
	}
	err := errors.New("NOPERM this user has no permissions to run the 'script|load' command")
	for _, cmd := range cmds {
		cmd.SetErr(err)
	}
	return err
}

func (refuseScriptLoads) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r refuseScriptLoads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if err := r.refuse([]redis.Cmder{cmd}); err != nil {
			return err
		}
		return next(ctx, cmd)
	}
}

func (r refuseScriptLoads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if err := r.refuse(cmds); err != nil {
			return err
		}
		return next(ctx, cmds)
	}
}

// A start whose script load fails goes on with a warning: each script is
// then loaded (or sent) by its first call, and the calls work.
func TestStartGoesOnWhenScriptsDoNotLoad(t *testing.T) {
	core, logs := openCore(t, scriptsBackend{})
	core.Redis.AddHook(refuseScriptLoads{})
	core.LoadScripts(t.Context())
	if !strings.Contains(logs.String(), `level=WARN msg="loading the Lua scripts into Redis failed`) || strings.Contains(logs.String(), "msg=\"loaded the Lua scripts") {
		t.Fatalf("a refused load should be one warning:\n%s", logs)
	}
	if _, err := core.Log.Publish(t.Context(), "job:noload", "note", 1); err != nil {
		t.Fatalf("a script call after the failed load: %v", err)
	}
}
