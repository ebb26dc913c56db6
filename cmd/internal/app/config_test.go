package app

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseAPI(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		check   func(t *testing.T, c APIConfig)
		wantErr string
	}{
		{name: "defaults", check: func(t *testing.T, c APIConfig) {
			if c.Addr != ":8080" || c.RedisURL != "" || c.RunWorker || c.LogMaxLen != 1000 || c.ChatHistory != 500 ||
				c.LogTTL != 24*time.Hour || c.Concurrency != 10 || c.SMTP.TLS != "starttls" || c.SMTP.Port != 587 {
				t.Fatalf("defaults: %+v", c)
			}
		}},
		{name: "PORT", env: map[string]string{"PORT": "5000"}, check: func(t *testing.T, c APIConfig) {
			if c.Addr != ":5000" {
				t.Fatalf("addr %q", c.Addr)
			}
		}},
		{name: "ADDR wins over PORT", env: map[string]string{"PORT": "5000", "ADDR": "127.0.0.1:9"}, check: func(t *testing.T, c APIConfig) {
			if c.Addr != "127.0.0.1:9" {
				t.Fatalf("addr %q", c.Addr)
			}
		}},
		{name: "flag wins over env", env: map[string]string{"ADDR": ":1"}, args: []string{"-addr", ":2"}, check: func(t *testing.T, c APIConfig) {
			if c.Addr != ":2" {
				t.Fatalf("addr %q", c.Addr)
			}
		}},
		{name: "lists", env: map[string]string{"ALLOWED_ORIGINS": "https://a.example, https://b.example", "ADMIN_TOKENS": "x,y"},
			args: []string{"-allowed-origin", "https://c.example"}, check: func(t *testing.T, c APIConfig) {
				want := []string{"https://a.example", "https://b.example", "https://c.example"}
				if !reflect.DeepEqual(c.AllowedOrigins, want) || !reflect.DeepEqual(c.AdminTokens, []string{"x", "y"}) {
					t.Fatalf("origins %v tokens %v", c.AllowedOrigins, c.AdminTokens)
				}
			}},
		{name: "worker and durations", env: map[string]string{"RUN_WORKER": "1", "HISTORY_TTL": "90m", "WORKER_CONCURRENCY": "3"}, check: func(t *testing.T, c APIConfig) {
			if !c.RunWorker || c.LogTTL != 90*time.Minute || c.Concurrency != 3 {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "malformed duration", env: map[string]string{"HISTORY_TTL": "ten"}, wantErr: "HISTORY_TTL"},
		{name: "malformed integer", env: map[string]string{"HISTORY": "many"}, wantErr: "HISTORY"},
		{name: "short secret", env: map[string]string{"SESSION_SECRET": "short"}, wantErr: "SESSION_SECRET"},
		{name: "bad smtp tls", env: map[string]string{"SMTP_TLS": "maybe"}, wantErr: "SMTP_TLS"},
		{name: "unknown flag", args: []string{"-nope"}, wantErr: "nope"},
		{name: "bad trusted proxy", env: map[string]string{"TRUSTED_PROXIES": "10.0.0.1"}, wantErr: "TRUSTED_PROXIES"},
		{name: "trusted proxies", env: map[string]string{"TRUSTED_PROXIES": "10.0.0.0/8,fd00::/8"}, check: func(t *testing.T, c APIConfig) {
			if len(c.TrustedProxies) != 2 || c.TrustedProxies[0].String() != "10.0.0.0/8" {
				t.Fatalf("%v", c.TrustedProxies)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{"PORT", "ADDR", "REDIS_URL", "ALLOWED_ORIGINS", "ADMIN_TOKENS", "RUN_WORKER", "HISTORY_TTL", "HISTORY",
				"WORKER_CONCURRENCY", "SESSION_SECRET", "SMTP_TLS", "TRUSTED_PROXIES"} {
				t.Setenv(k, "")
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			unsetEmpty(t)
			c, err := ParseAPI(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestParseWorker(t *testing.T) {
	t.Setenv("REDIS_URL", "")
	unsetEmpty(t)
	if _, err := ParseWorker(nil); err == nil || !strings.Contains(err.Error(), "REDIS_URL") {
		t.Fatalf("a worker without Redis: %v", err)
	}
	c, err := ParseWorker([]string{"-redis-url", "redis://x:6379", "-queues", "critical=6,default"})
	if err != nil {
		t.Fatal(err)
	}
	q, err := c.queues()
	if err != nil || !reflect.DeepEqual(q, map[string]int{"critical": 6, "default": 1}) {
		t.Fatalf("queues %v %v", q, err)
	}
	for _, bad := range []string{"=3", "a=0", "a=x"} {
		w := Worker{Queues: bad}
		if _, err := w.queues(); err == nil {
			t.Errorf("queues %q accepted", bad)
		}
	}
}

// unsetEmpty removes the variables a test set to "" (t.Setenv cannot
// unset, and "set but empty" counts as set); t.Setenv's cleanup restores
// the originals.
func unsetEmpty(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, v, _ := strings.Cut(kv, "="); v == "" {
			os.Unsetenv(k)
		}
	}
}
