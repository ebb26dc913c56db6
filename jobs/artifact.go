package jobs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

func artifactPath(dir, jobID string) string {
	return filepath.Join(dir, jobID+".csv")
}

func defaultArtifactDir() string {
	return filepath.Join(os.TempDir(), "taskstream-artifacts")
}

// pruneArtifacts removes artifacts (and temp files left by a crash)
// last written before cutoff: their jobs are past retention, so nothing
// links to them any more.
func pruneArtifacts(dir string, cutoff time.Time) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		info, err := e.Info()
		if err != nil || !info.ModTime().Before(cutoff) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
