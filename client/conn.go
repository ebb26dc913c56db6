package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/wire"
)

// Conn is one socket (GET /ws), for programs that drive the protocol
// themselves: send wire.ClientFrame values, read wire.ServerFrame values.
// Watch and WatchMany are built on it and add resuming, backoff and the
// SSE fallback; prefer them.
//
// One goroutine may read while others send; Send is safe for concurrent
// use.
type Conn struct {
	ws  *websocket.Conn
	wmu sync.Mutex // serializes writes
	buf bytes.Buffer
	ref int64 // the last ref Subscribe used, under wmu
}

// CloseError is why the server closed a socket: a close code (wire.Close*)
// and its reason.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string {
	return "taskstream: socket closed with " + strconv.Itoa(e.Code) + " " + e.Reason
}

// Resumable reports whether a client should reconnect and resume after
// this close (everything but policy and size problems).
func (e *CloseError) Resumable() bool {
	return wire.Resumable(e.Code) && (e.Code < 4000 || e.Code > 4999)
}

// Dial opens a socket. A handshake the server refuses is an *Error with
// the HTTP status (and the protocol's code when the server sent one).
func (c *Client) Dial(ctx context.Context) (*Conn, error) {
	if err := c.ensureSession(ctx); err != nil {
		return nil, err
	}
	ws, res, err := c.dialer.DialContext(ctx, c.wsURL("/ws", nil), c.headers())
	if err != nil {
		return nil, dialError(res, err)
	}
	return &Conn{ws: ws}, nil
}

// Send writes one frame.
func (c *Conn) Send(f wire.ClientFrame) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.send(f)
}

func (c *Conn) send(f wire.ClientFrame) error {
	if err := c.ws.WriteJSON(f); err != nil {
		return fmt.Errorf("client: send a %s frame: %w", f.Op, err)
	}
	return nil
}

// Subscribe sends a subscribe for group from a position (the zero
// Position: the whole retained history) and returns the ref it used.
func (c *Conn) Subscribe(group string, from Position) (string, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.ref++
	ref := strconv.FormatInt(c.ref, 10)
	after := from.Seq
	return ref, c.send(wire.ClientFrame{Op: wire.OpSubscribe, Group: group, After: &after, Epoch: from.Epoch, Ref: json.RawMessage(ref)})
}

// Join subscribes a socket that watches nothing else yet to group and
// reads until the answer: the subscribed frame, or the *Error of the
// error frame. Any other frame before it is an error (on such a socket
// none comes).
func (c *Conn) Join(group string, from Position) (*wire.SubscribedFrame, error) {
	ref, err := c.Subscribe(group, from)
	if err != nil {
		return nil, err
	}
	for {
		raw, err := c.ReadRaw()
		if err != nil {
			return nil, fmt.Errorf("client: waiting for the answer to subscribe %s: %w", group, err)
		}
		var f wire.SubscribedFrame
		if err := json.Unmarshal(raw, &f); err != nil {
			return nil, fmt.Errorf("client: a frame that is not JSON: %w", err)
		}
		switch {
		case f.Type == wire.TypeSubscribed && f.Group == group:
			return &f, nil
		case f.Type == wire.TypeError && string(f.Ref) == ref:
			var e wire.ReplyFrame
			_ = json.Unmarshal(raw, &e)
			return nil, &Error{Code: e.Code, Message: e.Message, Group: e.Group}
		default:
			return nil, fmt.Errorf("client: a %s frame before the answer to subscribe %s", f.Type, group)
		}
	}
}

// ReadRaw returns the next frame as sent, in a buffer that the next read
// reuses. A close from the server is a *CloseError.
func (c *Conn) ReadRaw() ([]byte, error) {
	_, r, err := c.ws.NextReader()
	if err != nil {
		return nil, closeErrorOf(err)
	}
	c.buf.Reset()
	if _, err := c.buf.ReadFrom(r); err != nil {
		return nil, closeErrorOf(err)
	}
	return c.buf.Bytes(), nil
}

// ReadFrame returns the next frame, decoded.
func (c *Conn) ReadFrame() (wire.ServerFrame, error) {
	var f wire.ServerFrame
	raw, err := c.ReadRaw()
	if err != nil {
		return f, err
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		return f, fmt.Errorf("client: a frame that is not JSON: %w", err)
	}
	return f, nil
}

// SetReadDeadline bounds the reads in progress and to come (zero: none).
func (c *Conn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// Shutdown closes the socket with a close handshake (code 1000), reading
// and dropping what arrives until the server's close frame or timeout.
// Call it when no other goroutine reads.
func (c *Conn) Shutdown(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c.wmu.Lock()
	err := c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), deadline)
	c.wmu.Unlock()
	if err == nil {
		_ = c.ws.SetReadDeadline(deadline)
		for {
			if _, _, rerr := c.ws.NextReader(); rerr != nil {
				break
			}
		}
	}
	return c.ws.Close()
}

// Close closes the connection at once, without a close handshake; a
// read in progress returns an error.
func (c *Conn) Close() error { return c.ws.Close() }

// closeErrorOf turns a close frame from the server into a *CloseError.
func closeErrorOf(err error) error {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return &CloseError{Code: ce.Code, Reason: ce.Text}
	}
	return err
}

// dialError classifies a failed handshake: an *Error when the server
// answered (with the answer's status), else the transport error.
func dialError(res *http.Response, err error) error {
	if res != nil {
		defer res.Body.Close()
		return errorOf(res)
	}
	return fmt.Errorf("client: open a socket: %w", err)
}
