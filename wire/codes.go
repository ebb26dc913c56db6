package wire

// Error codes, in HTTP error bodies ({"error":{"code","message"}}) and in
// socket error frames alike. HTTPStatus maps each to its status.
const (
	CodeBadRequest       = "bad_request"            // 400
	CodeUnauthenticated  = "unauthenticated"        // 401
	CodeForbidden        = "forbidden"              // 403
	CodeNotFound         = "not_found"              // 404
	CodeMethodNotAllowed = "method_not_allowed"     // 405
	CodeConflict         = "conflict"               // 409
	CodeTooLarge         = "too_large"              // 413 (431 for headers)
	CodeUnsupportedMedia = "unsupported_media_type" // 415
	// CodeIdempotencyKeyReused: an Idempotency-Key sent again with a
	// different request than the one that first used it.
	CodeIdempotencyKeyReused = "idempotency_key_reused" // 422
	CodeRateLimited          = "rate_limited"           // 429, with Retry-After
	CodeInternal             = "internal"               // 500
	CodeUnavailable          = "unavailable"            // 503, with Retry-After
)

var statusOf = map[string]int{
	CodeBadRequest:           400,
	CodeUnauthenticated:      401,
	CodeForbidden:            403,
	CodeNotFound:             404,
	CodeMethodNotAllowed:     405,
	CodeConflict:             409,
	CodeTooLarge:             413,
	CodeUnsupportedMedia:     415,
	CodeIdempotencyKeyReused: 422,
	CodeRateLimited:          429,
	CodeInternal:             500,
	CodeUnavailable:          503,
}

// HTTPStatus returns the HTTP status of an error code; 500 for a code it
// does not know.
func HTTPStatus(code string) int {
	if s, ok := statusOf[code]; ok {
		return s
	}
	return 500
}

// Close codes of the socket.
const (
	CloseNormal    = 1000 // normal closure
	CloseGoingAway = 1001 // the server restarts: reconnect (anywhere) and resume
	ClosePolicy    = 1008 // foreign Origin, signed out, token revoked, too many sockets
	CloseTooBig    = 1009 // a client frame over the size limit
	CloseTryAgain  = 1013 // too slow a reader, or Redis unavailable: reconnect with backoff and resume
)

// Resumable reports whether a socket closed with code should reconnect and
// resume from its last seq: every close but policy and size problems.
func Resumable(code int) bool { return code != ClosePolicy && code != CloseTooBig }
