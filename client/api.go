package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"taskstream/wire"
)

// JobType is a job type the server runs: GET /api/job-types.
type JobType struct {
	Type        string          `json:"type"`
	Description string          `json:"description"`
	Params      json.RawMessage `json:"params"` // its params' JSON Schema
}

// Progress is a job's progress, as its progress events and snapshot carry
// it.
type Progress = wire.Progress

// Job is the protocol's job object.
type Job struct {
	ID       string          `json:"id"`
	Owner    string          `json:"owner"`
	Type     string          `json:"type"`
	State    string          `json:"state"` // wire.State*
	Params   json.RawMessage `json:"params"`
	Progress *Progress       `json:"progress"`
	Result   json.RawMessage `json:"result"`
	Error    string          `json:"error"` // why it failed (or the last attempt failed)
	Attempt  int             `json:"attempt"`
	// How it runs, on servers with submit options: its queue, priority
	// ("high", "normal", "low"), timeout of one run (a Go duration),
	// retries, and when a scheduled job runs (nil: at once).
	Queue     string     `json:"queue,omitempty"`
	Priority  string     `json:"priority,omitempty"`
	Timeout   string     `json:"timeout,omitempty"`
	MaxRetry  int        `json:"max_retry,omitempty"`
	RunAt     *time.Time `json:"run_at,omitempty"`
	Schedule  string     `json:"schedule,omitempty"` // the schedule entry that made it, if one did
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
	LastSeq   int64      `json:"last_seq"` // the job group's last seq when read
	Epoch     string     `json:"epoch"`
	Artifact  string     `json:"artifact,omitempty"` // the artifact's path, once there is one

	// Replayed is set by Submit when the server answered with the job an
	// earlier submission with the same Idempotency-Key made (200, not
	// 202).
	Replayed bool `json:"-"`
}

// Terminal reports whether the job has ended.
func (j *Job) Terminal() bool { return wire.Terminal(j.State) }

// Group is the job's group, to Watch.
func (j *Job) Group() string { return wire.JobGroup(j.ID).String() }

// Position is where the job's snapshot stands in its group: watching from
// it delivers what happened after the snapshot.
func (j *Job) Position() Position { return Position{Seq: j.LastSeq, Epoch: j.Epoch} }

// SubmitRequest is the body of POST /api/jobs. Type and Params are the
// protocol's; the other fields are submission options, sent only when set
// (a server that does not know one answers 400 naming it).
type SubmitRequest struct {
	Type   string `json:"type"`
	Params any    `json:"params,omitempty"` // any JSON value; json.RawMessage is sent as is

	Queue    string        `json:"queue,omitempty"`     // one of the type's queues
	Priority string        `json:"priority,omitempty"`  // "high", "normal" or "low"
	Timeout  time.Duration `json:"-"`                   // sent as "timeout": "30s"
	MaxRetry *int          `json:"max_retry,omitempty"` // retries after a failed attempt
	Delay    time.Duration `json:"-"`                   // sent as "delay": "3s": run no sooner
	RunAt    time.Time     `json:"-"`                   // sent as "run_at" (RFC 3339): run no sooner
}

// MarshalJSON writes durations as Go duration strings ("3s") and RunAt as
// RFC 3339, each only when set.
func (r SubmitRequest) MarshalJSON() ([]byte, error) {
	type plain SubmitRequest
	return json.Marshal(struct {
		plain
		Timeout string `json:"timeout,omitempty"`
		Delay   string `json:"delay,omitempty"`
		RunAt   string `json:"run_at,omitempty"`
	}{plain: plain(r), Timeout: durationString(r.Timeout), Delay: durationString(r.Delay), RunAt: timeString(r.RunAt)})
}

