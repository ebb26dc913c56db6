// Package client is the Go client of a taskstream server, for programs:
// typed calls for the HTTP API (docs/protocol.md, "HTTP routes") and
// watches of groups that deliver each event once, in order, across
// reconnects.
//
// A Client is made with New. It authenticates with a bearer token
// (Config.Token) or, without one, with the session cookie in its cookie
// jar (a guest until Login). Every failure the server answers is an
// *Error carrying the HTTP status and the protocol's code and message
// (errors.As; IsCode).
//
// Watch follows one group from a Position: it subscribes over a socket
// with after and epoch, resumes after every reconnect (jittered
// exponential backoff; 1013 backs off longer, a policy close such as a
// revoked token ends the watch with a *CloseError), falls back to
// Server-Sent Events when the socket's upgrade is refused, drops the
// replayed events it already delivered, and ends after a job's last
// event (Next returns io.EOF). When the server cannot resume a position
// (recovered:false), Next returns a *NotRecoveredError before the
// replayed history, so a caller that treats every error as fatal cannot
// miss it.
//
// WatchMany watches hundreds of groups over one socket: groups added
// while it runs are subscribed in batches with the protocol's many-group
// subscribe frame, so a program that submits and watches many jobs a
// second is not throttled by the server's per-socket frame limit.
//
// Conn is the bare socket, for programs that speak the frames of
// package wire themselves.
//
// The package imports package wire and gorilla/websocket only.
package client
