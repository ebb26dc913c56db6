package web

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
)

// Error codes of PROTOCOL.md, used in HTTP error bodies and socket error
// frames alike.
const (
	CodeBadRequest       = "bad_request"
	CodeUnauthenticated  = "unauthenticated"
	CodeForbidden        = "forbidden"
	CodeNotFound         = "not_found"
	CodeConflict         = "conflict"
	CodeTooLarge         = "too_large"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeRateLimited      = "rate_limited"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
	CodeMethodNotAllowed = "method_not_allowed"
)

var statusOf = map[string]int{
	CodeBadRequest:       http.StatusBadRequest,
	CodeUnauthenticated:  http.StatusUnauthorized,
	CodeForbidden:        http.StatusForbidden,
	CodeNotFound:         http.StatusNotFound,
	CodeConflict:         http.StatusConflict,
	CodeTooLarge:         http.StatusRequestEntityTooLarge,
	CodeUnsupportedMedia: http.StatusUnsupportedMediaType,
	CodeRateLimited:      http.StatusTooManyRequests,
	CodeUnavailable:      http.StatusServiceUnavailable,
	CodeInternal:         http.StatusInternalServerError,
	CodeMethodNotAllowed: http.StatusMethodNotAllowed,
}

// APIError is a failure the client can act on: a protocol code and a
// message safe to show.
type APIError struct {
	Code       string
	Message    string
	RetryAfter int // seconds, for rate_limited
}

func (e *APIError) Error() string { return e.Code + ": " + e.Message }

// Status is the HTTP status of the error's code.
func (e *APIError) Status() int {
	if s, ok := statusOf[e.Code]; ok {
		return s
	}
	return http.StatusInternalServerError
}

func apiErr(code, msg string) *APIError { return &APIError{Code: code, Message: msg} }

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// writeError answers with err as the protocol's error body. Errors that are
// not *APIError are internal: logged with the request, shown as a generic
// message so no internals leak.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *APIError
	if !errors.As(err, &ae) {
		s.logger.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = apiErr(CodeInternal, "internal error")
	}
	if ae.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(ae.RetryAfter))
	}
	var body errorBody
	body.Error.Code, body.Error.Message = ae.Code, ae.Message
	writeJSON(w, ae.Status(), body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v) // the client may be gone; nothing left to tell it
}
