package progress

import (
	"context"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultHealthCheckIdle is how long a pooled Redis connection must have
// been idle before go-redis's health check looks at its socket again.
//
// go-redis checks every connection it takes from its pool with a
// non-blocking MSG_PEEK recvfrom(2) on the socket, to find one that Redis
// closed (a restart, CLIENT KILL, the server's idle timeout) before a
// command is written to it: the client retries nothing (see
// DefaultMaxRetries), so this check is what keeps a dropped connection
// from failing a request. Under load that is one extra system call per
// command or pipeline: 6–12 % of a worker's CPU in bench/jobs at 800
// jobs/s. A connection that read a reply within the last
// DefaultHealthCheckIdle was alive a moment ago; one Redis drops within
// that window fails its next command, as one with a command in flight at
// that moment would anyway. Connections idle for longer are checked as
// before, so a quiet replica still finds the connections a restarted
// Redis left behind.
const DefaultHealthCheckIdle = 100 * time.Millisecond

// healthCheckIdle is DefaultHealthCheckIdle, shortened by tests.
var healthCheckIdle = DefaultHealthCheckIdle

// dialer is the signature of go-redis's Options.Dialer.
type dialer = func(ctx context.Context, network, addr string) (net.Conn, error)

// skipRecentChecks wraps dial so that the connections it makes let
// go-redis's pool health check through only when they have been idle for
// healthCheckIdle (see DefaultHealthCheckIdle). A TLS connection is
// returned as dial made it: go-redis never peeks at one.
func skipRecentChecks(dial dialer) dialer {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		sc, ok := c.(syscall.Conn)
		if !ok {
			return c, nil
		}
		raw, err := sc.SyscallConn()
		if err != nil {
			return c, nil
		}
		rc := &recentConn{Conn: c, raw: raw, idle: healthCheckIdle}
		rc.lastRead.Store(time.Now().UnixNano())
		return rc, nil
	}
}

// recentConn is a Redis connection that remembers when it last read a
// reply. Its SyscallConn is the socket's own, except that Read (the only
// call go-redis's health check makes: a peek at the socket) does nothing
// while the connection read something within idle.
type recentConn struct {
	net.Conn
	raw      syscall.RawConn
	idle     time.Duration
	lastRead atomic.Int64 // unix ns of the last Read that returned data
	peeks    atomic.Int64 // health checks let through, for tests
}

func (c *recentConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

// SyscallConn returns the socket's raw connection for go-redis's health
// check, see recentConn.
func (c *recentConn) SyscallConn() (syscall.RawConn, error) { return recentRaw{c}, nil }

// recentRaw is recentConn's syscall.RawConn.
type recentRaw struct{ c *recentConn }

func (r recentRaw) Control(f func(fd uintptr)) error    { return r.c.raw.Control(f) }
func (r recentRaw) Write(f func(fd uintptr) bool) error { return r.c.raw.Write(f) }

// Read runs f on the socket (go-redis's peek) unless the connection read
// a reply within idle: then the connection is taken for alive as it is.
func (r recentRaw) Read(f func(fd uintptr) bool) error {
	if time.Since(time.Unix(0, r.c.lastRead.Load())) < r.c.idle {
		return nil
	}
	r.c.peeks.Add(1)
	return r.c.raw.Read(f)
}
