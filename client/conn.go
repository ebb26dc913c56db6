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
	// rest is what is left of the message in buf: a taskstream.v2
	// message carries several frames, handed out one per read.
	rest []byte
	dec  wire.Decoder // fills in the epochs lean frames leave out
	ref  int64        // the last ref Subscribe used, under wmu
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
		f, err := c.ReadFrame()
		if err != nil {
			return nil, fmt.Errorf("client: waiting for the answer to subscribe %s: %w", group, err)
		}
		switch {
		case f.Type == wire.TypeSubscribed && f.Group == group:
			return &wire.SubscribedFrame{Type: f.Type, Group: f.Group, Ref: f.Ref, Epoch: f.Epoch, LastSeq: f.LastSeq, Replayed: f.Replayed, Recovered: f.Recovered, Users: f.Users}, nil
		case f.Type == wire.TypeError && string(f.Ref) == ref:
			return nil, &Error{Code: f.Code, Message: f.Message, Group: f.Group}
		default:
			return nil, fmt.Errorf("client: a %s frame before the answer to subscribe %s", f.Type, group)
		}
	}
}

// Subprotocol returns the socket's subprotocol: wire.SubprotocolV2 when
// the server agreed to it (batched messages, lean event frames), "" for
// v1.
func (c *Conn) Subprotocol() string { return c.ws.Subprotocol() }

// ReadRaw returns the next frame as sent, in a buffer that a later read
// reuses: on a taskstream.v2 socket (Subprotocol) one of the frames of a
// message, and an event frame in its lean form (wire.DecodeFrame reads
// both forms). ReadFrame fills in the epochs lean frames leave out from
// the frames it read; a program that reads raw frames tracks them itself
// (wire.Decoder). A close from the server is a *CloseError.
func (c *Conn) ReadRaw() ([]byte, error) {
	for {
		var frame []byte
		if frame, c.rest = wire.NextFrame(c.rest); frame != nil {
			return frame, nil
		}
		_, r, err := c.ws.NextReader()
		if err != nil {
			return nil, closeErrorOf(err)
		}
		c.buf.Reset()
		if _, err := c.buf.ReadFrom(r); err != nil {
			return nil, closeErrorOf(err)
		}
		c.rest = c.buf.Bytes()
	}
}

// ReadFrame returns the next frame, decoded: in full, as v1 sends it,
// whichever version the socket speaks.
func (c *Conn) ReadFrame() (wire.ServerFrame, error) {
	raw, err := c.ReadRaw()
	if err != nil {
		return wire.ServerFrame{}, err
	}
	f, err := c.dec.Decode(raw)
	if err != nil {
		return f, fmt.Errorf("client: %w", err)
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
