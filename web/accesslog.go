package web

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5/middleware"
	"github.com/gorilla/websocket"
)

// requestIDHeader carries a request's id both ways: a proxy in front may
// set it (so its logs and ours join up), and every answer echoes it.
const requestIDHeader = "X-Request-Id"

type requestIDKey struct{}

// requestIDOf returns the id the access log gave r ("" outside it).
func requestIDOf(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// validRequestID accepts an incoming id only if it is short and plain, so a
// client cannot inject line breaks or megabytes into the log.
func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == ':':
		default:
			return false
		}
	}
	return true
}

// accessLog gives each request an id (the X-Request-Id header, kept from
// the client when it is plain, else a new one), echoes it in the answer,
// and logs one line per request at info level once it is answered. Only
// the path is logged, never the query string, cookies or headers, so no
// credential reaches the log. A socket's line is written once it is
// upgraded (status 101; the duration is the handshake's): the socket lives
// on in a goroutine of its own and logs its open and close, with its
// lifetime.
func (s *Server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(requestIDHeader)
		if !validRequestID(id) {
			id = newID()
		}
		w.Header().Set(requestIDHeader, id)
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id))
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		start := time.Now()
		defer func() {
			status := ww.Status()
			switch {
			case status == 0 && websocket.IsWebSocketUpgrade(r):
				status = http.StatusSwitchingProtocols // written on the hijacked connection
			case status == 0:
				status = http.StatusOK // the handler wrote nothing: net/http answers 200
			}
			s.logger.LogAttrs(r.Context(), slog.LevelInfo, "request",
				slog.String("request_id", id),
				slog.String("method", r.Method),
				slog.String("path", r.URL.Path),
				slog.Int("status", status),
				slog.Int("bytes", ww.BytesWritten()),
				slog.Duration("duration", time.Since(start)),
				slog.String("ip", clientIPOf(r.Context())),
			)
		}()
		next.ServeHTTP(ww, r)
	})
}
