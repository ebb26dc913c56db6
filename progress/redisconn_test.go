package progress

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// setHealthCheckIdle sets healthCheckIdle for one test.
func setHealthCheckIdle(t *testing.T, d time.Duration) {
	old := healthCheckIdle
	healthCheckIdle = d
	t.Cleanup(func() { healthCheckIdle = old })
}

// go-redis's pool peeks at a connection's socket before each use only when
// the connection has been idle for healthCheckIdle: a busy connection
// costs no extra system call per command.
func TestHealthCheckOnlyAfterIdle(t *testing.T) {
	progresstest.ForEach(t, func(t *testing.T, srv *progresstest.Server) {
		for _, tc := range []struct {
			name      string
			idle      time.Duration
			wantPeeks func(n int64) bool
		}{
			{"busy connection is not peeked at", time.Hour, func(n int64) bool { return n == 0 }},
			{"idle connection is peeked at every use", 0, func(n int64) bool { return n >= 50 }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				setHealthCheckIdle(t, tc.idle)
				var mu sync.Mutex
				var conns []*recentConn
				dial := skipRecentChecks(func(ctx context.Context, network, addr string) (net.Conn, error) {
					c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
					return c, err
				})
				rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 1, Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
					c, err := dial(ctx, network, addr)
					if rc, ok := c.(*recentConn); ok {
						mu.Lock()
						conns = append(conns, rc)
						mu.Unlock()
					}
					return c, err
				}})
				t.Cleanup(func() { _ = rdb.Close() })
				ctx := context.Background()
				for i := range 51 {
					if err := rdb.Set(ctx, "k", i, 0).Err(); err != nil {
						t.Fatal(err)
					}
				}
				mu.Lock()
				defer mu.Unlock()
				if len(conns) != 1 {
					t.Fatalf("dialed %d connections, want 1 wrapped one", len(conns))
				}
				if n := conns[0].peeks.Load(); !tc.wantPeeks(n) {
					t.Errorf("health check peeked %d times over 51 commands", n)
				}
			})
		}
	})
}

// A connection Redis closed while it was idle is still found by the
// health check before a command is written to it, so the command runs
// on a new connection instead of failing; within the idle window the
// check is skipped and the command fails, as one in flight would.
func TestHealthCheckFindsDroppedConnection(t *testing.T) {
	srv := progresstest.Real(t)
	for _, tc := range []struct {
		name    string
		idle    time.Duration
		wantErr bool
	}{
		{"checked after idle", 0, false},
		{"skipped within the window", time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setHealthCheckIdle(t, tc.idle)
			rdb, err := NewRedis(srv.URL(), ModeSingle)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = rdb.Close() })
			ctx := context.Background()
			id, err := rdb.(*redis.Client).ClientID(ctx).Result()
			if err != nil {
				t.Fatal(err)
			}
			admin := srv.Client(t)
			if err := admin.ClientKillByFilter(ctx, "ID", strconv.FormatInt(id, 10)).Err(); err != nil {
				t.Fatal(err)
			}
			err = rdb.Ping(ctx).Err()
			if tc.wantErr != (err != nil) {
				t.Fatalf("PING after the connection was killed: %v, want an error: %v", err, tc.wantErr)
			}
			if err != nil && !IsUnavailable(err) {
				t.Errorf("the error %v does not read as Redis unavailable", err)
			}
		})
	}
}