func durationString(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

func timeString(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// SubmitOption adds something to a submission's request.
type SubmitOption func(h http.Header)

// IdempotencyKey sends an Idempotency-Key header: the same key from the
// same caller returns the job the first submission made instead of a
// second one, on servers that support it.
func IdempotencyKey(key string) SubmitOption {
	return func(h http.Header) { h.Set("Idempotency-Key", key) }
}

// Submit starts a job: POST /api/jobs. A rate-limited submission is an
// *Error with Code wire.CodeRateLimited and its RetryAfter.
func (c *Client) Submit(ctx context.Context, r SubmitRequest, opts ...SubmitOption) (*Job, error) {
	req, err := c.request(ctx, http.MethodPost, "/api/jobs", nil, r)
	if err != nil {
		return nil, err
	}
	for _, o := range opts {
		o(req.Header)
	}
	res, err := c.send(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	var j Job
	if err := json.NewDecoder(res.Body).Decode(&j); err != nil {
		return nil, fmt.Errorf("client: submit: decode the job: %w", err)
	}
	j.Replayed = res.StatusCode == http.StatusOK
	return &j, nil
}

// Job reads a job: GET /api/jobs/{id}.
func (c *Client) Job(ctx context.Context, id string) (*Job, error) {
	var j Job
	if _, err := c.do(ctx, http.MethodGet, "/api/jobs/"+url.PathEscape(id), nil, nil, &j); err != nil {
		return nil, err
	}
	return &j, nil
}

// Jobs lists the caller's newest jobs: GET /api/jobs?limit=N (limit 0:
// the server's default, 50). ListJobs filters and pages.
func (c *Client) Jobs(ctx context.Context, limit int) ([]Job, error) {
	page, err := c.ListJobs(ctx, JobsQuery{Limit: limit})
	if err != nil {
		return nil, err
	}
	return page.Jobs, nil
}

// JobsQuery filters and pages GET /api/jobs; every field is optional.
type JobsQuery struct {
	State  string // keep jobs in this state
	Type   string // keep jobs of this type
	Before string // the Next of the previous page
	Limit  int    // 0: the server's default, 50
}

// JobsPage is one page of the caller's jobs; Next is empty on the last.
type JobsPage struct {
	Jobs []Job  `json:"jobs"`
	Next string `json:"next,omitempty"`
}

// ListJobs reads one page of the caller's jobs, newest first, filtered:
// GET /api/jobs?state=&type=&before=&limit=. Ask for the next page with
// Before set to the page's Next.
func (c *Client) ListJobs(ctx context.Context, q JobsQuery) (*JobsPage, error) {
	v := url.Values{}
	for k, val := range map[string]string{"state": q.State, "type": q.Type, "before": q.Before} {
		if val != "" {
			v.Set(k, val)
		}
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var page JobsPage
	if _, err := c.do(ctx, http.MethodGet, "/api/jobs", v, nil, &page); err != nil {
		return nil, err
	}
	return &page, nil
}

// Cancel cancels a job: POST /api/jobs/{id}/cancel. A job that already
// finished is an *Error with Code wire.CodeConflict.
func (c *Client) Cancel(ctx context.Context, id string) (*Job, error) {
	var j Job
	if _, err := c.do(ctx, http.MethodPost, "/api/jobs/"+url.PathEscape(id)+"/cancel", nil, nil, &j); err != nil {
		return nil, err
	}
	return &j, nil
}

// Artifact downloads a completed job's file: GET /api/jobs/{id}/artifact.
// The caller closes the reader.
func (c *Client) Artifact(ctx context.Context, id string) (io.ReadCloser, error) {
	req, err := c.request(ctx, http.MethodGet, "/api/jobs/"+url.PathEscape(id)+"/artifact", nil, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Del("Accept")
	res, err := c.send(req)
	if err != nil {
		return nil, err
	}
	return res.Body, nil
}

// JobTypes lists the job types: GET /api/job-types.
func (c *Client) JobTypes(ctx context.Context) ([]JobType, error) {
	var out []JobType
	if _, err := c.do(ctx, http.MethodGet, "/api/job-types", nil, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// Batch is a run of a group's events: a long-poll answer (Poll) or a
// page of its history (History).
type Batch struct {
	Group     string
	Events    []Event
	LastSeq   int64  // poll again after this
	Epoch     string // with this epoch
	Recovered bool   // false: the position could not be resumed; Events start over
}

// Position is the batch's end, to poll or watch from.
func (b *Batch) Position() Position { return Position{Seq: b.LastSeq, Epoch: b.Epoch} }

// Poll long-polls a group once: the events after from, waiting up to wait
// (0: answer at once; at most 60 s) when there is none yet.
func (c *Client) Poll(ctx context.Context, group string, from Position, wait time.Duration) (*Batch, error) {
	q := url.Values{"after": {strconv.FormatInt(from.Seq, 10)}, "wait": {strconv.FormatFloat(wait.Seconds(), 'f', -1, 64)}}
	if from.Epoch != "" {
		q.Set("epoch", from.Epoch)
	}
	var lp wire.LongPoll
	if _, err := c.do(ctx, http.MethodGet, groupPath(group, "/events"), q, nil, &lp); err != nil {
		return nil, err
	}
	return batchOf(group, lp)
}

// batchOf decodes the event frames of a long-poll or history answer.
func batchOf(group string, lp wire.LongPoll) (*Batch, error) {
	b := &Batch{Group: group, Events: make([]Event, 0, len(lp.Events)), LastSeq: lp.LastSeq, Epoch: lp.Epoch, Recovered: lp.Recovered}
	for _, raw := range lp.Events {
		var f wire.EventFrame
		if err := json.Unmarshal(raw, &f); err != nil {
			return nil, fmt.Errorf("client: %s: an event: %w", group, err)
		}
		b.Events = append(b.Events, Event{EventFrame: f})
	}
	return b, nil
}

// User is a caller as the server sees it.
type User struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Email string `json:"email,omitempty"`
	Guest bool   `json:"guest"`
}

// Group is the user's notification group, to Watch.
func (u *User) Group() string { return wire.UserGroup(u.ID).String() }

// Me returns the caller: GET /api/me (a cookie session without a user
// becomes a guest here).
func (c *Client) Me(ctx context.Context) (*User, error) {
	var u User
	if _, err := c.do(ctx, http.MethodGet, "/api/me", nil, nil, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// SetName sets the caller's display name (1–40 printable characters):
// POST /api/me.
func (c *Client) SetName(ctx context.Context, name string) (*User, error) {
	var u User
	if _, err := c.do(ctx, http.MethodPost, "/api/me", nil, map[string]string{"name": name}, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// RequestCode asks for a sign-in code mailed to email: POST /api/auth/code.
func (c *Client) RequestCode(ctx context.Context, email string) error {
	_, err := c.do(ctx, http.MethodPost, "/api/auth/code", nil, map[string]string{"email": email}, nil)
	return err
}

// Login signs in with a mailed code: POST /api/auth/login. The session
// cookie lands in the client's cookie jar, so later calls (and sockets)
// are the signed-in user's.
func (c *Client) Login(ctx context.Context, email, code string) (*User, error) {
	var u User
	if _, err := c.do(ctx, http.MethodPost, "/api/auth/login", nil, map[string]string{"email": email, "code": code}, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// Logout ends the cookie session everywhere: POST /api/auth/logout.
func (c *Client) Logout(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodPost, "/api/auth/logout", nil, nil, nil)
	return err
}

// Token is a bearer token. Secret is only set by CreateToken: the server
// shows it once.
type Token struct {
	ID        string    `json:"id"`
	Secret    string    `json:"token,omitempty"`
	Name      string    `json:"name,omitempty"`
	Scopes    []string  `json:"scopes,omitempty"` // empty: the token acts as its user
	CreatedAt time.Time `json:"created_at"`
}

// TokenRequest says what a new token is: an optional label, and scopes
// ("publish:chat:*", "history:*", "presence:chat:lobby", "admin:*"; see
// docs/protocol.md, "The server API"). Without scopes the token acts as
// its user; an admin's tokens need scopes.
type TokenRequest struct {
	Name   string   `json:"name,omitempty"`
	Scopes []string `json:"scopes,omitempty"`
}

// CreateToken creates a bearer token for the signed-in caller (or, for
// an admin, a scoped token of the admin identity): POST /api/tokens.
func (c *Client) CreateToken(ctx context.Context, r TokenRequest) (*Token, error) {
	var t Token
	if _, err := c.do(ctx, http.MethodPost, "/api/tokens", nil, r, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// Tokens lists the signed-in caller's tokens (without secrets): GET
// /api/tokens.
func (c *Client) Tokens(ctx context.Context) ([]Token, error) {
	var out struct {
		Tokens []Token `json:"tokens"`
	}
	if _, err := c.do(ctx, http.MethodGet, "/api/tokens", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Tokens, nil
}

// RevokeToken revokes one of the caller's tokens; its sockets are closed
// with 1008: DELETE /api/tokens/{id}.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, "/api/tokens/"+url.PathEscape(id), nil, nil, nil)
	return err
}

// Notification is a notification to push (POST /api/notify, admin tokens
// only): to User's group, or to Group.
type Notification struct {
	User  string `json:"user,omitempty"`
	Group string `json:"group,omitempty"`
	Title string `json:"title"`
	Body  string `json:"body,omitempty"`
	Link  string `json:"link,omitempty"`
}

// Published is where an event went: its group and seq (and, where the
// server says, its epoch).
type Published struct {
	Group string `json:"group"`
	Seq   int64  `json:"seq"`
	Epoch string `json:"epoch,omitempty"`
}

// Notify pushes a notification: POST /api/notify.
func (c *Client) Notify(ctx context.Context, n Notification) (*Published, error) {
	var p Published
	if _, err := c.do(ctx, http.MethodPost, "/api/notify", nil, n, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// PostMessage posts text to a chat room: POST
// /api/groups/chat:{room}/messages.
func (c *Client) PostMessage(ctx context.Context, room, text string) error {
	_, err := c.do(ctx, http.MethodPost, groupPath(wire.ChatGroup(room).String(), "/messages"), nil, map[string]string{"text": text}, nil)
	return err
}

// Health checks liveness: GET /healthz.
func (c *Client) Health(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodGet, "/healthz", nil, nil, nil)
	return err
}

// Ready checks readiness (Redis answers, events flow): GET /readyz. Not
// ready is an *Error with Code wire.CodeUnavailable.
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodGet, "/readyz", nil, nil, nil)
	return err
}

// OpenAPI returns the server's OpenAPI 3.1 description of its routes:
// GET /api/openapi.json.
func (c *Client) OpenAPI(ctx context.Context) (json.RawMessage, error) {
	var doc json.RawMessage
	if _, err := c.do(ctx, http.MethodGet, "/api/openapi.json", nil, nil, &doc); err != nil {
		return nil, err
	}
	return doc, nil
}

// PublishEvent is an event for the server API's publish: into Group,
// named Event (not one the server reserves for itself, such as a job's
// state), with Data, any JSON value (json.RawMessage is sent as is).
type PublishEvent struct {
	Group string `json:"group"`
	Event string `json:"event"`
	Data  any    `json:"data"`
}

// Publish appends an event to a group's log and delivers it to the
// group's subscribers on every server: POST /api/publish (an admin token,
// or one with a publish scope for the group).
func (c *Client) Publish(ctx context.Context, ev PublishEvent) (*Published, error) {
	var p Published
	if _, err := c.do(ctx, http.MethodPost, "/api/publish", nil, ev, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// PublishResult is one event's outcome in a batch: where it went, or
// Err (an *Error with the code the server gave that event alone).
type PublishResult struct {
	Published
	Err *Error
}

// PublishBatch publishes 1 to 100 events in order in one request: POST
// /api/publish/batch. The results are in the order of events; a batch
// refused as a whole is the error.
func (c *Client) PublishBatch(ctx context.Context, events []PublishEvent) ([]PublishResult, error) {
	var out struct {
		Results []json.RawMessage `json:"results"`
	}
	if _, err := c.do(ctx, http.MethodPost, "/api/publish/batch", nil, map[string]any{"events": events}, &out); err != nil {
		return nil, err
	}
	res := make([]PublishResult, len(out.Results))
	for i, raw := range out.Results {
		var body wire.ErrorBody
		if json.Unmarshal(raw, &body) == nil && body.Error.Code != "" {
			res[i].Err = &Error{Status: wire.HTTPStatus(body.Error.Code), Code: body.Error.Code, Message: body.Error.Message}
			continue
		}
		if err := json.Unmarshal(raw, &res[i].Published); err != nil {
			return nil, fmt.Errorf("client: publish batch: result %d: %w", i, err)
		}
	}
	return res, nil
}

// History reads a page of a group's log: up to limit events (0: the
// server's default, 100; at most 1,000) after from, oldest first: GET
// /api/groups/{group}/history. With Recovered false the position could
// not be resumed and the page starts at the oldest retained event. Page
// on from the batch's last event while it is below LastSeq.
func (c *Client) History(ctx context.Context, group string, from Position, limit int) (*Batch, error) {
	q := url.Values{"after": {strconv.FormatInt(from.Seq, 10)}}
	if from.Epoch != "" {
		q.Set("epoch", from.Epoch)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var page wire.LongPoll // the same members, and the group
	if _, err := c.do(ctx, http.MethodGet, groupPath(group, "/history"), q, nil, &page); err != nil {
		return nil, err
	}
	return batchOf(group, page)
}

// Member is a user as chat rooms show them (in the presence list, and
// in a chat room's subscribed frame: wire.SubscribedFrame.Users).
type Member = wire.Member

// Presence returns who is in a chat room now, by name: GET
// /api/groups/chat:{room}/presence.
func (c *Client) Presence(ctx context.Context, room string) ([]Member, error) {
	var out struct {
		Users []Member `json:"users"`
	}
	if _, err := c.do(ctx, http.MethodGet, groupPath(wire.ChatGroup(room).String(), "/presence"), nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Users, nil
}

// Disconnect closes every socket of a user on every server with 1008
// (admin only); the user may connect again: POST
// /api/users/{id}/disconnect.
func (c *Client) Disconnect(ctx context.Context, userID string) error {
	_, err := c.do(ctx, http.MethodPost, "/api/users/"+url.PathEscape(userID)+"/disconnect", nil, nil, nil)
	return err
}

// Schedule is a periodic job of the server's schedule file, as GET
// /api/schedules shows it.
type Schedule struct {
	Name    string          `json:"name"`
	Spec    string          `json:"spec"` // its cron spec
	Type    string          `json:"type"`
	Params  json.RawMessage `json:"params"`
	Options json.RawMessage `json:"options"` // the submit options each run gets
	NextRun time.Time       `json:"next_run"`
	LastRun *time.Time      `json:"last_run"` // nil when none is known
	LastJob string          `json:"last_job,omitempty"`
	Owner   string          `json:"owner"`
}

// Schedules lists the periodic jobs (signed-in users and admin tokens):
// GET /api/schedules.
func (c *Client) Schedules(ctx context.Context) ([]Schedule, error) {
	var out struct {
		Schedules []Schedule `json:"schedules"`
	}
	if _, err := c.do(ctx, http.MethodGet, "/api/schedules", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Schedules, nil
}

// TaskAction is what an admin may do to a waiting Asynq task.
type TaskAction string

// The task actions of the dashboard's routes.
const (
	TaskRetry   TaskAction = "retry"   // run it now, as a new attempt of its job
	TaskArchive TaskAction = "archive" // its job ends failed
	TaskDelete  TaskAction = "delete"  // its job ends canceled
)

// TaskResult is the answer of ActOnTask: the task, and the id of its job
// (empty when the task belongs to none), which the action has ended or
// rerun already.
type TaskResult struct {
	Queue  string     `json:"queue"`
	Task   string     `json:"task"`
	Job    string     `json:"job"`
	Action TaskAction `json:"action"`
}

// PauseQueue pauses (paused true) or unpauses an Asynq queue, as the
// dashboard's names it ("default", "critical:high"); admins only: POST
// /api/admin/queues/{queue}/pause or /unpause.
func (c *Client) PauseQueue(ctx context.Context, queue string, paused bool) error {
	verb := "unpause"
	if paused {
		verb = "pause"
	}
	_, err := c.do(ctx, http.MethodPost, "/api/admin/queues/"+url.PathEscape(queue)+"/"+verb, nil, nil, nil)
	return err
}

// ActOnTask retries, archives or deletes a waiting task (admins only):
// POST /api/admin/queues/{queue}/tasks/{task}/retry or /archive, DELETE
// /api/admin/queues/{queue}/tasks/{task}. A task whose state does not
// allow it (a running one: cancel its job) is an *Error with Code
// wire.CodeConflict.
func (c *Client) ActOnTask(ctx context.Context, queue, task string, action TaskAction) (*TaskResult, error) {
	path := "/api/admin/queues/" + url.PathEscape(queue) + "/tasks/" + url.PathEscape(task)
	method := http.MethodPost
	switch action {
	case TaskRetry, TaskArchive:
		path += "/" + string(action)
	case TaskDelete:
		method = http.MethodDelete
	default:
		return nil, fmt.Errorf("client: unknown task action %q", action)
	}
	var out TaskResult
	if _, err := c.do(ctx, method, path, nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
