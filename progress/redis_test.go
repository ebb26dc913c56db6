package progress

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"taskstream/progress/progresstest"
)

// OpenRedis takes the URL forms REDIS_URL documents, including a unix
// socket, and refuses what it cannot use with an error that hides the
// password.
func TestOpenRedis(t *testing.T) {
	srv := progresstest.Real(t)
	sock := filepath.Join(t.TempDir(), "redis.sock")
	cmd := exec.Command("redis-server", "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	ok := []struct{ name, url, mode string }{
		{"tcp", srv.URL(), ""},
		{"tcp with db", srv.URL() + "/2", ModeSingle},
		{"unix socket", "unix://" + sock, ModeSingle},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				rdb, e := OpenRedis(context.Background(), tc.url, tc.mode)
				if err = e; err == nil {
					_ = rdb.Close()
					return
				}
			}
			t.Fatalf("OpenRedis(%q): %v", tc.url, err)
		})
	}
	bad := []struct{ name, url, mode string }{
		{"not a url", "localhost:6379", ""},
		{"unknown mode", srv.URL(), "galaxy"},
		{"nobody there", "redis://:s3cret@127.0.0.1:1", ""},
		{"malformed with a password", "redis://user:s3cret@host:port", ""},
		{"malformed sentinel with a password", "redis://user:s3cret@host:port", ModeSentinel},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := OpenRedis(context.Background(), tc.url, tc.mode)
			if err == nil {
				t.Fatalf("OpenRedis(%q, %q) succeeded", tc.url, tc.mode)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("the error shows the password: %v", err)
			}
		})
	}
}
