package web

import (
	"embed"
	"io/fs"
	"net/http"
)

// assets is the front-end, embedded so the binary serves it with no build
// step and no network.
//
//go:embed static
var assets embed.FS

func staticHandler() http.Handler {
	sub, err := fs.Sub(assets, "static")
	if err != nil {
		panic(err) // the embed directive guarantees the directory
	}
	return http.StripPrefix("/static/", http.FileServerFS(sub))
}

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeFileFS(w, r, assets, "static/index.html")
}
