package web

import (
	_ "embed"
	"net/http"
)

// openAPIDoc is the OpenAPI 3.1 description of every route the router
// serves. openapi_test.go keeps it honest: a route missing from it fails
// the build's tests, and every answer the test suite gets is validated
// against it.
//
//go:embed openapi.json
var openAPIDoc []byte

// handleOpenAPI is GET /api/openapi.json.
func (s *Server) handleOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(openAPIDoc)
}
