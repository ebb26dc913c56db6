package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/jobs"
	"taskstream/progress"
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

func (t target) group() string { return jobs.Group(t.id) }

func (t target) url(path string, q url.Values) string {
	u := *t.base
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawQuery = q.Encode()
	return u.String()
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

// wireFrame is a server frame (an event frame, or a socket reply).
type wireFrame = wire.ServerFrame

// add records an event frame received at t. It reports whether the frame
// is the job's last event.
func (o *observation) add(f wireFrame, t time.Time) (final bool, err error) {
	o.Events++
	if f.Event == "progress" {
		var p progress.Progress
		if err := json.Unmarshal(f.Data, &p); err != nil {
			return false, fmt.Errorf("%s: progress data %s: %w", o.Transport, f.Data, err)
		}
		ts, err := time.Parse(time.RFC3339Nano, f.TS)
		if err != nil {
			return false, fmt.Errorf("%s: event ts %q: %w", o.Transport, f.TS, err)
		}
		o.Updates = append(o.Updates, update{Seq: f.Seq, Done: p.Done, TS: ts, Received: t})
	}
	return jobs.FinalEvent(f.Event, f.Data), nil
}

// watchFunc follows the job until its last event. It calls ready once it
// is attached (subscribed, or has its first answer).
type watchFunc func(ctx context.Context, t target, m *Meter, ready func()) *observation

// watchWS subscribes to the job's group on /ws and reads until the job's
// last event, then closes the socket with a close handshake.
func watchWS(ctx context.Context, t target, m *Meter, ready func()) *observation {
	o := &observation{Transport: tWS}
	d := websocket.Dialer{NetDialContext: m.DialContext, Jar: t.jar, HandshakeTimeout: 10 * time.Second}
	h := t.header.Clone()
	if h == nil {
		h = http.Header{}
	}
	if h.Get("User-Agent") != "" {
		h.Set("Origin", t.base.Scheme+"://"+t.base.Host) // a browser's socket says where it comes from
	}
	u := *t.base
	u.Scheme = "ws"
	if t.base.Scheme == "https" {
		u.Scheme = "wss"
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/ws"
	m.countRequest()
	conn, _, err := d.DialContext(ctx, u.String(), h)
	if err != nil {
		o.Err = fmt.Errorf("dial %s: %w", u.String(), err)
		return o
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	defer conn.Close()
	if err := conn.WriteJSON(wire.ClientFrame{Op: wire.OpSubscribe, Group: t.group(), After: new(int64), Ref: json.RawMessage(`"1"`)}); err != nil {
		o.Err = err
		return o
	}
	for {
		_, data, err := conn.ReadMessage()
		now := time.Now()
		if err != nil {
			o.Err = fmt.Errorf("socket ended before the job's last event: %w", err)
			return o
		}
		var f wireFrame
		if err := json.Unmarshal(data, &f); err != nil {
			o.Err = fmt.Errorf("non-JSON frame %q", data)
			return o
		}
		switch f.Type {
		case wire.TypeSubscribed:
			ready()
		case "error":
			o.Err = fmt.Errorf("socket error %s: %s", f.Code, f.Message)
			return o
		case wire.TypeEvent:
			final, err := o.add(f, now)
			if err != nil {
				o.Err = err
				return o
			}
			if final {
				closeSocket(conn)
				return o
			}
		}
	}
}

// closeSocket does the close handshake, so its bytes are counted too.
func closeSocket(conn *websocket.Conn) {
	deadline := time.Now().Add(2 * time.Second)
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), deadline)
	_ = conn.SetReadDeadline(deadline)
	for {
		if _, _, err := conn.NextReader(); err != nil {
			return
		}
	}
}

// watchSSE reads GET /api/jobs/{id}/events as text/event-stream until the
// job's last event, reconnecting with Last-Event-ID if the stream ends early.
func watchSSE(ctx context.Context, t target, m *Meter, ready func()) *observation {
	o := &observation{Transport: tSSE}
	client := m.HTTPClient(t.jar)
	defer CloseIdle(client)
	lastID := ""
	for attempt := 0; attempt < 5; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.url("/api/jobs/"+t.id+"/events", nil), nil)
		if err != nil {
			o.Err = err
			return o
		}
		copyHeader(req.Header, t.header)
		req.Header.Set("Accept", "text/event-stream")
		req.Header.Set("Cache-Control", "no-cache")
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		res, err := client.Do(req)
		if err != nil {
			o.Err = err
			return o
		}
		if res.StatusCode != http.StatusOK {
			o.Err = httpError(res)
			return o
		}
		final := false
		err = readSSE(res.Body, func(ev sseEvent) (bool, error) {
			now := time.Now()
			if ev.ID != "" {
				lastID = ev.ID
			}
			if ev.Event == "subscribed" {
				ready()
				return false, nil
			}
			var f wireFrame
			if err := json.Unmarshal(ev.Data, &f); err != nil {
				return true, fmt.Errorf("SSE data %q: %w", ev.Data, err)
			}
			final, err = o.add(f, now)
			return final || err != nil, err
		})
		// Drain what is left (the chunked terminator), so the bytes are
		// counted and the connection goes back to the pool cleanly.
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if err != nil || final {
			o.Err = err
			return o
		}
	}
	o.Err = errors.New("SSE stream kept ending before the job's last event")
	return o
}

