//go:build !linux

package main

import "testing"

// testReaders: without epoll, the goroutine reader only.
func testReaders(*testing.T) []testReader { return []testReader{goroutineReader} }
