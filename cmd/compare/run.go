package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/cookiejar"
	"net/url"
	"sync"
	"time"

	"taskstream/client"
	"taskstream/cmd/internal/inproc"
)

// run measures one job over the four transports and writes the report.
func run(ctx context.Context, c config, stdout io.Writer, logger *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	base, mode := c.URL, c.URL
	var svc *inproc.Service
	if c.Embedded {
		var err error
		if svc, err = inproc.Start(ctx, inproc.Options{RedisURL: c.RedisURL, ProgressRate: c.ProgressRate, Logger: logger}); err != nil {
			return err
		}
		defer svc.Close()
		base = svc.URL
		mode = "in-process (app.RunAPI + app.RunWorker) on redis-server " + c.RedisURL
		if svc.Mini {
			mode = "in-process (app.RunAPI + app.RunWorker) on miniredis"
		}
		mode += fmt.Sprintf(", progress rate %g/s", c.ProgressRate)
	}
	rep, err := compare(ctx, c, base, svc)
	if err != nil {
		return err
	}
	rep.Mode = mode
	rep.WriteMarkdown(stdout)
	return nil
}

// compare submits a steps job, attaches the four watchers, lets the job
// run (starting the in-process worker when svc is set) and analyzes what
// each watcher saw.
func compare(ctx context.Context, c config, base string, svc *inproc.Service) (*Report, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	jar, _ := cookiejar.New(nil)
	t := target{base: u, jar: jar}
	if c.BrowserHeaders {
		t.header = browserHeader(u)
	}
	id, err := submit(ctx, t, c.Steps, c.Interval)
	if err != nil {
		return nil, err
	}
	t.id = id

	watchers := []watchFunc{watchWS, watchSSE, watchLongPoll, watchPoll(c.PollEvery)}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	obs := make([]*observation, len(watchers))
	meters := make([]*Meter, len(watchers))
	ready := make(chan struct{}, len(watchers))
	var wg sync.WaitGroup
	for i, w := range watchers {
		meters[i] = &Meter{}
		var once sync.Once
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := w(wctx, t, meters[i], func() { once.Do(func() { ready <- struct{}{} }) })
			if o.Err != nil {
				cancel() // one failed: the comparison is off
			}
			obs[i] = o
		}()
	}
	for range watchers {
		select {
		case <-ready:
		case <-wctx.Done():
			wg.Wait()
			return nil, fmt.Errorf("attaching the watchers: %w", firstErr(obs, wctx.Err()))
		}
	}
	armedAt := time.Now()
	if svc != nil {
		svc.StartWorker()
	}
	wg.Wait()
	for i, o := range obs {
		o.Traffic = meters[i].Traffic()
	}
	if err := firstErr(obs, nil); err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("gave up: %w", err)
	}
	rep := &Report{JobID: id, Steps: c.Steps, Interval: c.Interval, PollEvery: c.PollEvery}
	rep.Published, rep.Excluded, rep.Rows = analyze(obs, armedAt)
	return rep, nil
}

func firstErr(obs []*observation, def error) error {
	for _, o := range obs {
		if o != nil && o.Err != nil {
			return fmt.Errorf("%s: %w", o.Transport, o.Err)
		}
	}
	return def
}

// submit starts a steps job over the API (not metered) and returns its id.
func submit(ctx context.Context, t target, steps int, interval time.Duration) (string, error) {
	c, err := t.client(nil, nil)
	if err != nil {
		return "", err
	}
	defer c.HTTPClient().CloseIdleConnections()
	job, err := c.Submit(ctx, client.SubmitRequest{Type: "steps", Params: map[string]any{"steps": steps, "interval_ms": interval.Milliseconds()}})
	if err != nil {
		return "", fmt.Errorf("submit the job: %w", err)
	}
	return job.ID, nil
}