// sseEvent is one dispatched Server-Sent Event.
type sseEvent struct {
	ID    string
	Event string
	Data  []byte
}

// readSSE parses an event stream and calls fn for each event until fn
// says stop, fn fails, or the stream ends (nil error at EOF).
func readSSE(r io.Reader, fn func(sseEvent) (stop bool, err error)) error {
	br := bufio.NewReader(r)
	var ev sseEvent
	var data [][]byte
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 { // dispatch
			if len(data) > 0 || ev.Event != "" {
				ev.Data = bytes.Join(data, []byte("\n"))
				stop, err := fn(ev)
				if stop || err != nil {
					return err
				}
			}
			ev, data = sseEvent{ID: ev.ID}, nil
			continue
		}
		if line[0] == ':' {
			continue // comment (heartbeat)
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "id":
			ev.ID = string(value)
		case "event":
			ev.Event = string(value)
		case "data":
			data = append(data, bytes.Clone(value))
		}
	}
}

// watchLongPoll asks GET /api/jobs/{id}/events?after=N&wait=25 again and
// again until the job's last event. The first request (wait=0) attaches.
func watchLongPoll(ctx context.Context, t target, m *Meter, ready func()) *observation {
	o := &observation{Transport: tLongPoll}
	client := m.HTTPClient(t.jar)
	defer CloseIdle(client)
	var after int64
	epoch := ""
	for first := true; ; first = false {
		q := url.Values{"after": {strconv.FormatInt(after, 10)}, "wait": {"25"}}
		if first {
			q.Set("wait", "0")
		}
		if epoch != "" {
			q.Set("epoch", epoch)
		}
		var ans wire.LongPoll
		now, err := getJSON(ctx, client, t, "/api/jobs/"+t.id+"/events", q, &ans)
		if err != nil {
			o.Err = err
			return o
		}
		if first {
			ready()
		}
		for _, raw := range ans.Events {
			var f wireFrame
			if err := json.Unmarshal(raw, &f); err != nil {
				o.Err = fmt.Errorf("long-poll event: %w", err)
				return o
			}
			final, err := o.add(f, now)
			if err != nil || final {
				o.Err = err
				return o
			}
		}
		after, epoch = ans.LastSeq, ans.Epoch
	}
}

// pollJob is the part of the job snapshot polling looks at.
type pollJob struct {
	State     string             `json:"state"`
	Progress  *progress.Progress `json:"progress"`
	UpdatedAt time.Time          `json:"updated_at"`
	LastSeq   int64              `json:"last_seq"`
}

// snapshotKey is what makes two progress snapshots different.
func snapshotKey(p *progress.Progress) string {
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
		client := m.HTTPClient(t.jar)
		defer CloseIdle(client)
		tick := time.NewTicker(every)
		defer tick.Stop()
		last := ""
		for first := true; ; first = false {
			var j pollJob
			now, err := getJSON(ctx, client, t, "/api/jobs/"+t.id, nil, &j)
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
			if jobs.Terminal(j.State) {
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

// getJSON GETs path and decodes the 200 answer into v; it returns when
// the whole body had arrived.
func getJSON(ctx context.Context, client *http.Client, t target, path string, q url.Values, v any) (time.Time, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.url(path, q), nil)
	if err != nil {
		return time.Time{}, err
	}
	copyHeader(req.Header, t.header)
	req.Header.Set("Accept", "application/json")
	res, err := client.Do(req)
	if err != nil {
		return time.Time{}, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	now := time.Now()
	if err != nil {
		return now, err
	}
	if res.StatusCode != http.StatusOK {
		return now, fmt.Errorf("GET %s: %s: %s", path, res.Status, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return now, fmt.Errorf("GET %s: %w", path, err)
	}
	return now, nil
}

func httpError(res *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	res.Body.Close()
	return fmt.Errorf("%s %s: %s: %s", res.Request.Method, res.Request.URL.Path, res.Status, bytes.TrimSpace(body))
}

func copyHeader(dst, src http.Header) {
	for k, vs := range src {
		dst[k] = append([]string(nil), vs...)
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
