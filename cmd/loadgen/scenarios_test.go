package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"taskstream/progress"
	"taskstream/progress/progresstest"
	"taskstream/wire"
)

func TestStampRoundTrip(t *testing.T) {
	sent := time.Unix(1_700_000_000, 123456789)
	for _, size := range []int{0, 40, 100, 500} {
		text := stampText(nil, 15, 987654, sent, size)
		if size >= 40 && len(text) != size {
			t.Errorf("size %d: got %d bytes", size, len(text))
		}
		// Found alone, inside a taskstream frame, and among gorilla's
		// merged lines.
		ev := &progress.Event{Group: "chat:load-1", Seq: 7, Epoch: "e", Name: "message", Data: textData(text), Time: sent}
		for _, frame := range [][]byte{text, ev.Frame()} {
			pub, n, at, ok := stampOf(frame)
			if !ok || pub != 15 || n != 987654 || at != sent.UnixNano() {
				t.Errorf("size %d: stampOf(%s) = %d %d %d %v", size, frame, pub, n, at, ok)
			}
		}
	}
	for _, bad := range []string{"", "~LG", "~LG1.2", "~LG1.2.x.", "~LGa.2.3.", "~LG1..3.", "~LG1.2.99999999999999999999."} {
		if _, _, _, ok := stampOf([]byte(bad)); ok {
			t.Errorf("%q taken for a stamp", bad)
		}
	}
}

func TestEachFrame(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		f    framing
		want []string
	}{
		{`{"a":1}`, oneFrame, []string{`{"a":1}`}},
		{"a\nb", oneFrame, []string{"a\nb"}},
		{"a\nb\n\nc", lineFrames, []string{"a", "b", "c"}},
		{"a\n", lineFrames, []string{"a"}},
		{"", lineFrames, nil},
	} {
		var got []string
		eachFrame([]byte(tc.msg), tc.f, func(b []byte) { got = append(got, string(b)) })
		if strings.Join(got, "|") != strings.Join(tc.want, "|") || len(got) != len(tc.want) {
			t.Errorf("%q (%d): %q, want %q", tc.msg, tc.f, got, tc.want)
		}
	}
}

// scanTS reads the frames the server really sends (the wire types and
// progress.Event.Frame), and the lean event frame of the v2 subprotocol
// (no type; epoch only when it changes).
func TestScanTS(t *testing.T) {
	sub, _ := json.Marshal(wire.SubscribedFrame{Type: wire.TypeSubscribed, Group: "chat:r", Ref: json.RawMessage(`"1"`), Epoch: "ep1", LastSeq: 40, Recovered: true})
	notRecovered, _ := json.Marshal(wire.SubscribedFrame{Type: wire.TypeSubscribed, Group: "chat:r", Epoch: "ep2", LastSeq: 3})
	errFrame, _ := json.Marshal(wire.ReplyFrame{Type: wire.TypeError, Group: "chat:r", Code: wire.CodeRateLimited, Message: "wait"})
	ev := (&progress.Event{Group: "chat:r", Seq: 41, Epoch: "ep1", Name: "message", Data: json.RawMessage(`{"text":"\"seq\":9,\"epoch\":\"x\""}`), Time: time.Now()}).Frame()
	for _, tc := range []struct {
		name      string
		frame     string
		kind      byte
		seq       int64
		epoch     string
		recovered bool
	}{
		{"subscribed", string(sub), 's', 40, "ep1", true},
		{"subscribed, not recovered", string(notRecovered), 's', 3, "ep2", false},
		{"error", string(errFrame), 'x', 0, "", false},
		{"v1 event", string(ev), 'e', 41, "ep1", false},
		{"v2 lean event", `{"group":"chat:r","seq":42,"event":"message","data":{"text":"hi"}}`, 'e', 42, "", false},
		{"v2 lean event, new epoch", `{"group":"chat:r","seq":1,"epoch":"ep3","event":"join","data":{}}`, 'e', 1, "ep3", false},
		{"v2 lean event whose data has an epoch", `{"group":"chat:r","seq":44,"event":"message","data":{"epoch":"x"}}`, 'e', 44, "", false},
		{"v2 lean event, empty data and skipped", `{"group":"chat:r","seq":45,"epoch":"ep4","event":"join","data":null,"ts":"mxb02fyb","skipped":2}`, 'e', 45, "ep4", false},
		{"v2 lean event, group with an escaped quote", `{"group":"chat:a\"b","seq":46,"epoch":"ep5","event":"join","data":{}}`, 'e', 46, "ep5", false},
		{"v2 lean event, empty group", `{"group":"","seq":47,"event":"join","data":{}}`, 'e', 47, "", false},
		{"v2 lean event, seq elsewhere", `{"group":"chat:r","event":"join","seq":48,"data":{}}`, 'e', 48, "", false},
		{"v2 lean event, no seq", `{"group":"chat:r","event":"join","data":{}}`, 0, 0, "", false},
		{"other", `{"type":"pong"}`, 0, 0, "", false},
		{"v2 lean event quoting a subscribed frame", `{"group":"chat:r","seq":43,"event":"message","data":{"text":"\"type\":\"subscribed\""}}`, 'e', 43, "", false},
	} {
		f := scanTS([]byte(tc.frame))
		if f.kind != tc.kind || f.seq != tc.seq || string(f.epoch) != tc.epoch || f.recovered != tc.recovered {
			t.Errorf("%s: scanTS(%s) = %c %d %q %v", tc.name, tc.frame, f.kind, f.seq, f.epoch, f.recovered)
		}
	}
}

