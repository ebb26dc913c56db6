package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The README's examples are run here, against a live api, so they can not
// go stale: every `sh` block with a curl command is run in order in one
// bash session (so an id captured in one block is used in the next), and
// every `go` block is either a whole file (its first line names it, e.g.
// `// jobs/sleep.go`), compiled into its package with -overlay and run by a
// test, or a fragment that must appear word for word in one of the repo's
// tests or examples, where it runs.

// readmeBlock is one fenced code block of README.md.
type readmeBlock struct {
	lang string
	line int // of the opening fence
	code string
}

func readmeBlocks(t *testing.T) []readmeBlock {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		out []readmeBlock
		cur *readmeBlock
		sc  = bufio.NewScanner(f)
		n   int
	)
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &readmeBlock{lang: strings.TrimPrefix(line, "```"), line: n}
		case cur != nil && line == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.code += line + "\n"
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("README.md: the block opened at line %d is never closed", cur.line)
	}
	return out
}

var curlCommand = regexp.MustCompile(`(?m)^\s*(\w+=\$\()?curl `)

// requireTools skips (or, in CI, fails) when the examples' tools are
// missing: they are what a reader runs them with.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("REQUIRE_README_TOOLS") == "1" {
				t.Fatalf("%s is not on PATH and REQUIRE_README_TOOLS=1", tool)
			}
			t.Skipf("%s not on PATH; install it to run the README's examples", tool)
		}
	}
}

// readmeShellPrelude wraps curl so a failed request fails the script
// (the README's commands use -s without -f, as people type them), and a
// streaming request (-N, -sN) ends after a few seconds: the stream staying
// open is its success, if it said something.
const readmeShellPrelude = `set -euo pipefail
curl() {
	local stream=0 arg
	for arg in "$@"; do [[ $arg == -*N* && $arg != --* ]] && stream=1; done
	if ((stream)); then
		local out rc=0
		out=$(command curl --max-time 3 --fail-with-body "$@") || rc=$?
		printf '%s\n' "$out"
		if [[ $rc != 0 && !( $rc == 28 && -n $out ) ]]; then
			echo "README example failed: curl $* (exit $rc)" >&2
			return 1
		fi
		return 0
	fi
	command curl --max-time 60 --fail-with-body "$@" || { echo "README example failed: curl $* (exit $?)" >&2; return 1; }
}
`

func TestREADMEShellExamples(t *testing.T) {
	requireTools(t, "bash", "curl", "jq")
	t.Parallel()
	dir := t.TempDir()
	addr := freeAddr(t)
	const admin = "readme-admin-token"
	api := start(t, "api", filepath.Join(binDir, "api")+" -addr "+addr+" 2>"+filepath.Join(dir, "api.log"),
		"REDIS_URL=", "PORT=", "ADMIN_TOKENS="+admin)
	waitHealthy(t, "http://"+addr, api)

	var script strings.Builder
	script.WriteString(readmeShellPrelude)
	ran := 0
	for _, b := range readmeBlocks(t) {
		if b.lang != "sh" || !curlCommand.MatchString(b.code) {
			continue
		}
		ran++
		fmt.Fprintf(&script, "echo '--- README.md line %d' >&2\n", b.line)
		script.WriteString(strings.ReplaceAll(b.code, "localhost:8080", addr))
	}
	if ran == 0 {
		t.Fatal("found no sh block with a curl command in README.md")
	}
	cmd := exec.Command("bash", "-c", script.String())
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "ADMIN="+admin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		logged, _ := os.ReadFile(filepath.Join(dir, "api.log"))
		t.Fatalf("the README's shell examples failed: %v\n%s\n--- api log ---\n%s", err, out, logged)
	}
	t.Logf("ran %d README blocks:\n%s", ran, out)
}

// goFileHeader is a Go block's first line naming the file it is.
var goFileHeader = regexp.MustCompile(`^// ([\w/]+\.go)\n`)

