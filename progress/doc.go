// Package progress owns taskstream's events and their delivery: the per-group
// event log in Redis (seq, epoch, bounded history with a TTL), the atomic
// append-and-publish step that producers use, the per-process Hub that holds
// one shared Redis subscription per group and fans events out to local
// subscribers in seq order with no gap and no duplicate, and the Reporter that
// job handlers use to report progress at a throttled rate.
//
// A group is a named stream of events ("job:ID", "chat:ROOM", "user:ID",
// "dashboard"). Every event in a group has a seq, +1 per event, and the group's
// log has an epoch that changes when the log is lost (flushed or expired), so
// a subscriber can tell "I missed nothing" from "history is gone".
//
// The package knows nothing of jobs or HTTP; it imports go-redis only.
package progress
