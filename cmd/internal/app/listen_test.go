//go:build unix

package app

import (
	"context"
	"net"
	"syscall"
	"testing"
)

// The api's listener accepts connections without TCP keep-alive (four
// setsockopt calls per connection that Go makes by default), while a
// listener made the default way has it: the test can tell them apart.
func TestListenAPIWithoutKeepAlive(t *testing.T) {
	cases := []struct {
		name   string
		listen func() (net.Listener, error)
		want   int
	}{
		{"api", func() (net.Listener, error) { return listenAPI(context.Background(), "127.0.0.1:0") }, 0},
		{"default", func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := tc.listen()
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			client, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			c, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			raw, err := c.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var on int
			var serr error
			if err := raw.Control(func(fd uintptr) {
				on, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
			}); err != nil {
				t.Fatal(err)
			}
			if serr != nil {
				t.Fatal(serr)
			}
			if on != tc.want {
				t.Fatalf("SO_KEEPALIVE = %d on an accepted connection, want %d", on, tc.want)
			}
		})
	}
}
