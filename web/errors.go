package web

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"taskstream/progress"
	"taskstream/wire"
)

// Error codes (package wire), used in HTTP error bodies and socket error
// frames alike.
const (
	CodeBadRequest           = wire.CodeBadRequest
	CodeUnauthenticated      = wire.CodeUnauthenticated
	CodeForbidden            = wire.CodeForbidden
	CodeNotFound             = wire.CodeNotFound
	CodeConflict             = wire.CodeConflict
	CodeTooLarge             = wire.CodeTooLarge
	CodeUnsupportedMedia     = wire.CodeUnsupportedMedia
	CodeRateLimited          = wire.CodeRateLimited
	CodeUnavailable          = wire.CodeUnavailable
	CodeInternal             = wire.CodeInternal
	CodeMethodNotAllowed     = wire.CodeMethodNotAllowed
	CodeIdempotencyKeyReused = wire.CodeIdempotencyKeyReused
)

// APIError is a failure the client can act on: a protocol code and a
// message safe to show.
type APIError struct {
	Code       string
	Message    string
	RetryAfter int // seconds, for rate_limited and unavailable
	// Field names the request field a bad_request is about; Job the
	// existing job a conflict or idempotency_key_reused is about. Both
	// are optional and go in the error body as "field" and "job".
	Field string
	Job   string
}

// unavailableRetryAfter is the Retry-After, in seconds, of every 503
// unavailable answer: Redis restarts and Sentinel failovers take seconds,
// so clients come back soon without hammering a Redis that is down.
const unavailableRetryAfter = 2

func (e *APIError) Error() string { return e.Code + ": " + e.Message }

// Status is the HTTP status of the error's code.
func (e *APIError) Status() int { return wire.HTTPStatus(e.Code) }

func apiErr(code, msg string) *APIError { return &APIError{Code: code, Message: msg} }

type errorBody = wire.ErrorBody

// toAPIError is the one place where an error becomes what the client is
// told, on HTTP and on the socket alike. An *APIError is shown as it is.
// An error that means Redis is unavailable (progress.IsUnavailable:
// down, unreachable, too slow, loading, failing over) is 503 unavailable
// with Retry-After: the request may well succeed shortly. Anything else is
// internal: shown as a generic message so no internals leak. Both kinds
// are logged here, with what, so each is logged once.
func (s *Server) toAPIError(err error, what ...any) *APIError {
	var ae *APIError
	switch {
	case errors.As(err, &ae):
		if ae.Code == CodeUnavailable && ae.RetryAfter == 0 {
			cp := *ae
			cp.RetryAfter = unavailableRetryAfter
			return &cp
		}
		return ae
	case progress.IsUnavailable(err):
		s.logger.Warn("redis unavailable", append(what, "err", err)...)
		return &APIError{Code: CodeUnavailable, Message: "temporarily unavailable (" + progress.Cause(err) + "); retry shortly",
			RetryAfter: unavailableRetryAfter}
	}
	s.logger.Error("request failed", append(what, "err", err)...)
	return apiErr(CodeInternal, "internal error")
}

// writeError answers with err as the protocol's error body (see
// toAPIError), with Retry-After when the error has one.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae := s.toAPIError(err, "method", r.Method, "path", r.URL.Path)
	if ae.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(ae.RetryAfter))
	}
	body := wire.NewErrorBody(ae.Code, ae.Message)
	body.Error.Field, body.Error.Job = ae.Field, ae.Job
	writeJSON(w, ae.Status(), body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v) // the client may be gone; nothing left to tell it
}

// rateLimited is the error of a request refused by a per-user limit that
// may go again after wait: 429 rate_limited, Retry-After in whole seconds.
func rateLimited(wait time.Duration, msg string) *APIError {
	return &APIError{Code: CodeRateLimited, Message: msg, RetryAfter: int(math.Ceil(wait.Seconds()))}
}