func TestREADMEGoExamples(t *testing.T) {
	root := filepath.Join("..", "..")
	var fragments []readmeBlock
	overlay := map[string]string{}
	tmp := t.TempDir()
	for _, b := range readmeBlocks(t) {
		if b.lang != "go" {
			continue
		}
		m := goFileHeader.FindStringSubmatch(b.code)
		if m == nil {
			fragments = append(fragments, b)
			continue
		}
		if _, err := os.Stat(filepath.Join(root, m[1])); err == nil {
			t.Errorf("README.md line %d: the example %s would replace a real file; name a new one", b.line, m[1])
			continue
		}
		src := filepath.Join(tmp, strings.ReplaceAll(m[1], "/", "_"))
		if err := os.WriteFile(src, []byte(b.code), 0o644); err != nil {
			t.Fatal(err)
		}
		abs, _ := filepath.Abs(filepath.Join(root, m[1]))
		overlay[abs] = src
		if test, ok := readmeExampleTests[m[1]]; ok {
			testSrc := filepath.Join(tmp, "readme_example_test.go")
			if err := os.WriteFile(testSrc, []byte(test), 0o644); err != nil {
				t.Fatal(err)
			}
			overlay[filepath.Join(filepath.Dir(abs), "readme_example_test.go")] = testSrc
		} else {
			t.Errorf("README.md line %d: no test runs the example %s (add one to readmeExampleTests)", b.line, m[1])
		}
	}
	if len(overlay) > 0 {
		raw, _ := json.Marshal(map[string]any{"Replace": overlay})
		overlayFile := filepath.Join(tmp, "overlay.json")
		if err := os.WriteFile(overlayFile, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		pkgs := map[string]bool{}
		for dst := range overlay {
			pkgs["./"+mustRel(t, root, filepath.Dir(dst))] = true
		}
		for pkg := range pkgs {
			cmd := exec.Command("go", "test", "-count=1", "-overlay", overlayFile, "-run", "^TestREADME", pkg)
			cmd.Dir = root
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("the README's example in %s does not build or pass: %v\n%s", pkg, err, out)
			}
		}
	}
	// A fragment runs where it is copied from: a test or an example.
	tests := repoTestSources(t, root)
	for _, b := range fragments {
		if !strings.Contains(squash(tests), squash(b.code)) {
			t.Errorf("README.md line %d: this Go fragment is not word for word in any _test.go file, so nothing runs it:\n%s", b.line, b.code)
		}
	}
}

// readmeExampleTests run the README's whole-file examples, keyed by the
// file they name.
var readmeExampleTests = map[string]string{
	"jobs/sleep.go": `package jobs

import (
	"encoding/json"
	"testing"
)

func TestREADMESleepExample(t *testing.T) {
	typ := Sleep()
	if _, err := typ.Decode(json.RawMessage(` + "`" + `{"seconds":2,"warn_at":3}` + "`" + `)); err == nil {
		t.Fatal("warn_at > seconds was accepted")
	}
	r := &builtinTestReporter{}
	res, err := runType(t.Context(), t, typ, ` + "`" + `{"seconds":1,"warn_at":1}` + "`" + `, Env{JobID: "j", Attempt: 1}, r)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(res); string(got) != ` + "`" + `{"slept":1}` + "`" + ` {
		t.Fatalf("result %s", got)
	}
	if len(r.calls()) != 1 {
		t.Fatalf("progress calls %v, want 1", r.calls())
	}
}
`,
}

func mustRel(t *testing.T, base, target string) string {
	t.Helper()
	absBase, _ := filepath.Abs(base)
	rel, err := filepath.Rel(absBase, target)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.ToSlash(rel)
}

func repoTestSources(t *testing.T, root string) string {
	t.Helper()
	var all strings.Builder
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if strings.HasSuffix(path, "_test.go") {
			raw, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			all.Write(raw)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return all.String()
}

// squash drops indentation and blank lines, so a fragment indented in a
// test function matches the README's.
func squash(s string) string {
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return b.String()
}
