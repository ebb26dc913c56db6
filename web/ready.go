package web

import (
	"context"
	"net/http"
	"strings"
	"time"
)

// readyTimeout bounds the readiness check's dial and pool wait; the PING's
// reply is bounded by the Redis client's read timeout (1 s by default,
// progress.DefaultReadTimeout), so a probe is answered within about a
// second even when Redis accepts connections but does not answer.
const readyTimeout = time.Second

// handleReady is GET /readyz: 200 {"status":"ready"} when this replica can
// serve (Redis answers a PING and the hub's pub/sub connection is up), else
// 503 unavailable with the reason, so a load balancer sends traffic
// elsewhere. /healthz, by contrast, is liveness only and never looks at
// Redis: restarting an API process does not bring Redis back.
func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		s.writeError(w, r, apiErr(CodeUnavailable, "server is shutting down"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	if err := s.hub.Ready(ctx); err != nil {
		// The hub's errors are short and address-free: the reason is
		// what an operator reading the probe needs.
		msg := strings.TrimPrefix(err.Error(), "progress: ")
		s.writeError(w, r, apiErr(CodeUnavailable, msg))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
