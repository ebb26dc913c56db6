package jobs

import (
	"os"
	"path/filepath"
)

func artifactPath(dir, jobID string) string {
	return filepath.Join(dir, jobID+".csv")
}

func defaultArtifactDir() string {
	return filepath.Join(os.TempDir(), "taskstream-artifacts")
}
