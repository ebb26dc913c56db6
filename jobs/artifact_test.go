package jobs

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Artifacts older than the retention cutoff go; newer ones stay.
func TestPruneArtifacts(t *testing.T) {
	dir := t.TempDir()
	old, fresh := filepath.Join(dir, "old.csv"), filepath.Join(dir, "fresh.csv")
	for _, f := range []string{old, fresh} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	if err := pruneArtifacts(dir, time.Now().Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatalf("old artifact still there: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Fatalf("fresh artifact gone: %v", err)
	}
	if err := pruneArtifacts(filepath.Join(dir, "missing"), time.Now()); err != nil {
		t.Fatalf("a missing directory is nothing to prune: %v", err)
	}
}
