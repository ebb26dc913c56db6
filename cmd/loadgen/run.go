package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/gorilla/websocket"

	"taskstream/client"
	"taskstream/cmd/internal/inproc"
	"taskstream/progress"
	"taskstream/wire"
)

// run opens the sockets, publishes, waits for delivery and reports.
func run(ctx context.Context, c config, stdout io.Writer, logger *slog.Logger) error {
	if c.Scenario != "" {
		return runScenarios(ctx, c, stdout, logger)
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	rep := &Report{Users: c.Users, Clients: c.Clients, Events: c.Events, Payload: c.Payload, Rate: c.Rate, Group: c.Group}
	var pub publisher
	base := c.URL
	token := c.Token
	if c.inProcess() {
		if c.PublishVia == viaAPI {
			token = randomToken() // the in-process server's admin token
		}
		svc, err := inproc.Start(ctx, inproc.Options{RedisURL: c.RedisURL, Prefix: c.KeyPrefix, SendQueue: c.SendQueue, AdminToken: token, Logger: logger})
		if err != nil {
			return err
		}
		defer svc.Close()
		base = svc.URL
		rep.Mode = "in this process (app.RunAPI), on redis-server " + c.RedisURL
		if svc.Mini {
			rep.Mode = "in this process (app.RunAPI), on miniredis in this process"
		}
		rep.MemOf = "this process (server and clients together)"
		if c.PublishVia == viaRedis {
			rdb, err := progress.OpenRedis(ctx, svc.RedisURL, progress.ModeSingle)
			if err != nil {
				return err
			}
			defer rdb.Close()
			pub = logPublisher{progress.NewLog(rdb, progress.LogConfig{Prefix: c.KeyPrefix})}
		}
	} else {
		rep.Mode = c.URL
		if c.PublishVia == viaRedis {
			rdb, err := progress.OpenRedis(ctx, c.RedisURL, progress.ModeSingle)
			if err != nil {
				return err
			}
			defer rdb.Close()
			pub = logPublisher{progress.NewLog(rdb, progress.LogConfig{Prefix: c.KeyPrefix})}
			rep.Mode += ", publishing on " + c.RedisURL
		}
		if c.ServerPID != 0 {
			rep.MemOf = fmt.Sprintf("the server process (pid %d)", c.ServerPID)
		}
	}
	if c.PublishVia == viaAPI {
		api, err := client.New(client.Config{BaseURL: base, Token: token})
		if err != nil {
			return err
		}
		pub = apiPublisher{api}
		rep.Mode += ", publishing with POST /api/publish"
	}
	if rep.Group == "" {
		// A fresh room per run: no history from an earlier run to replay.
		var b [4]byte
		_, _ = rand.Read(b[:])
		rep.Group = wire.ChatGroup("load-" + hex.EncodeToString(b[:])).String()
	}
	memPID := c.ServerPID // 0: this process
	measure := c.inProcess() || c.ServerPID != 0
	snap := func(i int) error {
		if !measure {
			return nil
		}
		if memPID == 0 {
			runtime.GC()
		}
		m, err := readMemory(memPID)
		rep.Mem[i] = m
		return err
	}
	if err := snap(0); err != nil {
		return err
	}

	// One client per simulated user: its own cookie jar, so its own
	// guest session, which every socket of that user shares.
	users := make([]*client.Client, c.Users)
	for i := range users {
		u, err := client.New(client.Config{BaseURL: base,
			Dialer: &websocket.Dialer{HandshakeTimeout: 10 * time.Second, ReadBufferSize: 2048, WriteBufferSize: 1024}})
		if err != nil {
			return err
		}
		if _, err := u.Me(ctx); err != nil {
			return fmt.Errorf("a session for user %d: %w", i, err)
		}
		users[i] = u
	}
	t0 := time.Now()
	f, err := dialFleet(ctx, rep.Group, c.Clients, c.DialConcurrency, c.Events, users)
	if err != nil {
		return fmt.Errorf("opening the sockets: %w", err)
	}
	defer f.Close()
	rep.DialTime = time.Since(t0)
	if err := snap(1); err != nil {
		return err
	}

	stopProfile, err := startCPUProfile(c.CPUProfile)
	if err != nil {
		return err
	}
	rep.Pub = publish(ctx, pub, rep.Group, c.Events, c.Rate, c.Payload)
	f.wait(ctx, c.Drain)
	if err := stopProfile(); err != nil {
		return err
	}
	if err := snap(2); err != nil {
		return err
	}
	f.Close()
	rep.Out = f.outcome()
	rep.MemOK = measure
	rep.WriteMarkdown(stdout)
	return nil
}

// randomToken makes up a bearer token.
func randomToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// startCPUProfile starts profiling this process into path ("" does
// nothing) and returns the function that stops it.
func startCPUProfile(path string) (stop func() error, err error) {
	if path == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}
