package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"
)

// compareReport is the side-by-side table of one scenario run.
type compareReport struct {
	Date                  time.Time
	LoadBefore, LoadAfter string
	Setup                 []string // how the targets ran
	Targets               []string
	Rows                  []compareRow
}

// compareRow is one scenario on every target.
type compareRow struct {
	Scenario string
	Params   params
	Out      []outcome // per target, in Targets' order
}

// label names a scenario with its sizes, and the load client's
// GOMAXPROCS when the scenario sets it.
func (r compareRow) label() string {
	s := r.sizes()
	if r.Params.ClientProcs > 0 {
		s += fmt.Sprintf(", load client GOMAXPROCS %d", r.Params.ClientProcs)
	}
	return s
}

func (r compareRow) sizes() string {
	p := r.Params
	switch r.Scenario {
	case "join", "restart":
		return fmt.Sprintf("%s: %d sockets as %d users", r.Scenario, p.Clients, p.Users)
	case "idle":
		return fmt.Sprintf("idle: %d subscribed sockets", p.Clients)
	case "fanout":
		return fmt.Sprintf("fanout: %d subscribers, %d publishers, window %d, %s, %d-byte messages", p.Clients, p.Publishers, p.Window, p.Duration, p.Payload)
	default:
		return fmt.Sprintf("%s: %g msg/s × %d subscribers, %s, %d-byte messages", r.Scenario, p.Rate, p.Clients, p.Duration, p.Payload)
	}
}

func (rep *compareReport) write(w io.Writer) {
	fmt.Fprintf(w, "%s, run %s UTC; load average %s before, %s after; %d CPUs.\n",
		strings.Join(rep.Targets, " vs "), rep.Date.Format("2006-01-02 15:04"), rep.LoadBefore, rep.LoadAfter, runtime.NumCPU())
	for _, s := range rep.Setup {
		fmt.Fprintf(w, "- %s\n", s)
	}
	fmt.Fprintln(w)
	head := "| scenario | figure | " + strings.Join(rep.Targets, " | ") + " |"
	rule := "|---|---|" + strings.Repeat("--:|", len(rep.Targets))
	if len(rep.Targets) == 2 {
		head += " ratio " + rep.Targets[0] + " / " + rep.Targets[1] + " |"
		rule += "--:|"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, rule)
	for _, row := range rep.Rows {
		var names []string
		prec := map[string]int{}
		for _, o := range row.Out {
			for _, f := range o.Figs {
				if _, ok := prec[f.Name]; !ok {
					names = append(names, f.Name)
					prec[f.Name] = f.Prec
				}
			}
		}
		if len(names) == 0 {
			names = []string{"-"}
		}
		for k, name := range names {
			label := row.label()
			if k > 0 {
				label = "" // the scenario's first line names it
			}
			cells := make([]string, len(row.Out))
			vals := make([]float64, len(row.Out))
			have := make([]bool, len(row.Out))
			for i, o := range row.Out {
				cells[i] = "-"
				switch {
				case o.Err != nil:
					cells[i] = "failed"
				case o.Skip != "":
					cells[i] = "n/a"
				}
				for _, f := range o.Figs {
					if f.Name == name {
						cells[i] = fmt.Sprintf("%.*f", f.Prec, f.Val)
						vals[i], have[i] = f.Val, true
					}
				}
			}
			line := fmt.Sprintf("| %s | %s | %s |", label, name, strings.Join(cells, " | "))
			if len(row.Out) == 2 {
				ratio := "-"
				if have[0] && have[1] && vals[1] != 0 {
					ratio = fmt.Sprintf("%.2f", vals[0]/vals[1])
				}
				line += " " + ratio + " |"
			}
			fmt.Fprintln(w, line)
		}
	}
	fmt.Fprintln(w)
	for _, row := range rep.Rows {
		for i, o := range row.Out {
			if o.Err != nil {
				fmt.Fprintf(w, "- %s on %s failed: %v\n", row.Scenario, rep.Targets[i], o.Err)
			}
			if o.Skip != "" {
				fmt.Fprintf(w, "- %s on %s: not run (%s)\n", row.Scenario, rep.Targets[i], o.Skip)
			}
			for _, n := range o.Notes {
				fmt.Fprintf(w, "- %s, %s\n", row.Scenario, n)
			}
		}
	}
}

// runScenarios is the scenario mode: it builds what it was not given,
// starts each target per scenario and prints the comparison.
func runScenarios(ctx context.Context, c config, stdout io.Writer, logger *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "loadgen-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var targets []target
	var setup []string
	if c.Target != targetGorilla {
		bin := c.APIBin
		if bin == "" {
			if bin, err = buildBinary(ctx, apiPackage, dir); err != nil {
				return err
			}
		}
		via := c.PublishVia
		if !c.set["publish-via"] {
			via = viaAPI
		}
		targets = append(targets, &tsTarget{bin: bin, redisURL: c.RedisURL, prefix: c.KeyPrefix, extraEnv: c.APIEnv,
			subprotocol: c.Subprotocol, via: via, logDir: dir})
		how := "POST /api/publish (admin token)"
		if via == viaRedis {
			how = "progress.Log.Publish into Redis"
		}
		s := fmt.Sprintf("taskstream: %s on %s, publishing with %s", bin, c.RedisURL, how)
		if len(c.APIEnv) > 0 {
			s += ", env " + strings.Join(c.APIEnv, " ")
		}
		if c.Subprotocol != "" {
			s += ", subprotocol " + c.Subprotocol
		}
		setup = append(setup, s)
	}
	if c.Target != targetTaskstream {
		bin := c.GorillaBin
		if bin == "" {
			if bin, err = buildBinary(ctx, gorillaPackage, dir); err != nil {
				return err
			}
		}
		targets = append(targets, &gorillaTarget{bin: bin, logDir: dir})
		setup = append(setup, fmt.Sprintf("gorilla: %s (gorilla/websocket examples/chat), publishing by sending on publisher sockets", bin))
	}
	setup = append(setup, "each scenario starts a fresh server process; the load client is this process, on the same machine")
	var b strings.Builder
	if err := runCompare(ctx, c, targets, setup, &b); err != nil {
		return err
	}
	_, err = io.WriteString(stdout, b.String())
	logger.Debug("scenarios done")
	return err
}
