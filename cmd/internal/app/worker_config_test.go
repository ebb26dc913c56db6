package app

import (
	"strings"
	"testing"
	"time"
)

// The lost-job settings come from flags and the environment, with the
// documented defaults, and settings that can not work are refused.
func TestWorkerLostJobSettings(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		want    [3]time.Duration // heartbeat, lost after, reconcile interval
		wantErr string
	}{
		{name: "defaults", want: [3]time.Duration{5 * time.Second, 15 * time.Second, 15 * time.Second}},
		{name: "env", env: map[string]string{"JOB_HEARTBEAT": "1s", "JOB_LOST_AFTER": "3s", "RECONCILE_INTERVAL": "1s"},
			want: [3]time.Duration{time.Second, 3 * time.Second, time.Second}},
		{name: "flags", args: []string{"-heartbeat", "2s", "-lost-after", "7s", "-reconcile-interval", "4s"},
			want: [3]time.Duration{2 * time.Second, 7 * time.Second, 4 * time.Second}},
		{name: "lost before a heartbeat", env: map[string]string{"JOB_HEARTBEAT": "5s", "JOB_LOST_AFTER": "5s"}, wantErr: "JOB_LOST_AFTER"},
		{name: "negative reconcile", env: map[string]string{"RECONCILE_INTERVAL": "-1s"}, wantErr: "RECONCILE_INTERVAL"},
		{name: "lost before the default heartbeat", env: map[string]string{"JOB_LOST_AFTER": "2s"}, wantErr: "JOB_LOST_AFTER"},
		{name: "negative heartbeat", args: []string{"-heartbeat", "-1s"}, wantErr: "JOB_HEARTBEAT"},
		{name: "malformed", env: map[string]string{"JOB_LOST_AFTER": "soon"}, wantErr: "JOB_LOST_AFTER"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("REDIS_URL", "redis://127.0.0.1:1")
			for _, k := range []string{"JOB_HEARTBEAT", "JOB_LOST_AFTER", "RECONCILE_INTERVAL"} {
				t.Setenv(k, tc.env[k])
			}
			unsetEmpty(t)
			c, err := ParseWorker(tc.args)
			if err == nil {
				err = c.Worker.check()
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := [3]time.Duration{c.Heartbeat, c.LostAfter, c.ReconcileInterval}; got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// The poll settings come from flags and the environment, with the
// documented defaults, and reach the worker; a bad one is refused.
func TestWorkerPollSettings(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		want    [2]time.Duration // poll, delayed poll
		wantErr string
	}{
		{name: "defaults", want: [2]time.Duration{100 * time.Millisecond, time.Second}},
		{name: "env", env: map[string]string{"WORKER_POLL_INTERVAL": "1s", "WORKER_DELAYED_POLL_INTERVAL": "250ms"}, want: [2]time.Duration{time.Second, 250 * time.Millisecond}},
		{name: "flags", args: []string{"-poll-interval", "20ms", "-delayed-poll-interval", "5s"}, want: [2]time.Duration{20 * time.Millisecond, 5 * time.Second}},
		{name: "zero poll", env: map[string]string{"WORKER_POLL_INTERVAL": "0s"}, wantErr: "WORKER_POLL_INTERVAL"},
		{name: "negative delayed poll", args: []string{"-delayed-poll-interval", "-1s"}, wantErr: "WORKER_DELAYED_POLL_INTERVAL"},
		{name: "malformed", env: map[string]string{"WORKER_DELAYED_POLL_INTERVAL": "often"}, wantErr: "WORKER_DELAYED_POLL_INTERVAL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("REDIS_URL", "redis://127.0.0.1:1")
			for _, k := range []string{"WORKER_POLL_INTERVAL", "WORKER_DELAYED_POLL_INTERVAL"} {
				t.Setenv(k, tc.env[k])
			}
			unsetEmpty(t)
			c, err := ParseWorker(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := [2]time.Duration{c.PollInterval, c.DelayedPollInterval}; got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}
