package web

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

// assets is the front-end, embedded so the binary serves it with no build
// step and no network.
//
//go:embed static
var assets embed.FS

// staticHandler serves the embedded files under /static/. Anything else
// (a missing file, a directory) is the protocol's JSON 404, not
// http.FileServer's plain text.
func (s *Server) staticHandler() http.HandlerFunc {
	sub, err := fs.Sub(assets, "static")
	if err != nil {
		panic(err) // the embed directive guarantees the directory
	}
	return func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(path.Clean("/"+strings.TrimPrefix(r.URL.Path, "/static/")), "/")
		if st, err := fs.Stat(sub, name); err != nil || st.IsDir() {
			s.writeError(w, r, apiErr(CodeNotFound, "no such file: "+r.URL.Path))
			return
		}
		// The files are small: serve them whole. A Range the file cannot
		// satisfy would otherwise get http.ServeContent's plain-text 416.
		r.Header.Del("Range")
		// Embedded files carry no modification time, so a browser could
		// keep an old app.js beside a new index.html: always revalidate.
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeFileFS(w, r, sub, name)
	}
}

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeFileFS(w, r, assets, "static/index.html")
}

// handleJobPage serves the job page, /jobs/{id}, for any id: the page
// reads the job from the API and says so when it is unknown or someone
// else's, instead of the API's JSON error.
func (s *Server) handleJobPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeFileFS(w, r, assets, "static/job.html")
}
