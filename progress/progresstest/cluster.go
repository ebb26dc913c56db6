package progresstest

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of real redis-server processes on loopback:
// masters only, each holding an equal share of the 16384 slots.
type Cluster struct {
	Nodes []*Server // the masters, in slot order
}

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// NewCluster starts a cluster of n masters (no replicas) on free loopback
// ports and waits until every node reports cluster_state:ok and knows
// every master, all stopped when the test ends. Each node appends every
// write to its AOF (appendfsync always) in its own directory, so Restart
// brings a shard back with its data and its slots, as a restarted
// production node with persistence does. It skips the test when
// redis-server is missing, unless Required.
func NewCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	bin := binary(tb, "redis-server", "the Redis Cluster tests")
	c := &Cluster{}
	for range n {
		s := &Server{Kind: "redis-server", tb: tb, dir: tb.TempDir(),
			args: []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
				"--cluster-node-timeout", "2000", "--appendonly", "yes", "--appendfsync", "always"}}
		s.startOnFreePort(tb, bin, clusterPort, nil)
		c.Nodes = append(c.Nodes, s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, s := range c.Nodes {
		rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
		lo, hi := i*clusterSlots/n, (i+1)*clusterSlots/n-1
		err := rdb.ClusterAddSlotsRange(ctx, lo, hi).Err()
		if err == nil && i > 0 {
			err = rdb.ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(c.Nodes[0].port)).Err()
		}
		_ = rdb.Close()
		if err != nil {
			tb.Fatalf("form the cluster at node %d: %v", i, err)
		}
	}
	c.WaitOK(tb)
	return c
}

// WaitOK waits until every running node reports cluster_state:ok and
// sees as many masters with slots as there are nodes.
func (c *Cluster) WaitOK(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		bad := ""
		for _, s := range c.Nodes {
			if why := nodeNotOK(s.Addr, len(c.Nodes)); why != "" {
				bad = s.Addr + ": " + why
				break
			}
		}
		if bad == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("cluster not ready: %s", bad)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func nodeNotOK(addr string, masters int) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer rdb.Close()
	info, err := rdb.ClusterInfo(ctx).Result()
	if err != nil {
		return err.Error()
	}
	if !strings.Contains(info, "cluster_state:ok") {
		return "cluster_state not ok"
	}
	shards, err := rdb.ClusterShards(ctx).Result()
	if err != nil {
		return err.Error()
	}
	if len(shards) != masters {
		return fmt.Sprintf("sees %d shards, want %d", len(shards), masters)
	}
	for _, sh := range shards {
		if len(sh.Slots) == 0 {
			return "a shard without slots"
		}
		for _, n := range sh.Nodes {
			if n.Health != "online" {
				return "a node is " + n.Health
			}
		}
	}
	return ""
}

// URL returns a REDIS_URL for the cluster (REDIS_MODE=cluster): the first
// node, the others as addr parameters.
func (c *Cluster) URL() string {
	u := "redis://" + c.Nodes[0].Addr
	for i, s := range c.Nodes[1:] {
		if i == 0 {
			u += "?"
		} else {
			u += "&"
		}
		u += "addr=" + s.Addr
	}
	return u
}

// Client returns a new cluster client, closed when the test ends.
func (c *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	addrs := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		addrs[i] = s.Addr
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// NodeOf returns the node that holds key's slot.
func (c *Cluster) NodeOf(tb testing.TB, key string) *Server {
	tb.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: c.Nodes[0].Addr})
	defer rdb.Close()
	slot, err := rdb.ClusterKeySlot(context.Background(), key).Result()
	if err != nil {
		tb.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
	}
	n := int64(len(c.Nodes))
	for i := range n {
		if slot <= (i+1)*clusterSlots/n-1 {
			return c.Nodes[i]
		}
	}
	return c.Nodes[n-1]
}

// clusterPort returns a free loopback port whose cluster bus port
// (port+10000) is free too.
func clusterPort(tb testing.TB) int {
	for range 100 {
		p := freePort(tb)
		if p+10000 > 65535 {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+10000))
		if err != nil {
			continue
		}
		_ = l.Close()
		return p
	}
	tb.Fatalf("no free port pair for a cluster node")
	return 0
}
