package app

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
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
			if !c.RunWorker || c.LogTTL != 90*time.Minute || c.Concurrency != 3 || c.ReportDelay != DefaultProgressDelay {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "send ring by default, off by SEND_RING", check: func(t *testing.T, c APIConfig) {
			if !c.SendRing {
				t.Fatal("SendRing off by default")
			}
		}},
		{name: "no send ring", env: map[string]string{"SEND_RING": "false"}, check: func(t *testing.T, c APIConfig) {
			if c.SendRing {
				t.Fatal("SEND_RING=false left SendRing on")
			}
		}},
		{name: "progress at once", env: map[string]string{"PROGRESS_DELAY": "0s"}, check: func(t *testing.T, c APIConfig) {
			if c.ReportDelay != 0 {
				t.Fatalf("PROGRESS_DELAY 0s: %v", c.ReportDelay)
			}
		}},
		{name: "malformed duration", env: map[string]string{"HISTORY_TTL": "ten"}, wantErr: "HISTORY_TTL"},
		{name: "malformed integer", env: map[string]string{"HISTORY": "many"}, wantErr: "HISTORY"},
		{name: "short secret", env: map[string]string{"SESSION_SECRET": "short"}, wantErr: "SESSION_SECRET"},
		{name: "bad smtp tls", env: map[string]string{"SMTP_TLS": "maybe"}, wantErr: "SMTP_TLS"},
		{name: "unknown flag", args: []string{"-nope"}, wantErr: "nope"},
		{name: "bad trusted proxy", env: map[string]string{"TRUSTED_PROXIES": "10.0.0.1"}, wantErr: "TRUSTED_PROXIES"},
		{name: "bool spelled true", env: map[string]string{"RUN_WORKER": "true", "SECURE_COOKIES": "0"}, check: func(t *testing.T, c APIConfig) {
			if !c.RunWorker || c.SecureCookies {
				t.Fatalf("%+v", c)
			}
		}},
		{name: "limits", env: map[string]string{"BODY_TIMEOUT": "5s", "MAX_SOCKETS_PER_IP": "3"}, args: []string{"-max-conns", "7"}, check: func(t *testing.T, c APIConfig) {
			if c.Limits.BodyTimeout != 5*time.Second || c.Limits.MaxSocketsPerIP != 3 || c.Limits.MaxConns != 7 || c.Limits.IdleTimeout != 75*time.Second {
				t.Fatalf("%+v", c.Limits)
			}
		}},
		{name: "dashboard defaults", check: func(t *testing.T, c APIConfig) {
			if c.DashboardInterval != time.Second || c.Dashboard.Window != 15*time.Minute || c.Dashboard.LeaderTTL != 5*time.Second ||
				c.Dashboard.Failures != 20 || len(c.AdminEmails) != 0 {
				t.Fatalf("%+v %+v", c.Dashboard, c.DashboardInterval)
			}
		}},
		{name: "dashboard settings", env: map[string]string{"ADMIN_EMAILS": "ops@example.com, b@example.com", "DASHBOARD_INTERVAL": "2s", "DASHBOARD_WINDOW": "1h"},
			args: []string{"-admin-email", "c@example.com", "-dashboard-leader-ttl", "10s", "-dashboard-failures", "5"}, check: func(t *testing.T, c APIConfig) {
				if !reflect.DeepEqual(c.AdminEmails, []string{"ops@example.com", "b@example.com", "c@example.com"}) || c.DashboardInterval != 2*time.Second ||
					c.Dashboard.Window != time.Hour || c.Dashboard.LeaderTTL != 10*time.Second || c.Dashboard.Failures != 5 {
					t.Fatalf("%+v %+v", c.Dashboard, c.DashboardInterval)
				}
			}},
		{name: "hub and owner cache defaults", check: func(t *testing.T, c APIConfig) {
			hub := c.hubConfig()
			if c.SubscribeTimeout != 5*time.Second || hub.AnswerTimeout != 5*time.Second || c.HistoryReadBatch != 64 || hub.ReadBatch != 64 ||
				c.OwnerCache != 16384 || c.ownerCache() != 16384 {
				t.Fatalf("subscribe timeout %v, read batch %d, owner cache %d (jobs %d); hub %+v", c.SubscribeTimeout, c.HistoryReadBatch, c.OwnerCache, c.ownerCache(), hub)
			}
		}},
		{name: "hub and owner cache settings", env: map[string]string{"SUBSCRIBE_TIMEOUT": "2s", "HISTORY_READ_BATCH": "1"}, args: []string{"-owner-cache", "100"},
			check: func(t *testing.T, c APIConfig) {
				if hub := c.hubConfig(); hub.AnswerTimeout != 2*time.Second || hub.ReadBatch != 1 || c.ownerCache() != 100 {
					t.Fatalf("hub %+v, owner cache %d", hub, c.ownerCache())
				}
			}},
		// jobs.Config's 0 is its default: OWNER_CACHE=0 must reach it as none.
		{name: "no owner cache", env: map[string]string{"OWNER_CACHE": "0"}, check: func(t *testing.T, c APIConfig) {
			if got := c.ownerCache(); got >= 0 {
				t.Fatalf("OWNER_CACHE=0 gives the job service %d, want a negative (none)", got)
			}
		}},
		{name: "trusted proxies", env: map[string]string{"TRUSTED_PROXIES": "10.0.0.0/8,fd00::/8"}, check: func(t *testing.T, c APIConfig) {
			if len(c.TrustedProxies) != 2 || c.TrustedProxies[0].String() != "10.0.0.0/8" {
				t.Fatalf("%v", c.TrustedProxies)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t, tc.env)
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

// settings lists every environment variable the processes read.
var settings = []string{"PORT", "ADDR", "REDIS_URL", "REDIS_MODE", "KEY_PREFIX", "HISTORY", "CHAT_HISTORY", "HISTORY_TTL",
	"PROGRESS_RATE", "PROGRESS_DELAY", "ARTIFACT_DIR", "JOB_RETENTION", "LOG_LEVEL", "LOG_FORMAT", "WORKER_CONCURRENCY", "WORKER_QUEUES",
	"WORKER_SHUTDOWN_TIMEOUT", "WORKER_POLL_INTERVAL", "RUN_WORKER", "SEND_QUEUE", "SEND_RING", "SESSION_SECRET", "SECURE_COOKIES",
	"ADMIN_TOKENS", "JOB_RATE", "JOB_BURST", "CHAT_RATE", "CHAT_BURST", "PRESENCE_TTL", "PRESENCE_GRACE", "SMTP_HOST", "SMTP_PORT", "SMTP_USER",
	"SMTP_PASSWORD", "SMTP_FROM", "SMTP_TLS", "TRUSTED_PROXIES", "ALLOWED_ORIGINS", "READ_HEADER_TIMEOUT", "BODY_TIMEOUT",
	"IDLE_TIMEOUT", "MAX_HEADER_BYTES", "MAX_CONNS", "MAX_CONNS_PER_IP", "MAX_SOCKETS_PER_IP", "QUEUE_METRICS_REFRESH", "METRICS_ADDR",
	"SCHEDULE_FILE", "SCHEDULE_CATCHUP", "DASHBOARD_INTERVAL", "ADMIN_EMAILS", "DASHBOARD_WINDOW", "DASHBOARD_LEADER_TTL",
	"DASHBOARD_FAILURES", "SUBSCRIBE_TIMEOUT", "HISTORY_READ_BATCH", "OWNER_CACHE", "DEBUG_ADDR", "JOB_HEARTBEAT",
	"JOB_LOST_AFTER", "RECONCILE_INTERVAL", "WORKER_DELAYED_POLL_INTERVAL"}

// clearEnv unsets every setting, then sets env, for the test's duration.
func clearEnv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, k := range settings {
		t.Setenv(k, "")
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	unsetEmpty(t)
}

// Every malformed setting, from the environment or a flag, is refused at
// parse time with one line that names it.
func TestParseRefusesBadSettings(t *testing.T) {
	cases := []struct {
		env     map[string]string
		args    []string
		mention string
	}{
		{env: map[string]string{"PORT": "abc"}, mention: "PORT"},
		{env: map[string]string{"PORT": "70000"}, mention: "PORT"},
		{env: map[string]string{"PORT": "-1"}, mention: "PORT"},
		{args: []string{"-addr", "127.0.0.1:abc"}, mention: "ADDR"},
		{env: map[string]string{"ADDR": "localhost"}, mention: "ADDR"},
		{env: map[string]string{"REDIS_MODE": "bogus"}, mention: "REDIS_MODE"},
		{env: map[string]string{"REDIS_URL": "http://x:6379"}, mention: "REDIS_URL"},
		{env: map[string]string{"REDIS_URL": "redis://user:hunter2@h:x/0"}, mention: "REDIS_URL"},
		{env: map[string]string{"REDIS_URL": "redis://h:6379", "REDIS_MODE": "sentinel"}, mention: "REDIS_URL"},
		{env: map[string]string{"KEY_PREFIX": " "}, mention: "KEY_PREFIX"},
		{env: map[string]string{"HISTORY": "-5"}, mention: "HISTORY"},
		{env: map[string]string{"HISTORY": "0"}, mention: "HISTORY"},
		{env: map[string]string{"HISTORY": "many"}, mention: "HISTORY"},
		{args: []string{"-chat-history", "-1"}, mention: "CHAT_HISTORY"},
		{env: map[string]string{"HISTORY_TTL": "0s"}, mention: "HISTORY_TTL"},
		{env: map[string]string{"HISTORY_TTL": "-1h"}, mention: "HISTORY_TTL"},
		{env: map[string]string{"PROGRESS_RATE": "0"}, mention: "PROGRESS_RATE"},
		{env: map[string]string{"PROGRESS_DELAY": "-1ms"}, mention: "PROGRESS_DELAY"},
		{env: map[string]string{"JOB_RETENTION": "0"}, mention: "JOB_RETENTION"},
		{env: map[string]string{"LOG_LEVEL": "loud"}, mention: "LOG_LEVEL"},
		{env: map[string]string{"LOG_FORMAT": "xml"}, mention: "LOG_FORMAT"},
		{env: map[string]string{"WORKER_CONCURRENCY": "-3"}, mention: "WORKER_CONCURRENCY"},
		{args: []string{"-concurrency", "0"}, mention: "WORKER_CONCURRENCY"},
		{env: map[string]string{"WORKER_QUEUES": "a=0"}, mention: "WORKER_QUEUES"},
		{env: map[string]string{"WORKER_SHUTDOWN_TIMEOUT": "0s"}, mention: "WORKER_SHUTDOWN_TIMEOUT"},
		{env: map[string]string{"WORKER_POLL_INTERVAL": "-1s"}, mention: "WORKER_POLL_INTERVAL"},
		{env: map[string]string{"QUEUE_METRICS_REFRESH": "0s"}, mention: "QUEUE_METRICS_REFRESH"},
		{args: []string{"-queue-metrics-refresh", "often"}, mention: "-queue-metrics-refresh"},
		{env: map[string]string{"RUN_WORKER": "yes please"}, mention: "RUN_WORKER"},
		{env: map[string]string{"SECURE_COOKIES": "maybe"}, mention: "SECURE_COOKIES"},
		{env: map[string]string{"SEND_QUEUE": "0"}, mention: "SEND_QUEUE"},
		{env: map[string]string{"JOB_RATE": "-1"}, mention: "JOB_RATE"},
		{env: map[string]string{"JOB_RATE": "NaN"}, mention: "JOB_RATE"},
		{env: map[string]string{"JOB_RATE": "+Inf"}, mention: "JOB_RATE"},
		{args: []string{"-job-burst", "-2"}, mention: "JOB_BURST"},
		{env: map[string]string{"CHAT_RATE": "0"}, mention: "CHAT_RATE"},
		{env: map[string]string{"CHAT_BURST": "-1"}, mention: "CHAT_BURST"},
		{env: map[string]string{"PRESENCE_TTL": "0s"}, mention: "PRESENCE_TTL"},
		{env: map[string]string{"PRESENCE_GRACE": "-1s"}, mention: "PRESENCE_GRACE"},
		{env: map[string]string{"SMTP_PORT": "0"}, mention: "SMTP_PORT"},
		{env: map[string]string{"SMTP_FROM": "not an address"}, mention: "SMTP_FROM"},
		{env: map[string]string{"SMTP_TLS": "maybe"}, mention: "SMTP_TLS"},
		{env: map[string]string{"ALLOWED_ORIGINS": "app.example.com"}, mention: "ALLOWED_ORIGINS"},
		{args: []string{"-allowed-origin", "https://a.example/path"}, mention: "ALLOWED_ORIGINS"},
		{env: map[string]string{"TRUSTED_PROXIES": "10.0.0.1"}, mention: "TRUSTED_PROXIES"},
		{env: map[string]string{"SESSION_SECRET": "short"}, mention: "SESSION_SECRET"},
		{env: map[string]string{"READ_HEADER_TIMEOUT": "0s"}, mention: "READ_HEADER_TIMEOUT"},
		{env: map[string]string{"BODY_TIMEOUT": "-5s"}, mention: "BODY_TIMEOUT"},
		{env: map[string]string{"IDLE_TIMEOUT": "soon"}, mention: "IDLE_TIMEOUT"},
		{env: map[string]string{"MAX_HEADER_BYTES": "10"}, mention: "MAX_HEADER_BYTES"},
		{env: map[string]string{"MAX_CONNS": "0"}, mention: "MAX_CONNS"},
		{env: map[string]string{"MAX_CONNS_PER_IP": "-1"}, mention: "MAX_CONNS_PER_IP"},
		{args: []string{"-max-sockets-per-ip", "0"}, mention: "MAX_SOCKETS_PER_IP"},
		{env: map[string]string{"WORKER_QUEUES": "default:high=6"}, mention: "WORKER_QUEUES"},
		{env: map[string]string{"SCHEDULE_FILE": "/nonexistent/schedule.json"}, mention: "SCHEDULE_FILE"},
		{env: map[string]string{"SCHEDULE_CATCHUP": "0s"}, mention: "SCHEDULE_CATCHUP"},
		{args: []string{"-history", "x"}, mention: "-history"},
		{env: map[string]string{"DASHBOARD_INTERVAL": "0s"}, mention: "DASHBOARD_INTERVAL"},
		{env: map[string]string{"ADMIN_EMAILS": "ops"}, mention: "ADMIN_EMAILS"},
		{args: []string{"-admin-email", "not an email"}, mention: "ADMIN_EMAILS"},
		{env: map[string]string{"DASHBOARD_WINDOW": "-1m"}, mention: "DASHBOARD_WINDOW"},
		{env: map[string]string{"DASHBOARD_LEADER_TTL": "0s"}, mention: "DASHBOARD_LEADER_TTL"},
		{args: []string{"-dashboard-failures", "0"}, mention: "DASHBOARD_FAILURES"},
		{env: map[string]string{"SUBSCRIBE_TIMEOUT": "0s"}, mention: "SUBSCRIBE_TIMEOUT"},
		{env: map[string]string{"SUBSCRIBE_TIMEOUT": "-1s"}, mention: "SUBSCRIBE_TIMEOUT"},
		{env: map[string]string{"SUBSCRIBE_TIMEOUT": "5"}, mention: "SUBSCRIBE_TIMEOUT"},
		{env: map[string]string{"HISTORY_READ_BATCH": "0"}, mention: "HISTORY_READ_BATCH"},
		{args: []string{"-history-read-batch", "-1"}, mention: "HISTORY_READ_BATCH"},
		{env: map[string]string{"HISTORY_READ_BATCH": "many"}, mention: "HISTORY_READ_BATCH"},
		{env: map[string]string{"OWNER_CACHE": "-1"}, mention: "OWNER_CACHE"},
		{env: map[string]string{"OWNER_CACHE": "1e4"}, mention: "OWNER_CACHE"},
		{env: map[string]string{"OWNER_CACHE": "4194305"}, mention: "OWNER_CACHE"},
		{args: []string{"-nope"}, mention: "nope"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(tc.env, tc.args), func(t *testing.T) {
			clearEnv(t, tc.env)
			_, err := ParseAPI(tc.args)
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err %v, want one naming %s", err, tc.mention)
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || strings.Contains(msg, "hunter2") {
				t.Fatalf("error %q: want one line without secrets", msg)
			}
		})
	}
}

// -h prints every flag with its environment variable, and every one of
// them is in settings, so clearEnv keeps a developer's environment out of
// these tests.
func TestHelpNamesEnvironmentVariables(t *testing.T) {
	envName := regexp.MustCompile(`\(env ([A-Z0-9_]+)\)`)
	clearEnv(t, nil)
	for name, parse := range map[string]func([]string) error{
		"api":    func(a []string) error { _, err := ParseAPI(a); return err },
		"worker": func(a []string) error { _, err := ParseWorker(a); return err },
	} {
		err := parse([]string{"-h"})
		var help *HelpError
		if !errors.As(err, &help) || !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("%s -h: %v", name, err)
		}
		flags := 0
		for _, line := range strings.Split(help.Usage, "\n") {
			if trimmed := strings.TrimSpace(line); strings.HasPrefix(trimmed, "-") {
				flags++
				continue
			}
			if strings.HasPrefix(line, "    \t") && !strings.Contains(line, "(env ") {
				t.Errorf("%s -h: %q does not name its environment variable", name, line)
			}
			for _, m := range envName.FindAllStringSubmatch(line, -1) {
				if !slices.Contains(settings, m[1]) {
					t.Errorf("%s -h names %s, which settings (cleared by clearEnv) lacks", name, m[1])
				}
			}
		}
		if flags < 10 {
			t.Fatalf("%s -h lists %d flags:\n%s", name, flags, help.Usage)
		}
	}
}

func TestParseWorker(t *testing.T) {
	clearEnv(t, nil)
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
	if c.MetricsAddr != "" || c.QueueMetricsRefresh != 5*time.Second {
		t.Fatalf("metrics defaults: addr %q (want none), refresh %v (want 5s)", c.MetricsAddr, c.QueueMetricsRefresh)
	}
	t.Setenv("METRICS_ADDR", ":9100")
	if c, err := ParseWorker([]string{"-redis-url", "redis://x:6379"}); err != nil || c.MetricsAddr != ":9100" {
		t.Fatalf("METRICS_ADDR=:9100: addr %q, err %v", c.MetricsAddr, err)
	}
	for _, bad := range []string{"localhost", ":x", "1.2.3.4:70000"} {
		t.Setenv("METRICS_ADDR", bad)
		if _, err := ParseWorker([]string{"-redis-url", "redis://x:6379"}); err == nil || !strings.Contains(err.Error(), "METRICS_ADDR") {
			t.Errorf("METRICS_ADDR=%q: err %v, want one naming METRICS_ADDR", bad, err)
		}
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

// SCHEDULE_FILE is read and checked at start-up: a bad entry is one line
// naming the setting, the entry and the fault; a good file's entries are
// in the configuration.
func TestScheduleFileSetting(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, file, mention string
	}{
		{"good", `{"schedules":[{"name":"nightly","spec":"0 3 * * *","type":"report","params":{"rows":100}}]}`, ""},
		{"unknown type", `{"schedules":[{"name":"a","spec":"@daily","type":"nope"}]}`, "unknown type"},
		{"bad spec", `{"schedules":[{"name":"a","spec":"61 * * * *","type":"steps","params":{"steps":1}}]}`, "spec"},
		{"bad params", `{"schedules":[{"name":"a","spec":"@daily","type":"steps","params":{}}]}`, "params.steps"},
		{"bad option", `{"schedules":[{"name":"a","spec":"@daily","type":"steps","params":{"steps":1},"priority":"max"}]}`, "priority"},
		{"not JSON", "schedules:\n  - name: a\n", "JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".json")
			if err := os.WriteFile(path, []byte(c.file), 0o600); err != nil {
				t.Fatal(err)
			}
			clearEnv(t, map[string]string{"SCHEDULE_FILE": path})
			cfg, err := ParseAPI(nil)
			if c.mention == "" {
				if err != nil || len(cfg.Schedule) != 1 || cfg.Schedule[0].Name != "nightly" || cfg.ScheduleCatchUp != time.Minute {
					t.Fatalf("err %v, schedule %+v", err, cfg.Schedule)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "SCHEDULE_FILE") || !strings.Contains(err.Error(), c.mention) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err %v, want one line naming SCHEDULE_FILE and %q", err, c.mention)
			}
		})
	}
}