// The byte scans read frames from the network: no input panics them.
func FuzzScanFrames(f *testing.F) {
	f.Add([]byte(`{"type":"subscribed","last_seq":4,"epoch":"e","recovered":true}`), true)
	f.Add([]byte("~LG1.2.3.xx\n{\"seq\":5,\"data\":{\"text\":\"~LG0.1.2.\"}}"), false)
	f.Fuzz(func(t *testing.T, msg []byte, lines bool) {
		fr := oneFrame
		if lines {
			fr = lineFrames
		}
		eachFrame(msg, fr, func(b []byte) {
			f := scanTS(b)
			if f.seq < 0 {
				t.Fatalf("negative seq from %q", b)
			}
			if pub, n, _, ok := stampOf(b); ok && (pub < 0 || n < 0) {
				t.Fatalf("negative stamp from %q", b)
			}
		})
	})
}

func TestParamsFor(t *testing.T) {
	c, err := parseFlags([]string{"-scenario", "all", "-redis-url", "redis://127.0.0.1:1", "-clients", "50", "-duration", "1s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range scenarioNames {
		p := paramsFor(name, c)
		if p.Clients != 50 || p.Users != 3 || p.Duration != time.Second || p.Payload != 100 {
			t.Errorf("%s: %+v", name, p)
		}
	}
	if p := paramsFor("fanout", c); p.Publishers != 16 || p.Window != 1 {
		t.Errorf("fanout defaults: %+v", p)
	}
	c, _ = parseFlags([]string{"-scenario", "join", "-redis-url", "redis://127.0.0.1:1"}, io.Discard)
	if p := paramsFor("join", c); p.Clients != 5000 || p.Users != 250 {
		t.Errorf("join defaults: %+v", p)
	}
	if p := paramsFor("latency", c); p.Publishers != 16 || p.Rate != 100 || p.Duration != 10*time.Second {
		t.Errorf("latency defaults: %+v", p)
	}

	// -client-procs sets every scenario's; 0 or none leaves Go's default.
	for _, tc := range []struct {
		flag []string
		want int
	}{
		{nil, 0},
		{[]string{"-client-procs", "1"}, 1},
		{[]string{"-client-procs", "0"}, 0},
	} {
		c, err := parseFlags(append([]string{"-scenario", "all", "-redis-url", "redis://127.0.0.1:1"}, tc.flag...), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range scenarioNames {
			if got := paramsFor(name, c).ClientProcs; got != tc.want {
				t.Errorf("%q: %s: client procs %d, want %d", tc.flag, name, got, tc.want)
			}
		}
	}
}

func TestScenarioFlags(t *testing.T) {
	ok := [][]string{
		{"-scenario", "all", "-redis-url", "redis://127.0.0.1:6379"},
		{"-scenario", "join,idle", "-target", "gorilla"}, // no Redis needed
		{"-scenario", "fanout", "-redis-url", "redis://127.0.0.1:6379", "-subprotocol", "taskstream.v2", "-window", "4", "-api-env", "CHAT_HISTORY=1"},
	}
	for _, args := range ok {
		if _, err := parseFlags(args, io.Discard); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
	bad := [][]string{
		{"-scenario", "all"}, // taskstream needs Redis
		{"-scenario", "storm", "-target", "gorilla"},
		{"-scenario", "join", "-target", "centrifugo"},
		{"-scenario", "join", "-target", "gorilla", "-url", "http://127.0.0.1:1"},
		{"-scenario", "join", "-target", "gorilla", "-payload", "600"},
		{"-scenario", "join", "-target", "gorilla", "-window", "0"},
		{"-scenario", "join", "-redis-url", "redis://10.1.1.1:6379"},
		{"-scenario", "join", "-target", "gorilla", "-api-env", "NOEQUALS"},
		{"-scenario", "join", "-target", "gorilla", "-client-procs", "-1"},
		{"-target", "gorilla"}, // scenario flags without -scenario
		{"-subprotocol", "taskstream.v2"},
	}
	for _, args := range bad {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
}

// Every scenario, tiny, on both targets: cmd/api and gorilla's chat
// example built here with go build, taskstream on each Redis (miniredis
// and a real redis-server), the subscribers receiving through rings and
// with read(2). Each figure is there for both (restart for
// taskstream only), nothing is lost, no seq is skipped, nobody is closed
// with 1013, and a restart is resumed by every socket.
func TestScenariosOnBothTargets(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts servers")
	}
	dir := t.TempDir()
	api, err := buildBinary(t.Context(), apiPackage, dir)
	if err != nil {
		t.Fatal(err)
	}
	gchat, err := buildBinary(t.Context(), gorillaPackage, dir)
	if err != nil {
		t.Fatal(err)
	}
	procs := runtime.GOMAXPROCS(0)
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		for _, extra := range [][]string{nil, {"-subprotocol", "taskstream.v2", "-publish-via", "redis", "-client-procs", "1", "-read-ring=false"}} {
			t.Run(strings.Join(extra, " "), func(t *testing.T) {
				args := append([]string{"-scenario", "all", "-target", "both", "-redis-url", srv.URL(),
					"-api-bin", api, "-gorilla-bin", gchat, "-clients", "8", "-users", "2", "-publishers", "3",
					"-duration", "700ms", "-rate", "50", "-settle", "100ms", "-timeout", "3m"}, extra...)
				c, err := parseFlags(args, io.Discard)
				if err != nil {
					t.Fatal(err)
				}
				var out bytes.Buffer
				if err := run(context.Background(), c, &out, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
					t.Fatal(err)
				}
				report := out.String()
				t.Log("\n" + report)
				if got := runtime.GOMAXPROCS(0); got != procs {
					t.Errorf("GOMAXPROCS %d after the run, was %d", got, procs)
				}
				if named := strings.Contains(report, "load client GOMAXPROCS 1"); named != slices.Contains(extra, "-client-procs") {
					t.Errorf("-client-procs in %q, but the rows naming the client's GOMAXPROCS: %v:\n%s", extra, named, report)
				}
				// Each scenario's notes name its reader: rings only
				// where they pay, and only where allowed and asked.
				for _, sc := range scenarioNames {
					reads := "subscribers read with read(2)"
					if ringsPay(sc) && !slices.Contains(extra, "-read-ring=false") && ringExpected() == "" {
						reads = "subscribers receive through"
					}
					for _, tg := range []string{"taskstream", "gorilla"} {
						if line := "- " + sc + ", " + tg + ": " + reads; sc != "restart" || tg == "taskstream" {
							if !strings.Contains(report, line) {
								t.Errorf("the notes lack %q", line)
							}
						}
					}
				}
				if strings.Contains(report, "failed") {
					t.Fatalf("a scenario failed:\n%s", report)
				}
				checkFigures(t, report)
			})
		}
	})
}

// checkFigures reads the table's rows: figure → [taskstream, gorilla].
func checkFigures(t *testing.T, report string) {
	t.Helper()
	rows := map[string][2]string{}
	for _, line := range strings.Split(report, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) != 7 || strings.HasPrefix(cells[2], "-") {
			continue
		}
		rows[strings.TrimSpace(cells[2])] = [2]string{strings.TrimSpace(cells[3]), strings.TrimSpace(cells[4])}
	}
	num := func(figure string, i int) float64 {
		v, err := strconv.ParseFloat(rows[figure][i], 64)
		if err != nil {
			t.Errorf("%s: no number for target %d: %q", figure, i, rows[figure][i])
		}
		return v
	}
	for _, figure := range []string{"all joined in, s", "server RSS per idle socket, KiB", "lossless deliveries/s",
		"latency p50, ms", "latency p95, ms", "latency p99, ms", "from send p50, ms", "publisher late p99, ms",
		"first subscriber p50, ms", "last subscriber p99, ms", "load client CPU, cores", "server CPU, cores",
		"bytes read per delivered message"} {
		for i := range 2 {
			// Times may round to 0 and RSS may shrink; deliveries and
			// bytes cannot be 0 when messages arrived.
			v := num(figure, i)
			if (figure == "lossless deliveries/s" || figure == "bytes read per delivered message") && v <= 0 {
				t.Errorf("%s: target %d: %v", figure, i, v)
			}
		}
	}
	for _, figure := range []string{"lost deliveries"} {
		if num(figure, 0) != 0 || num(figure, 1) != 0 {
			t.Errorf("%s: %v", figure, rows[figure])
		}
	}
	if num("every socket resumed in, s", 0) <= 0 || num("seq gaps", 0) != 0 || num("closed with 1013", 0) != 0 {
		t.Errorf("restart: %v %v %v", rows["every socket resumed in, s"], rows["seq gaps"], rows["closed with 1013"])
	}
	if rows["seq gaps"][1] != "n/a" {
		t.Errorf("restart on gorilla: %q, want n/a", rows["seq gaps"][1])
	}
	if !strings.Contains(report, "load average") || !strings.Contains(report, "ratio taskstream / gorilla") {
		t.Errorf("no load average or ratio:\n%s", report)
	}
}

