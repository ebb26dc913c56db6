package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"taskstream/progress/progresstest"
	"taskstream/web/auth/authtest"
	"taskstream/wire"
)

// A whole session of a signed-in user and a program, run against the api
// with LOG_FORMAT=json: every line of its log is JSON (go-redis and the
// standard library log through the same handler), every request has an
// access line with the id echoed in X-Request-Id, sockets are logged on
// open and close with their close code, and no secret used on the way (the
// session cookie, the sign-in code, the bearer and admin tokens, the Redis
// and SMTP passwords) appears anywhere in the log.
func TestJSONLogHasNoPlainTextAndNoSecrets(t *testing.T) {
	t.Parallel()
	const (
		redisPassword = "redis-pw-7f3a9c"
		smtpPassword  = "smtp-pw-51be02"
		adminToken    = "admin-token-0c8d4e2b9a"
	)
	rds := progresstest.Real(t)
	if err := rds.Client(t).ConfigSet(context.Background(), "requirepass", redisPassword).Err(); err != nil {
		t.Fatal(err)
	}
	mail := authtest.NewSMTPServer(t)
	addr := freeAddr(t)
	base := "http://" + addr
	api := start(t, "api", binDir+"/api",
		"ADDR="+addr, "LOG_FORMAT=json", "LOG_LEVEL=debug", "RUN_WORKER=1",
		"REDIS_URL=redis://:"+redisPassword+"@"+rds.Addr, "ADMIN_TOKENS="+adminToken,
		"SMTP_HOST="+mail.Host, "SMTP_PORT="+strconv.Itoa(mail.Port), "SMTP_TLS=none", "SMTP_PASSWORD="+smtpPassword)
	waitHealthy(t, base, api)

	b := browser()
	post := func(c *http.Client, path, body string, header ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		raw, _ := io.ReadAll(res.Body)
		return res, string(raw)
	}
	if res, body := post(b, "/api/auth/code", `{"email":"ops@example.com"}`); res.StatusCode != http.StatusAccepted {
		t.Fatalf("request code: %d %s", res.StatusCode, body)
	}
	code := authtest.Code(t, mail.Next(t))
	if res, body := post(b, "/api/auth/login", `{"email":"ops@example.com","code":"`+code+`"}`); res.StatusCode != http.StatusOK {
		t.Fatalf("login: %d %s", res.StatusCode, body)
	}
	res, body := post(b, "/api/tokens", `{}`)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("create token: %d %s", res.StatusCode, body)
	}
	var tok struct{ Token string }
	_ = json.Unmarshal([]byte(body), &tok)
	res, body = post(http.DefaultClient, "/api/jobs", `{"type":"steps","params":{"steps":3,"interval_ms":10}}`,
		"Authorization", "Bearer "+tok.Token, "X-Request-Id", "trace-42")
	if res.StatusCode != http.StatusAccepted || res.Header.Get("X-Request-Id") != "trace-42" {
		t.Fatalf("submit with token: %d, X-Request-Id %q: %s", res.StatusCode, res.Header.Get("X-Request-Id"), body)
	}
	var job struct{ ID string }
	_ = json.Unmarshal([]byte(body), &job)
	if res, body := post(http.DefaultClient, "/api/notify", `{"user":"nobody","title":"t"}`, "Authorization", "Bearer "+adminToken); res.StatusCode >= 500 {
		t.Fatalf("notify: %d %s", res.StatusCode, body)
	}
	// The watch ends after the job's last event with a close handshake
	// (1000), which the socket's close line records.
	watchJob(t, b, base, job.ID, time.Minute, nil)
	// Redis goes away under the api: go-redis's own complaints must be
	// JSON lines too.
	rds.Stop()
	if res, err := b.Get(base + "/api/jobs"); err == nil {
		res.Body.Close()
	}
	api.stop()

	secrets := map[string]string{
		"sign-in code": code, "bearer token": tok.Token, "admin token": adminToken,
		"redis password": redisPassword, "smtp password": smtpPassword,
	}
	u, _ := http.NewRequest(http.MethodGet, base, nil)
	for _, c := range b.Jar.Cookies(u.URL) {
		secrets["cookie "+c.Name] = c.Value
	}
	var sawAccess, sawOpen, sawClose bool
	for _, line := range strings.Split(strings.TrimSpace(api.output()), "\n") {
		for what, secret := range secrets {
			if secret != "" && strings.Contains(line, secret) {
				t.Errorf("the log shows the %s: %s", what, line)
			}
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("a line of the JSON log is not JSON: %q", line)
			continue
		}
		switch rec["msg"] {
		case "request":
			if rec["request_id"] == "trace-42" && rec["path"] == "/api/jobs" && rec["status"] == float64(http.StatusAccepted) {
				sawAccess = true
			}
		case "socket opened":
			sawOpen = true
		case "socket closed":
			if rec["client_code"] == float64(wire.CloseNormal) {
				sawClose = true
			}
		}
	}
	if !sawAccess || !sawOpen || !sawClose {
		t.Errorf("access line for the submit: %v, socket opened: %v, socket closed with the client's 1000: %v", sawAccess, sawOpen, sawClose)
	}
}
