package progress

import (
	"encoding/json"
	"sort"
	"time"

	"taskstream/wire"
)

// tail is a group's recent history held in memory, so that new
// subscribers of a group that is already live on this hub are served
// without a Redis read (a join storm would otherwise cost one read of the
// whole retained history, and its decoding, per batch of subscribers).
//
// Why serving from it gives what a read of the log would give:
//
//   - It is established only by a successful read of the log made while
//     the group's pub/sub subscription was confirmed (group.ready), from
//     the read's events plus every live event that arrived from the start
//     of that read on (group.rec), joined contiguously in seq within the
//     read's epoch. Every event appended after the read's MULTI ran is
//     published after the recording started, so it reaches the recording
//     or the tail unless the pub/sub connection drops it; a lost
//     connection (connBroken, connLost, a shard reset) and every
//     (re)subscription (catchup) drop the tail and bump group.gen, and a
//     read that saw gen change while in flight establishes nothing.
//   - A read of a group with no log (epoch "") establishes an empty tail,
//     which takes the epoch of the first event that arrives if that is
//     seq 1, as a subscriber synced on that read does (Subscription.apply
//     offers such events in order); until then it serves only subscribers
//     without a position, which a read would give the same empty answer.
//   - Live events extend it only when they follow its last seq in its
//     epoch; an earlier seq of the same epoch is a duplicate and ignored;
//     anything else (a gap, another epoch: the log was lost and started
//     anew) drops it. A later read that disagrees (another epoch, no log,
//     a LastSeq below the tail's) drops it too.
//   - It holds at most the log's own bound for the group's kind
//     (Log.maxLen, the MAXLEN every append passes), evicting its oldest
//     events. XADD MAXLEN ~ never trims below that bound (miniredis trims
//     to it exactly), so Redis still holds every event the tail holds:
//     a subscriber whose position is inside the tail (first-1 <= after
//     <= last, same epoch) gets from it exactly the events and the
//     Recovered a read would give. A subscriber from the start (after 0)
//     is served only while the tail starts at seq 1, the log's first
//     event ever, which Redis cannot have trimmed while the log holds no
//     more than the bound. Any other position (older, beyond the tail,
//     another epoch) goes to Redis as before.
//   - A log can also vanish without a new event (FLUSHALL, its TTL): the
//     tail is not used once the log's TTL could have passed since its last
//     event (half the TTL, see fresh), and the next event of a new log,
//     or a read, drops it. Until then a subscriber served from it is in
//     the same place as one that subscribed just before the loss: the new
//     epoch's first event brings both a Recovered false SyncInfo.
//
// The member list of a chat room (SyncInfo.Members) is kept the same way:
// the list read in the establishing MULTI, to which every join, leave and
// rename event after that read's LastSeq is applied as the set operations
// a subscriber applies (docs/protocol.md). The list served is therefore
// exactly what a subscriber that was given the establishing read's list
// and every event since holds; the Presence argument (see Presence) shows
// that such a list, with the events after the subscriber's replay start
// applied, converges to the current members, which is all a list read
// from Redis promises. An old "presence" event (a whole list, no longer
// published) or an undecodable presence event drops the tail.
//
// A tail is guarded by its group's mu.
type tail struct {
	epoch   string
	first   int64    // seq of events[0]; last+1 when empty
	last    int64    // the newest seq the tail knows of
	events  []*Event // first..last, shared with every subscriber
	limit   int64    // Log.maxLen of the group
	touched time.Time

	members map[string]string // id → name; nil when the group has no list
	list    []Member          // members sorted as Presence.List sorts; nil when stale
}

