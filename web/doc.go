// Package web owns taskstream's HTTP surface: the JSON API for jobs (chi),
// the WebSocket endpoint and its per-connection pumps, the typed errors of
// docs/protocol.md, the Origin policy, and the embedded front-end.
//
// It turns requests into calls on jobs.Service and progress.Hub and never
// talks to Redis itself.
package web
