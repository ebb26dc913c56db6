//go:build !unix

package main

import (
	"net"
	"sync/atomic"
)

// readSocket feeds rd from c until the socket ends or rd stops; without
// read(2) on a descriptor, through net.Conn.Read.
func readSocket(c net.Conn, rd *wsReader, read *atomic.Int64) error {
	return readConn(c, rd, read)
}