// The CPU accounting reads /proc's formats, a command name with spaces
// and parentheses included.
func TestProcCPUParsing(t *testing.T) {
	for _, tc := range []struct {
		line string
		want float64
		ok   bool
	}{
		{"123 (api) S 1 123 123 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0", 3, true},
		{"7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0", 0.03, true},
		{"7 (api) S 1 2", 0, false},
		{"no command here", 0, false},
		{"7 (api) S 1 7 7 0 -1 0 0 0 0 0 x 2 0 0", 0, false},
	} {
		got, err := parseProcStat([]byte(tc.line))
		if (err == nil) != tc.ok || (tc.ok && math.Abs(got-tc.want) > 1e-9) {
			t.Errorf("parseProcStat(%q) = %v, %v; want %v (ok %v)", tc.line, got, err, tc.want, tc.ok)
		}
	}
	busy, total, err := machineCPU([]byte("cpu  100 5 45 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n"))
	if err != nil || busy != 1.5 || total != 10 {
		t.Errorf("machineCPU = %v %v %v, want 1.5 10", busy, total, err)
	}
	if _, _, err := machineCPU([]byte("intr 1 2 3\n")); err == nil {
		t.Error("machineCPU took a line that is not cpu")
	}
	if _, err := procCPU(os.Getpid()); err != nil {
		t.Errorf("this process: %v", err)
	}
	if s := takeCPU(os.Getpid()); !s.ok || s.self <= 0 || s.total <= 0 {
		t.Errorf("takeCPU: %+v", s)
	}
}

