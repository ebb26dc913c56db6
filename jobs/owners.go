package jobs

import (
	"context"
	"sync"
	"time"
)

// ownerCache remembers the owners of the last jobs this process
// submitted for owners whose jobs never change hands (Request.OwnerKept),
// so that the ownership check of a watcher (the socket's subscribe to
// "job:ID", which follows nearly every submit) costs no Redis round trip.
//
// It only ever answers "yes, user owns it": a job's record is never
// deleted, it expires no sooner than Config.Retention after its creation
// (entries older than that are ignored), and a kept owner's job never
// moves, so the answer is the record's. Every other question (another
// user, a job it does not hold) goes to Redis, so a refusal is always the
// record's own (404 or 403), and the right user is never refused on its
// word. A guest's jobs, which move to the account it signs in to on
// whichever replica, are never in it.
//
// It is bounded: a ring of the last max ids, the oldest dropped first.
type ownerCache struct {
	max int
	ttl time.Duration

	mu   sync.Mutex
	byID map[string]ownerEntry
	ring []string // ids in the order added; next is the oldest
	next int
}

type ownerEntry struct {
	owner string
	at    time.Time // when the job was created
}

// newOwnerCache returns a cache of up to max owners, each for ttl; nil
// (which remembers nothing) when max is not positive.
func newOwnerCache(max int, ttl time.Duration) *ownerCache {
	if max <= 0 {
		return nil
	}
	// The map grows with what it holds: a replica that submits few jobs
	// for signed-in users never pays for max.
	return &ownerCache{max: max, ttl: ttl, byID: make(map[string]ownerEntry)}
}

// add remembers that job id, created at, belongs to owner.
func (c *ownerCache) add(id, owner string, at time.Time) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byID[id]; ok {
		return
	}
	if len(c.ring) < c.max {
		c.ring = append(c.ring, id)
	} else {
		delete(c.byID, c.ring[c.next])
		c.ring[c.next] = id
		c.next = (c.next + 1) % c.max
	}
	c.byID[id] = ownerEntry{owner: owner, at: at}
}

// owns reports whether the cache knows that user owns job id at now.
// false means "not known", never "not the owner".
func (c *ownerCache) owns(id, user string, now time.Time) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	e, ok := c.byID[id]
	c.mu.Unlock()
	return ok && e.owner == user && now.Sub(e.at) < c.ttl
}

// IsOwner reports whether user owns job id; ErrNotFound when there is no
// such job. A job this process submitted with Request.OwnerKept is
// answered from memory when user is its owner (Config.OwnerCache); every
// other question reads the job's record.
func (s *Service) IsOwner(ctx context.Context, id, user string) (bool, error) {
	if s.owners.owns(id, user, time.Now()) {
		return true, nil
	}
	owner, err := s.Owner(ctx, id)
	if err != nil {
		return false, err
	}
	return owner == user, nil
}
