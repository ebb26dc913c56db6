package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/client"
	"taskstream/wire"
)

// Transport names, in the order the report lists them.
const (
	tWS       = "WebSocket"
	tSSE      = "SSE"
	tLongPoll = "long-poll"
	tPoll     = "polling"
)

// target is the job every watcher follows, and how to reach it.
type target struct {
	base   *url.URL // http://host:port
	id     string   // job id
	jar    http.CookieJar
	header http.Header // extra request headers (browser emulation), may be empty
}

func (t target) group() string { return wire.JobGroup(t.id).String() }

// client returns a taskstream client of the target whose every byte is
// counted by m (m nil: not metered), with the target's session and
// headers. A socket's handshake counts as one request.
func (t target) client(m *Meter, header http.Header) (*client.Client, error) {
	cfg := client.Config{BaseURL: t.base.String(), Header: header, HTTPClient: &http.Client{Jar: t.jar, Timeout: 30 * time.Second}}
	if m != nil {
		cfg.HTTPClient = m.HTTPClient(t.jar)
		cfg.Dialer = &websocket.Dialer{HandshakeTimeout: 10 * time.Second, Jar: t.jar,
			NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				m.countRequest()
				return m.DialContext(ctx, network, addr)
			}}
	}
	return client.New(cfg)
}

// update is one progress update a watcher saw.
type update struct {
	Seq      int64     // the event's seq (0 for polling)
	Done     int64     // progress.done
	TS       time.Time // the event's ts; for polling, the job's updated_at
	Received time.Time // when the client had it
}

// observation is what one watcher saw and what it cost.
type observation struct {
	Transport string
	Polling   bool // updates are snapshots, not events
	Traffic   Traffic
	Events    int // every event seen (state, progress, log, result, ...)
	Updates   []update
	Err       error
}

// add records an event received at t.
func (o *observation) add(ev client.Event, t time.Time) error {
	o.Events++
	if ev.Event == wire.EventProgress {
		var p client.Progress
		if err := ev.Decode(&p); err != nil {
			return fmt.Errorf("%s: %w", o.Transport, err)
		}
		ts := ev.Time()
		if ts.IsZero() {
			return fmt.Errorf("%s: event ts %q", o.Transport, ev.TS)
		}
		o.Updates = append(o.Updates, update{Seq: ev.Seq, Done: p.Done, TS: ts, Received: t})
	}
	return nil
}

// watchFunc follows the job until its last event. It calls ready once it
// is attached (subscribed, or has its first answer).
type watchFunc func(ctx context.Context, t target, m *Meter, ready func()) *observation

// watchWS follows the job's group over a socket (client.Watch) until the
// job's last event; the watch then closes the socket with a close
// handshake, whose bytes are counted too.
func watchWS(ctx context.Context, t target, m *Meter, ready func()) *observation {
	header := t.header.Clone()
	if header.Get("User-Agent") != "" {
		header.Set("Origin", t.base.Scheme+"://"+t.base.Host) // a browser's socket says where it comes from
	}
	return watchStream(ctx, t, m, ready, &observation{Transport: tWS}, header)
}

// watchSSE follows the job's group as text/event-stream (client.Watch
// over SSE), resuming after a stream that ends early.
func watchSSE(ctx context.Context, t target, m *Meter, ready func()) *observation {
	return watchStream(ctx, t, m, ready, &observation{Transport: tSSE}, t.header, client.ViaSSE())
}

func watchStream(ctx context.Context, t target, m *Meter, ready func(), o *observation, header http.Header, opts ...client.WatchOption) *observation {
	c, err := t.client(m, header)
	if err != nil {
		o.Err = err
		return o
	}
	defer c.HTTPClient().CloseIdleConnections()
	w, err := c.Watch(ctx, t.group(), client.Position{}, append(opts, client.OnSubscribed(func(wire.SubscribedFrame) { ready() }))...)
	if err != nil {
		o.Err = err
		return o
	}
	defer w.Close()
	for {
		ev, err := w.Next(ctx)
		now := time.Now()
		if errors.Is(err, io.EOF) {
			return o // the job's last event came
		}
		if err != nil {
			o.Err = fmt.Errorf("before the job's last event: %w", err)
			return o
		}
		if err := o.add(ev, now); err != nil {
			o.Err = err
			return o
		}
	}
}

