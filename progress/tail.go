package progress

import (
	"encoding/json"
	"sort"

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
//   - A log can also vanish or change without an event reaching the tail:
//     deleted or flushed (its next event, if any, starts a new epoch),
//     expired (its TTL), evicted, trimmed harder by another process (a
//     smaller CHAT_HISTORY), or its events lost on a pub/sub connection
//     that is broken but not yet known to be. So before serving a batch
//     of subscribers from the tail the hub reads the log's state
//     (Log.state: its epoch, last seq and oldest retained seq, one MULTI)
//     and serves from the tail only when that shows the tail's log
//     holding nothing the tail has not heard (see check): the subscribers
//     then get what a read at that instant would give, plus the live
//     events since. Another epoch, or no log, drops the tail (the read
//     that follows tells the subscribers, Recovered false); a log ahead
//     of the tail (events still on their way, or lost) has them wait up
//     to HubConfig.TailWait for the tail to hear those events, and read
//     the log if it does not; events trimmed from Redis are trimmed from
//     the tail.
//   - A tail is established only by a read that began while the group's
//     pub/sub connection was up (see group.learn); one that was down
//     then may have missed events that no later event reveals.
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
	epoch  string
	first  int64    // seq of events[0]; last+1 when empty
	last   int64    // the newest seq the tail knows of
	events []*Event // first..last, shared with every subscriber
	limit  int64    // Log.maxLen of the group

	members map[string]string // id → name; nil when the group has no list
	list    []Member          // members sorted as Presence.List sorts; nil when stale
}

// newTail builds a tail from a read of the log (snap, made with members
// when non-nil) and the live events recorded since the read began. It
// returns nil when they do not join up.
func newTail(snap Snapshot, members []Member, rec []*Event, limit int64) *tail {
	if limit <= 0 || (snap.Epoch == "" && (snap.LastSeq != 0 || len(snap.Events) > 0)) {
		return nil
	}
	t := &tail{epoch: snap.Epoch, first: snap.LastSeq + 1, last: snap.LastSeq, limit: limit}
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
		if !t.add(ev) {
			return nil
		}
	}
	return t
}

// add extends the tail with a live event. It returns false when the tail
// must be dropped: the event does not follow it, or changes a member list
// in a way the tail cannot follow.
func (t *tail) add(ev *Event) bool {
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
	t.last = ev.Seq
	t.evict()
	return true
}

// evict drops the oldest events beyond the log's bound.
func (t *tail) evict() {
	t.dropOldest(int64(len(t.events)) - t.limit)
}

// dropOldest drops the oldest n events (none when n <= 0).
func (t *tail) dropOldest(n int64) {
	if n > 0 {
		t.events = t.events[min(n, int64(len(t.events))):]
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

// tailVerdict is what a look at the log (check) says about a tail.
type tailVerdict int

const (
	tailServes tailVerdict = iota // the log is the tail's and holds nothing it has not heard
	tailBehind                    // the tail's log, with events the tail has not heard yet
	tailStale                     // another log, or none: the tail must go
)

// check compares the tail with st, the log's state read after the caller
// last released the group's lock (so every live event the tail has heard
// since is newer than st, or in it). On tailServes the tail has been
// trimmed to what Redis retained at st, so that a subscriber it serves
// gets exactly what a read at st would give it, plus later live events.
// Called with the group's lock held.
func (t *tail) check(st logState) tailVerdict {
	switch {
	case t.epoch == "" && t.last == 0 && st.Epoch != "":
		// The log was created after the tail's read: its first event
		// may still be on its way (if it was missed, this tail never
		// serves, and the next reconnect drops it).
		return tailBehind
	case st.Epoch != t.epoch:
		return tailStale
	case st.Epoch == "":
		if st.Oldest != 0 {
			// Events without a meta (only it was evicted): what a read
			// makes of them is the read's business.
			return tailStale
		}
		return tailServes
	case st.LastSeq > t.last:
		return tailBehind
	}
	// st.LastSeq <= t.last: the tail has heard every event of st (and
	// maybe newer ones). Redis retains st.Oldest.. (nothing at all when
	// st.Oldest is 0), which is never more than the tail would serve
	// while every process appends with this one's bound, but may be less
	// (another bound, an eviction).
	oldest := st.Oldest
	if oldest == 0 {
		oldest = st.LastSeq + 1
	}
	t.dropOldest(oldest - t.first)
	return tailServes
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