// newTail builds a tail from a read of the log (snap, made with members
// when non-nil) and the live events recorded since the read began. It
// returns nil when they do not join up.
func newTail(snap Snapshot, members []Member, rec []*Event, limit int64, now time.Time) *tail {
	if limit <= 0 || (snap.Epoch == "" && (snap.LastSeq != 0 || len(snap.Events) > 0)) {
		return nil
	}
	t := &tail{epoch: snap.Epoch, first: snap.LastSeq + 1, last: snap.LastSeq, limit: limit, touched: now}
	if n := len(snap.Events); n > 0 {
		if snap.Events[n-1].Seq != snap.LastSeq {
			return nil
		}
		for i := 1; i < n; i++ {
			if snap.Events[i].Seq != snap.Events[i-1].Seq+1 {
				return nil
			}
		}
		t.first = snap.Events[0].Seq
		t.events = append(make([]*Event, 0, n+len(rec)), snap.Events...)
	}
	if members != nil {
		t.members = make(map[string]string, len(members))
		for _, m := range members {
			t.members[m.ID] = m.Name
		}
	}
	t.evict()
	for _, ev := range rec {
		if !t.add(ev, now) {
			return nil
		}
	}
	return t
}

// add extends the tail with a live event. It returns false when the tail
// must be dropped: the event does not follow it, or changes a member list
// in a way the tail cannot follow.
func (t *tail) add(ev *Event, now time.Time) bool {
	if t.epoch == "" && t.last == 0 && ev.Seq == 1 {
		t.epoch = ev.Epoch // the first event of a log that was empty
	}
	if ev.Epoch != t.epoch || ev.Seq > t.last+1 {
		return false
	}
	if ev.Seq <= t.last {
		return true // a duplicate of what the read returned
	}
	if t.members != nil && !t.applyMember(ev) {
		return false
	}
	t.events = append(t.events, ev)
	t.last, t.touched = ev.Seq, now
	t.evict()
	return true
}

// evict drops the oldest events beyond the log's bound.
func (t *tail) evict() {
	if over := int64(len(t.events)) - t.limit; over > 0 {
		t.events = t.events[over:]
	}
	if len(t.events) > 0 {
		t.first = t.events[0].Seq
	} else {
		t.first = t.last + 1
	}
}

// applyMember applies a chat group's presence event to the member list,
// as a subscriber would.
func (t *tail) applyMember(ev *Event) bool {
	switch ev.Name {
	case wire.EventJoin, wire.EventLeave, wire.EventRename:
	case wire.EventPresence:
		return false
	default:
		return true
	}
	var d struct {
		User *Member `json:"user"`
	}
	if err := json.Unmarshal(ev.Data, &d); err != nil || d.User == nil || d.User.ID == "" {
		return false
	}
	_, present := t.members[d.User.ID]
	switch ev.Name {
	case wire.EventJoin:
		t.members[d.User.ID] = d.User.Name
	case wire.EventLeave:
		delete(t.members, d.User.ID)
	case wire.EventRename:
		if !present {
			return true
		}
		t.members[d.User.ID] = d.User.Name
	}
	t.list = nil
	return true
}

// fresh reports whether the tail may still be used: the log's TTL (ttl)
// cannot have removed it since the tail last learnt of it.
func (t *tail) fresh(now time.Time, ttl time.Duration) bool {
	return now.Sub(t.touched) < ttl/2
}

// serves reports whether a subscriber at (after, epoch) gets from the
// tail what a read of the log would give it (see tail).
func (t *tail) serves(after int64, epoch string) bool {
	if epoch != "" && epoch != t.epoch {
		return false
	}
	return after >= t.first-1 && after <= t.last
}

// snapshot is what a read after seq after would return, as far as the
// tail knows: the events are shared, not copied.
func (t *tail) snapshot(after int64) Snapshot {
	i := max(after+1-t.first, 0)
	return Snapshot{Epoch: t.epoch, LastSeq: t.last, Events: t.events[i:len(t.events):len(t.events)]}
}

// memberList returns the members as of the tail's last seq, sorted as
// Presence.List sorts them; nil when the group has no list. The slice is
// shared by the subscribers served until the next change.
func (t *tail) memberList() []Member {
	if t.members == nil {
		return nil
	}
	if t.list == nil {
		list := make([]Member, 0, len(t.members))
		for id, name := range t.members {
			list = append(list, Member{ID: id, Name: name})
		}
		sort.Slice(list, func(i, j int) bool {
			if list[i].Name != list[j].Name {
				return list[i].Name < list[j].Name
			}
			return list[i].ID < list[j].ID
		})
		t.list = list
	}
	return t.list
}