// The open loop's split of the delay: two messages sent late and early,
// each received by two sockets at known times.
func TestOpenTimesFigures(t *testing.T) {
	const msec = int64(time.Millisecond)
	tm := newOpenTimes(2)
	tm.due[1], tm.sent[1], tm.done[1] = 0, 2*msec, 3*msec // sent 2 ms late
	tm.due[2], tm.sent[2], tm.done[2] = 10*msec, 10*msec, 11*msec
	a := &sock{got: []received{{1, 7 * msec}, {2, 14 * msec}}}
	b := &sock{got: []received{{1, 12 * msec}, {2, 30 * msec}, {9, 1}}} // n 9 was never sent: ignored
	var o outcome
	tm.figures(&o, []*sock{a, b})
	got := map[string]float64{}
	for _, f := range o.Figs {
		got[f.Name] = f.Val
	}
	// From due: 7, 12, 4, 20 ms; from send: 5, 10, 4, 20; first
	// subscriber 5, 4; last 10, 20 (nearest rank).
	for name, want := range map[string]float64{
		"latency p50, ms": 7, "latency p99, ms": 20, "from send p50, ms": 5, "from send p99, ms": 20,
		"publisher late p50, ms": 0, "publisher late p99, ms": 2, "publish call p50, ms": 1,
		"first subscriber p50, ms": 4, "last subscriber p50, ms": 10, "last subscriber p99, ms": 20,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	if b := profilePath("/tmp/lg.prof", "latency", "gorilla"); b != "/tmp/lg-latency-gorilla.prof" {
		t.Errorf("profilePath: %s", b)
	}
	if b := profilePath("cpu", "fanout", "taskstream"); b != "cpu-fanout-taskstream" {
		t.Errorf("profilePath: %s", b)
	}
}
