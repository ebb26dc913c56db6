//go:build !unix

package main

import "net"

// readSocket feeds rd from c until the socket ends or rd stops; without
// read(2) on a descriptor, through net.Conn.Read.
func readSocket(c net.Conn, rd *wsReader, s *sock) error {
	return readConn(c, rd, s)
}
