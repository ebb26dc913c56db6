package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"time"
)

// config is what one run does. Every field is a flag; its default is in
// parseFlags.
type config struct {
	URL   string // the api, http://127.0.0.1:PORT (loopback only)
	Token string // a bearer token (an admin token, or any user's)

	// Rate is jobs submitted per second (open loop); 0 with Inflight > 0
	// runs a closed loop instead: Inflight jobs at a time, each submitted
	// when one finishes.
	Rate     float64
	Inflight int
	Duration time.Duration // how long jobs are submitted
	Jobs     int           // stop submitting after this many (0: no limit, Duration decides)
	Drain    time.Duration // how long after that the jobs in flight get to finish

	Steps      int // the steps job's "steps"
	IntervalMS int // its "interval_ms"

	// Sockets is how the jobs are watched: 0 opens one socket per job
	// (client.Watch); N > 0 spreads the jobs over N sockets
	// (client.WatchMany), each job's group on exactly one of them.
	Sockets int
	// MaxPending bounds the jobs submitted and not yet finished (open
	// loop): a submit due while that many are open is not made and
	// counted as "backlog", so a stalled server cannot grow the tool
	// without bound.
	MaxPending int
	// CPUProfile, when set, is where a CPU profile of this process over
	// the run (submits and drain) is written ("": none).
	CPUProfile string
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("jobload", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.URL, "url", "", "the api's base URL, e.g. http://127.0.0.1:8080 (loopback only; required)")
	fs.StringVar(&c.Token, "token", "", "bearer token to submit and watch with (an admin token of ADMIN_TOKENS; the api's JOB_RATE/JOB_BURST limit applies per user)")
	fs.Float64Var(&c.Rate, "rate", 100, "jobs submitted per second (open loop); 0 with -inflight: closed loop")
	fs.IntVar(&c.Inflight, "inflight", 0, "closed loop: jobs in flight at once (each submitted when one finishes); needs -rate 0")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "how long jobs are submitted")
	fs.IntVar(&c.Jobs, "jobs", 0, "stop after submitting this many jobs (0: no limit; -duration decides)")
	fs.DurationVar(&c.Drain, "drain", 30*time.Second, "how long the jobs still running after -duration get to finish")
	fs.IntVar(&c.Steps, "steps", 3, "steps per job")
	fs.IntVar(&c.IntervalMS, "interval-ms", 0, "pause between steps, ms")
	fs.IntVar(&c.Sockets, "sockets", 16, "watch the jobs over this many sockets (WatchMany); 0: one socket per job (Watch)")
	fs.IntVar(&c.MaxPending, "max-pending", 20000, "open loop: at most this many jobs unfinished at once; due submits beyond are counted as backlog")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of this process over the run to this file")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return c, c.check()
}

func (c config) check() error {
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("-url %q: want http://127.0.0.1:PORT", c.URL)
	}
	if !loopback(u.Hostname()) {
		return fmt.Errorf("-url %q: only a loopback api may be loaded", c.URL)
	}
	switch {
	case c.Rate < 0 || c.Rate > 100000:
		return errors.New("-rate: want 0 to 100000")
	case c.Rate == 0 && c.Inflight <= 0:
		return errors.New("-rate 0 needs -inflight N (closed loop)")
	case c.Rate > 0 && c.Inflight > 0:
		return errors.New("-rate and -inflight: give one (open or closed loop)")
	case c.Inflight < 0 || c.Inflight > 10000:
		return errors.New("-inflight: want 1 to 10000")
	case c.Duration <= 0 || c.Duration > 10*time.Minute:
		return errors.New("-duration: want above 0 and at most 10m")
	case c.Jobs < 0:
		return errors.New("-jobs: want 0 (no limit) or more")
	case c.Drain <= 0:
		return errors.New("-drain: want above 0")
	case c.Steps < 1 || c.Steps > 100000:
		return errors.New("-steps: want 1 to 100000")
	case c.IntervalMS < 0 || c.IntervalMS > 60000:
		return errors.New("-interval-ms: want 0 to 60000")
	case c.Sockets < 0 || c.Sockets > 1000:
		return errors.New("-sockets: want 0 to 1000")
	case c.MaxPending < 1:
		return errors.New("-max-pending: want 1 or more")
	}
	return nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
