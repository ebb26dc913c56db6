// Package faults is taskstream's fault suite: real processes (redis-server
// with AOF, two API replicas, two workers, Redis Sentinel for one scenario)
// and a population of WebSocket watchers, put through crashes, restarts,
// pauses, a slow reader and a failover, each scenario ending with a ledger
// check of every job and every event.
//
// The tests are behind the build tag "faults", so `go test ./...` does not
// run them; CI runs them as a step of their own:
//
//	go test -tags faults -count=1 -v ./faults/
//
// They need redis-server and redis-sentinel on PATH (Debian packages
// redis-server and redis-sentinel) and take a few minutes.
package faults
