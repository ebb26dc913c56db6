package progress

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress/progresstest"
)

// clusterGroups returns n job groups and the node that holds each, with
// every node holding at least one, and checks that each group's channel
// hashes to the slot of its keys (the append script requires it).
func clusterGroups(t *testing.T, c *progresstest.Cluster, l *Log, prefix string, n int) ([]string, map[string]*progresstest.Server) {
	t.Helper()
	groups := make([]string, n)
	owner := map[string]*progresstest.Server{}
	perNode := map[*progresstest.Server]int{}
	for i := range groups {
		g := fmt.Sprintf("job:%s%d", prefix, i)
		groups[i] = g
		owner[g] = c.NodeOf(t, l.metaKey(g))
		perNode[owner[g]]++
		if ch := c.NodeOf(t, l.Channel(g)); ch != owner[g] {
			t.Fatalf("%s: channel %s is on %s, its keys on %s", g, l.Channel(g), ch.Addr, owner[g].Addr)
		}
	}
	if len(perNode) != len(c.Nodes) {
		t.Fatalf("the %d groups cover %d of %d shards; pick more", n, len(perNode), len(c.Nodes))
	}
	return groups, owner
}

// newClusterHub returns a Log and a Hub on the cluster, each with its own
// cluster client, and shuts the hub down when the test ends.
func newClusterHub(t *testing.T, c *progresstest.Cluster) (*Log, *Hub) {
	t.Helper()
	l := NewLog(c.Client(t), LogConfig{})
	if !l.Sharded() {
		t.Fatal("a Log on a cluster client must use sharded pub/sub")
	}
	// The hub's client as REDIS_MODE=cluster makes it.
	rdb, err := OpenRedis(context.Background(), c.URL(), ModeCluster)
	if err != nil {
		t.Fatalf("OpenRedis(%s, cluster): %v", c.URL(), err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	h := NewHub(rdb, NewLog(rdb, LogConfig{}), HubConfig{Logger: testLogger(t)})
	t.Cleanup(func() { shutdownHub(t, h) })
	waitFor(t, "the hub to be ready on every shard", func() bool { return h.Ready(context.Background()) == nil })
	return l, h
}

// publishRetry publishes, retrying while the group's shard is unavailable
// (restarting): each attempt that fails before Redis ran the script
// appends nothing, so the retries do not duplicate events.
func publishRetry(t *testing.T, l *Log, group string, i int) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		_, err := l.Publish(context.Background(), group, "progress", i)
		if err == nil {
			return
		}
		if !IsUnavailable(err) || time.Now().After(deadline) {
			t.Fatalf("publish %s #%d: %v", group, i, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Events of groups spread over every shard of a 3-master cluster arrive
// through the hub in order with no gap, each published to its own shard
// only: the hub holds each group's sharded subscription on the group's
// master alone, plain subscribers on every node hear nothing, and the
// cluster bus carries no PUBLISH.
func TestClusterShardedDelivery(t *testing.T) {
	c := progresstest.NewCluster(t, 3)
	l, h := newClusterHub(t, c)
	groups, owner := clusterGroups(t, c, l, "spread", 24)
	const before, after = 5, 30
	for _, g := range groups {
		for i := 1; i <= before; i++ {
			mustPublish(t, l, g, "progress", i)
		}
	}
	sinks := map[string]*recSink{}
	for _, g := range groups {
		sinks[g] = &recSink{}
		mustSubscribe(t, h, g, 2, "", sinks[g])
	}
	for _, g := range groups {
		waitFor(t, g+" replayed", func() bool { return sinks[g].reached(before, "") })
	}

	// A plain subscriber of every channel on every node, and the nodes'
	// cluster-bus publish counters: sharded events reach neither.
	plain := make([]*redis.PubSub, len(c.Nodes))
	for i, n := range c.Nodes {
		rdb := n.Client(t)
		chans := make([]string, len(groups))
		for j, g := range groups {
			chans[j] = l.Channel(g)
		}
		plain[i] = rdb.Subscribe(context.Background(), chans...)
		t.Cleanup(func() { _ = plain[i].Close() })
		if _, err := plain[i].Receive(context.Background()); err != nil {
			t.Fatalf("plain SUBSCRIBE on %s: %v", n.Addr, err)
		}
	}
	busBefore := busPublishes(t, c)

	for i := before + 1; i <= after; i++ {
		for _, g := range groups { // interleaved over the shards
			mustPublish(t, l, g, "progress", i)
		}
	}
	var epoch string
	for _, g := range groups {
		waitForDiag(t, g+" live", func() bool { return sinks[g].reached(after, "") }, sinks[g].dump)
		epoch = sinks[g].Last().Epoch
		checkDelivery(t, g, sinks[g], 2, after, epoch)
	}

	for _, g := range groups {
		ch := l.Channel(g)
		for _, n := range c.Nodes {
			m, err := n.Client(t).PubSubShardNumSub(context.Background(), ch).Result()
			if err != nil {
				t.Fatalf("PUBSUB SHARDNUMSUB on %s: %v", n.Addr, err)
			}
			want := int64(0)
			if n == owner[g] {
				want = 1
			}
			if m[ch] != want {
				t.Errorf("%s: %d sharded subscribers on %s, want %d (its shard is %s)", g, m[ch], n.Addr, want, owner[g].Addr)
			}
		}
	}
	// Every event is delivered by now (the hub's sinks have them): what a
	// plain subscriber holds is its confirmations and nothing else.
	for i, ps := range plain {
		for {
			msg, err := ps.ReceiveTimeout(context.Background(), 50*time.Millisecond)
			if err != nil {
				break
			}
			if _, isMsg := msg.(*redis.Message); isMsg {
				t.Fatalf("a plain subscriber on %s heard %v: events must go out with SPUBLISH only", c.Nodes[i].Addr, msg)
			}
		}
	}
	if busAfter := busPublishes(t, c); busAfter != busBefore {
		t.Errorf("cluster bus PUBLISH messages went from %d to %d: events were broadcast to every node", busBefore, busAfter)
	}
}

// busPublishes sums the PUBLISH messages every node sent over the cluster
// bus (a plain PUBLISH is forwarded to every node; SPUBLISH only to the
// shard's replicas, of which this cluster has none).
func busPublishes(t *testing.T, c *progresstest.Cluster) int64 {
	t.Helper()
	var sum int64
	for _, n := range c.Nodes {
		info, err := n.Client(t).ClusterInfo(context.Background()).Result()
		if err != nil {
			t.Fatalf("CLUSTER INFO on %s: %v", n.Addr, err)
		}
		for _, line := range strings.Split(info, "\n") {
			for _, k := range []string{"cluster_stats_messages_publish_sent:", "cluster_stats_messages_publishshard_sent:"} {
				if v, ok := strings.CutPrefix(strings.TrimSpace(line), k); ok {
					x, _ := strconv.ParseInt(v, 10, 64)
					sum += x
				}
			}
		}
	}
	return sum
}

// A shard that crashes and restarts (with its AOF) takes its groups'
// subscriptions down with it: the hub says it is not ready while the
// shard is down, resubscribes when it is back, and every subscriber, on
// that shard and on the others, sees every event in order with no gap
// and no loss of its position. A subscriber that joins afterwards gets
// the replay and then live events.
func TestClusterShardRestart(t *testing.T) {
	c := progresstest.NewCluster(t, 3)
	l, h := newClusterHub(t, c)
	groups, owner := clusterGroups(t, c, l, "restart", 12)
	victim := owner[groups[0]]
	sinks := map[string]*recSink{}
	for _, g := range groups {
		sinks[g] = &recSink{}
		mustSubscribe(t, h, g, 0, "", sinks[g])
	}
	const first, total = 10, 25
	for i := 1; i <= first; i++ {
		for _, g := range groups {
			mustPublish(t, l, g, "progress", i)
		}
	}
	for _, g := range groups {
		waitFor(t, g+" before the restart", func() bool { return sinks[g].reached(first, "") })
	}

	victim.Stop()
	waitFor(t, "the hub to report the shard down", func() bool {
		err := h.Ready(context.Background())
		return err != nil && strings.Contains(err.Error(), "shards' pub/sub connections")
	})
	victim.Restart(t)
	c.WaitOK(t)
	for i := first + 1; i <= total; i++ {
		for _, g := range groups {
			publishRetry(t, l, g, i)
		}
	}
	waitFor(t, "the hub to be ready again", func() bool { return h.Ready(context.Background()) == nil })
	for _, g := range groups {
		waitForDiag(t, g+" after the restart", func() bool { return sinks[g].reached(total, "") }, sinks[g].dump)
		checkDelivery(t, g, sinks[g], 0, total, sinks[g].Last().Epoch)
	}

	// Replay and live on the restarted shard, for a new subscriber.
	late := &recSink{}
	mustSubscribe(t, h, groups[0], 20, "", late)
	waitFor(t, "the late subscriber's replay", func() bool { return late.reached(total, "") })
	mustPublish(t, l, groups[0], "progress", total+1)
	waitFor(t, "the late subscriber's live event", func() bool { return late.reached(total+1, "") })
	checkDelivery(t, "late", late, 20, total+1, late.Last().Epoch)
}

// On a cluster, the tail of a group on each shard serves later
// subscribers after one look at the log (its meta and oldest entry, one
// MULTI on the group's slot), and a log deleted on its shard is caught by
// that look: the next subscriber hears the history is lost.
func TestClusterTailChecked(t *testing.T) {
	c := progresstest.NewCluster(t, 3)
	l, h := newClusterHub(t, c)
	groups, _ := clusterGroups(t, c, l, "tail", 24)
	rdb := c.Client(t)
	epochs := map[string]string{}
	for _, g := range groups {
		for i := 1; i <= 5; i++ {
			epochs[g] = mustPublish(t, l, g, "progress", i).Epoch
		}
		anchor := &recSink{}
		defer mustSubscribe(t, h, g, 0, "", anchor).Close()
		waitFor(t, g+"'s tail", func() bool { tl, _ := groupTail(h, g); return tl != nil && tl.last == 5 })
	}
	before := h.Counters()
	for _, g := range groups {
		s := &recSink{}
		defer mustSubscribe(t, h, g, 2, epochs[g], s).Close()
		waitFor(t, g+"'s subscriber", func() bool { return s.reached(5, "") })
		checkDelivery(t, g, s, 2, 5, epochs[g])
	}
	if c := h.Counters(); c.HistoryReads != before.HistoryReads || c.TailChecks-before.TailChecks != uint64(len(groups)) {
		t.Fatalf("reads %d → %d, tail checks %d → %d: want no read and one check per group", before.HistoryReads, c.HistoryReads, before.TailChecks, c.TailChecks)
	}
	for _, g := range groups {
		if err := rdb.Del(context.Background(), l.metaKey(g), l.streamKey(g)).Err(); err != nil {
			t.Fatal(err)
		}
		s := &recSink{}
		defer mustSubscribe(t, h, g, 5, epochs[g], s).Close()
		waitFor(t, g+"'s subscriber after the loss", func() bool { return len(s.Syncs()) == 1 })
		if info := s.Syncs()[0]; info.Recovered || info.Epoch != "" || info.LastSeq != 0 {
			t.Fatalf("%s: SyncInfo %+v after its log was deleted, want no log, not recovered", g, info)
		}
	}
}

// On a cluster that lost its scripts (SCRIPT FLUSH on every shard), a
// batch of posts to groups on every shard, and a presence flush of rooms
// on every shard, load each missing script once on every shard (each
// shard's loads in one pipeline), and go again by digest: no EVAL.
func TestClusterScriptsLoadedOnEveryShard(t *testing.T) {
	c := progresstest.NewCluster(t, 3)
	ctx := t.Context()
	rdb := c.Client(t)
	l := NewLog(rdb, LogConfig{})
	groups, _ := clusterGroups(t, c, l, "noscript", 24)
	p := NewPresence(rdb, l, PresenceConfig{ListInterval: time.Hour, TTL: time.Hour, Logger: testLogger(t)})
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	rooms := make([]string, len(groups))
	shards := map[*progresstest.Server]bool{}
	for i := range rooms {
		rooms[i] = fmt.Sprint("chat:noscript", i)
		shards[c.NodeOf(t, l.metaKey(rooms[i]))] = true
	}
	if len(shards) != len(c.Nodes) {
		t.Fatalf("the rooms cover %d of %d shards; pick more", len(shards), len(c.Nodes))
	}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T)
		// loads: the scripts loaded on each shard
		loads int
	}{
		{name: "PublishMany", loads: 1, run: func(t *testing.T) {
			posts := make([]Post, len(groups))
			for i, g := range groups {
				posts[i] = Post{g, "note", i}
			}
			evs, errs := l.PublishMany(ctx, posts)
			for i := range posts {
				if errs[i] != nil || evs[i].Seq != 1 {
					t.Fatalf("post to %s: %+v %v, want seq 1", groups[i], evs[i], errs[i])
				}
			}
		}},
		// join and newer.
		{name: "presence flush", loads: 2, run: func(t *testing.T) {
			for _, r := range rooms {
				if err := p.Join(ctx, r, Member{ID: "u1", Name: "ada"}, "tab"); err != nil {
					t.Fatal(err)
				}
			}
			mustFlush(t, p)
			for _, r := range rooms {
				if _, diffs := eventNames(t, l, r); fmt.Sprint(diffs) != "[join:u1]" {
					t.Fatalf("%s: events %v, want one join", r, diffs)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := rdb.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			traffic := &scriptTraffic{flusher: c.Client(t)}
			hookScriptTraffic(t, rdb, traffic)
			tc.run(t)
			if got, loads := traffic.counts(), tc.loads*len(c.Nodes); got.Evals != 0 || got.Loads != loads {
				t.Errorf("%d EVAL, %d SCRIPT LOAD; want none and %d (%d on each of %d shards)", got.Evals, got.Loads, loads, tc.loads, len(c.Nodes))
			}
		})
	}
}
