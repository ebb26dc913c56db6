package inproc

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
)

// On a miniredis of its own the service answers /healthz, takes a worker
// and closes (twice, harmlessly).
func TestStartMiniredis(t *testing.T) {
	s, err := Start(context.Background(), Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Mini || s.RedisURL == "" || s.URL == "" {
		t.Fatalf("Mini %v, RedisURL %q, URL %q", s.Mini, s.RedisURL, s.URL)
	}
	res, err := http.Get(s.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz: %s", res.Status)
	}
	s.StartWorker()
	s.Close()
}