// watchLongPoll asks GET /api/groups/job:ID/events?after=N&wait=25 again
// and again until the job's last event. The first request (wait=0)
// attaches.
func watchLongPoll(ctx context.Context, t target, m *Meter, ready func()) *observation {
	o := &observation{Transport: tLongPoll}
	c, err := t.client(m, t.header)
	if err != nil {
		o.Err = err
		return o
	}
	defer c.HTTPClient().CloseIdleConnections()
	var from client.Position
	for first := true; ; first = false {
		wait := 25 * time.Second
		if first {
			wait = 0
		}
		b, err := c.Poll(ctx, t.group(), from, wait)
		now := time.Now()
		if err != nil {
			o.Err = err
			return o
		}
		if first {
			ready()
		}
		for _, ev := range b.Events {
			if err := o.add(ev, now); err != nil {
				o.Err = err
				return o
			}
			if ev.Final() {
				return o
			}
		}
		from = b.Position()
	}
}

// snapshotKey is what makes two progress snapshots different.
func snapshotKey(p *client.Progress) string {
	if p == nil {
		return ""
	}
	return fmt.Sprintf("%d/%d/%s/%s", p.Done, p.Total, p.Stage, p.Message)
}

// watchPoll returns a watcher that asks GET /api/jobs/{id} every interval
// until the job is finished, keeping each distinct progress snapshot.
func watchPoll(every time.Duration) watchFunc {
	return func(ctx context.Context, t target, m *Meter, ready func()) *observation {
		o := &observation{Transport: tPoll, Polling: true}
		c, err := t.client(m, t.header)
		if err != nil {
			o.Err = err
			return o
		}
		defer c.HTTPClient().CloseIdleConnections()
		tick := time.NewTicker(every)
		defer tick.Stop()
		last := ""
		for first := true; ; first = false {
			j, err := c.Job(ctx, t.id)
			now := time.Now()
			if err != nil {
				o.Err = err
				return o
			}
			if first {
				ready()
			}
			if k := snapshotKey(j.Progress); k != last && j.Progress != nil {
				last = k
				o.Events++
				o.Updates = append(o.Updates, update{Done: j.Progress.Done, TS: j.UpdatedAt, Received: now})
			}
			if j.Terminal() {
				return o
			}
			select {
			case <-ctx.Done():
				o.Err = ctx.Err()
				return o
			case <-tick.C:
			}
		}
	}
}

// browserHeader is roughly what a desktop Chrome adds to a same-origin
// fetch: with -browser-headers every metered request carries it, so the
// per-request cost of polling is closer to what a real page pays. A real
// page also sends its cookies (a session cookie is typically 60-200 bytes
// more); the cookie jar adds whatever the server sets.
func browserHeader(base *url.URL) http.Header {
	return http.Header{
		"User-Agent":         {"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"},
		"Accept-Language":    {"en-US,en;q=0.9"},
		"Accept-Encoding":    {"gzip, deflate, br, zstd"},
		"Referer":            {base.Scheme + "://" + base.Host + "/"},
		"Sec-Ch-Ua":          {`"Not/A)Brand";v="8", "Chromium";v="126", "Google Chrome";v="126"`},
		"Sec-Ch-Ua-Mobile":   {"?0"},
		"Sec-Ch-Ua-Platform": {`"Linux"`},
		"Sec-Fetch-Dest":     {"empty"},
		"Sec-Fetch-Mode":     {"cors"},
		"Sec-Fetch-Site":     {"same-origin"},
	}
}
