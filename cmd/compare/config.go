package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"time"
)

// config is what the command line asks for.
type config struct {
	URL            string        // server to measure; "" with Embedded
	Embedded       bool          // run the service in this process
	RedisURL       string        // embedded only: Redis to use ("" = miniredis)
	Steps          int           // steps of the job
	Interval       time.Duration // pause between steps
	PollEvery      time.Duration // plain polling interval
	ProgressRate   float64       // embedded only: progress events per second per job
	BrowserHeaders bool          // add a browser's request headers
	Timeout        time.Duration // bound on the whole run
	Verbose        bool
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "compare watches one steps job over WebSocket, SSE, JSON long-poll and 1 Hz polling at once\n"+
			"and prints bytes on the wire per progress update and delivery delay per transport as Markdown.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.URL, "url", "http://localhost:8080", "taskstream server to measure; empty runs the service in this process (like -embedded)")
	fs.BoolVar(&c.Embedded, "embedded", false, "run the whole service in this process on a free loopback port")
	fs.StringVar(&c.RedisURL, "redis-url", "", "with -embedded: the Redis the in-process service uses (empty: in-process miniredis, about 10x slower than redis-server)")
	fs.IntVar(&c.Steps, "steps", 100, "steps of the job (1-100000)")
	fs.DurationVar(&c.Interval, "interval", 100*time.Millisecond, "pause between steps (whole milliseconds, at most 60s)")
	fs.DurationVar(&c.PollEvery, "poll", time.Second, "interval of the plain polling client")
	fs.Float64Var(&c.ProgressRate, "progress-rate", 10, "with -embedded: most progress events per second per job (the server's -progress-rate)")
	fs.BoolVar(&c.BrowserHeaders, "browser-headers", false, "send a desktop browser's usual request headers with every metered request")
	fs.DurationVar(&c.Timeout, "timeout", 5*time.Minute, "give up after this long")
	fs.BoolVar(&c.Verbose, "v", false, "log the service's info messages (embedded)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.URL == "" {
		c.Embedded = true
	}
	return c, c.validate()
}

func (c config) validate() error {
	switch {
	case c.Steps < 1 || c.Steps > 100000:
		return errors.New("-steps must be from 1 to 100000")
	case c.Interval < 0 || c.Interval > time.Minute || c.Interval%time.Millisecond != 0:
		return errors.New("-interval must be whole milliseconds from 0 to 60s")
	case c.PollEvery <= 0:
		return errors.New("-poll must be positive")
	case c.ProgressRate <= 0:
		return errors.New("-progress-rate must be positive")
	case c.Timeout <= 0:
		return errors.New("-timeout must be positive")
	}
	if !c.Embedded {
		u, err := url.Parse(c.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("-url %q: want http://host:port", c.URL)
		}
	}
	return nil
}
