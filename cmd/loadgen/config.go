package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"taskstream/progress"
)

// config is what the command line asks for.
type config struct {
	URL             string        // server under load; "" runs it in this process
	RedisURL        string        // the publisher's Redis (and the in-process server's)
	KeyPrefix       string        // the server's -key-prefix
	ServerPID       int           // with -url: the server process whose RSS is reported
	Clients         int           // sockets
	Users           int           // distinct sessions the sockets belong to
	Group           string        // the group they all join
	Events          int           // events published
	Rate            float64       // events per second
	Payload         int           // bytes of text per event
	DialConcurrency int           // sockets being opened at once
	SendQueue       int           // in-process server: frames queued per socket
	Drain           time.Duration // how long to wait for deliveries after the last publish
	Timeout         time.Duration // bound on the whole run
	CPUProfile      string        // write a CPU profile of the publishing phase here (scenario mode: one per scenario and target, profilePath)
	PublishVia      string        // "redis": Log.Publish into Redis; "api": POST /api/publish
	Token           string        // with -url and -publish-via api: the bearer token that publishes

	// The scenario mode (-scenario): taskstream next to the reference.
	Scenario    string        // "", "all" or a comma-separated list of scenarioNames
	Target      string        // targetTaskstream, targetGorilla or targetBoth
	APIBin      string        // taskstream's cmd/api binary ("" : built into a temp dir)
	GorillaBin  string        // gorilla's examples/chat binary ("": built into a temp dir)
	APIEnv      []string      // extra KEY=VALUE settings of the api process
	Subprotocol string        // Sec-WebSocket-Protocol offered to taskstream; its messages are split on '\n'
	Publishers  int           // fanout, latency, bytes: publishers
	Window      int           // fanout: messages in flight per publisher
	Duration    time.Duration // fanout, latency, bytes: publishing time
	Settle      time.Duration // pause between the join and the measurement
	ClientProcs int           // scenario mode: the load client's GOMAXPROCS (0: the runtime's)
	ReadRing    bool          // scenario mode: subscribers receive through io_uring rings (recvRing), else read(2)
	set         map[string]bool
	progress    io.Writer // scenario mode: a line per phase (main: stderr; nil: none)
}

// scenarioTimeout bounds a scenario run unless -timeout says otherwise:
// "all" at full size on both targets takes a few minutes.
const scenarioTimeout = 20 * time.Minute

// Publish paths.
const (
	viaRedis = "redis"
	viaAPI   = "api"
)

// Limits: one process may hold about 19.9k sockets here (20k open files);
// in-process, every socket is two of them (client and server side).
const (
	maxClientsExternal = 19000
	maxClientsInProc   = 9000
	maxDeliveries      = 50_000_000 // latency samples kept in memory
)

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "loadgen opens N sockets on one group, publishes M events at rate R to it with\n"+
			"progress.Log.Publish, and reports delivered messages/s, delivery latency and RSS per socket.\n"+
			"With -scenario, it runs scenarios on taskstream and on gorilla/websocket's chat example side by side.\n"+
			"Loopback only; it stops by itself.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&c.URL, "url", "", "taskstream server on loopback (needs -redis-url, the Redis it uses); empty runs the server in this process")
	fs.StringVar(&c.RedisURL, "redis-url", "", "Redis the events are published to; in-process, the server's Redis too (empty: in-process miniredis, about 10x slower than redis-server)")
	fs.StringVar(&c.KeyPrefix, "key-prefix", "ts", "the server's -key-prefix")
	fs.IntVar(&c.ServerPID, "server-pid", 0, "with -url: pid of the server process, to report its RSS (read from /proc)")
	fs.IntVar(&c.Clients, "clients", 1000, "WebSocket clients")
	fs.IntVar(&c.Users, "users", 1, "distinct guest sessions the sockets are spread over (in a chat room, each user's first socket publishes join and presence events to the room)")
	fs.StringVar(&c.Group, "group", "", "the group every client subscribes to, any the server lets a client join (default: a fresh chat:load-XXXXXXXX room per run)")
	fs.IntVar(&c.Events, "events", 1000, "events to publish")
	fs.Float64Var(&c.Rate, "rate", 100, "events per second")
	fs.IntVar(&c.Payload, "payload", 100, "bytes of text in each event")
	fs.IntVar(&c.DialConcurrency, "dial-concurrency", 64, "sockets opened at once")
	fs.IntVar(&c.SendQueue, "send-queue", 256, "in-process server: frames queued per socket before it is closed with 1013")
	fs.DurationVar(&c.Drain, "drain", 10*time.Second, "how long to wait for deliveries after the last publish")
	fs.DurationVar(&c.Timeout, "timeout", 3*time.Minute, "give up after this long (scenario mode: 20m)")
	fs.StringVar(&c.PublishVia, "publish-via", viaRedis, "how events are published: redis (progress.Log.Publish straight into Redis, as workers do) or api (POST /api/publish with a bearer token, as other backends do)")
	fs.StringVar(&c.Token, "token", "", "with -url and -publish-via api: a bearer token that may publish to the group (an admin token, or one with a publish:chat:* scope); in-process an admin token is made up")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of this process during the publishing phase to this file (in-process: server and clients); scenario mode: of the load client during each fanout, latency and bytes run (and each join scenario's join), one file per scenario and target (-scenario-target inserted before the extension)")
	fs.StringVar(&c.Scenario, "scenario", "", "scenario mode: all, or a comma-separated list of join, idle, fanout, latency, bytes, restart; each runs on every -target back to back on fresh server processes and prints a side-by-side table (needs -redis-url for taskstream)")
	fs.StringVar(&c.Target, "target", targetBoth, "scenario mode: taskstream, gorilla (gorilla/websocket's examples/chat, the reference) or both")
	fs.StringVar(&c.APIBin, "api-bin", "", "scenario mode: taskstream's cmd/api binary (default: go build it into a temp dir; run from the module)")
	fs.StringVar(&c.GorillaBin, "gorilla-bin", "", "scenario mode: the binary of "+gorillaPackage+" (default: go build it into a temp dir; run from the module)")
	fs.Func("api-env", "scenario mode: an extra KEY=VALUE setting of the api process, e.g. CHAT_HISTORY=1 (repeatable)", func(v string) error {
		if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
			return fmt.Errorf("want KEY=VALUE, got %q", v)
		}
		c.APIEnv = append(c.APIEnv, v)
		return nil
	})
	fs.StringVar(&c.Subprotocol, "subprotocol", "", "scenario mode: offer this Sec-WebSocket-Protocol to taskstream (e.g. taskstream.v2) and read its messages as frames separated by newlines")
	fs.IntVar(&c.Publishers, "publishers", 16, "scenario mode: publishers of fanout, latency and bytes (the open loop's workers: enough that a slow publish path does not cap the rate)")
	fs.IntVar(&c.Window, "window", 1, "scenario mode, fanout: messages each publisher has in flight (1: the next goes when the previous reached every subscriber)")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "scenario mode: publishing time of fanout and latency (default 10s), bytes (5s), and restart's before and after the restart (1s)")
	fs.IntVar(&c.ClientProcs, "client-procs", 0, "scenario mode: GOMAXPROCS of the load client during every scenario (0: Go's default); the servers it starts keep theirs")
	fs.BoolVar(&c.ReadRing, "read-ring", true, "scenario mode: in fanout, latency and bytes, subscribers' sockets receive through io_uring rings, one per GOMAXPROCS (Linux 6.1 or later; where the kernel refuses, read(2) as with false, said in the notes); false, and the other scenarios: one read(2) per socket wake-up")
	fs.DurationVar(&c.Settle, "settle", time.Second, "scenario mode: pause after every socket joined, before measuring (idle: 2s)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { c.set[f.Name] = true })
	if c.Scenario != "" {
		if !c.set["timeout"] {
			c.Timeout = scenarioTimeout
		}
		return c, c.validateScenarios()
	}
	for _, name := range []string{"scenario", "target", "api-bin", "gorilla-bin", "api-env", "subprotocol", "publishers", "window", "duration", "settle", "client-procs", "read-ring"} {
		if c.set[name] {
			return c, fmt.Errorf("-%s goes with -scenario", name)
		}
	}
	return c, c.validate()
}

// validateScenarios checks the scenario mode's flags.
func (c config) validateScenarios() error {
	if err := validScenarios(c.Scenario); err != nil {
		return err
	}
	for _, name := range []string{"url", "server-pid", "token", "events", "group", "send-queue", "drain"} {
		if c.set[name] {
			return fmt.Errorf("-%s is not used with -scenario (each scenario starts its own servers)", name)
		}
	}
	switch {
	case c.Target != targetTaskstream && c.Target != targetGorilla && c.Target != targetBoth:
		return fmt.Errorf("-target %q: want %s, %s or %s", c.Target, targetTaskstream, targetGorilla, targetBoth)
	case c.Target != targetGorilla && c.RedisURL == "":
		return errors.New("-scenario with taskstream needs -redis-url (a redis-server on loopback; every scenario uses a fresh room)")
	case c.Clients < 1 || c.Clients > maxClientsExternal:
		return fmt.Errorf("-clients must be from 1 to %d here (open-file limit)", maxClientsExternal)
	case c.Users < 1:
		return errors.New("-users must be positive")
	case c.Publishers < 1 || c.Publishers > 256:
		return errors.New("-publishers must be from 1 to 256")
	case c.Window < 1 || c.Window > 1024:
		return errors.New("-window must be from 1 to 1024")
	case c.Duration <= 0 || c.Settle < 0 || c.Timeout <= 0:
		return errors.New("-duration and -timeout must be positive, -settle not negative")
	case c.Rate <= 0:
		return errors.New("-rate must be positive")
	case c.Payload < 40 || c.Payload > 500:
		// The stamp takes up to 40 bytes; the chat example reads at most 512.
		return errors.New("-payload must be from 40 to 500 bytes in scenario mode")
	case c.DialConcurrency < 1:
		return errors.New("-dial-concurrency must be positive")
	case c.ClientProcs < 0 || c.ClientProcs > 256:
		return errors.New("-client-procs must be from 0 (Go's default) to 256")
	case c.PublishVia != viaRedis && c.PublishVia != viaAPI:
		return fmt.Errorf("-publish-via %q: want %s or %s", c.PublishVia, viaRedis, viaAPI)
	}
	return checkRedisURL(c.RedisURL)
}

func (c config) inProcess() bool { return c.URL == "" }

func (c config) validate() error {
	maxClients := maxClientsExternal
	if c.inProcess() {
		maxClients = maxClientsInProc
	}
	switch {
	case c.Clients < 1 || c.Clients > maxClients:
		return fmt.Errorf("-clients must be from 1 to %d here (open-file limit)", maxClients)
	case c.Users < 1 || c.Users > c.Clients:
		return errors.New("-users must be from 1 to -clients")
	case c.Events < 1 || c.Events > 1_000_000:
		return errors.New("-events must be from 1 to 1000000")
	case int64(c.Events)*int64(c.Clients) > maxDeliveries:
		return fmt.Errorf("-events × -clients must be at most %d", maxDeliveries)
	case c.Rate <= 0:
		return errors.New("-rate must be positive")
	case c.Payload < 0 || c.Payload > 60<<10:
		return errors.New("-payload must be from 0 to 61440 bytes")
	case c.DialConcurrency < 1:
		return errors.New("-dial-concurrency must be positive")
	case c.Drain <= 0 || c.Timeout <= 0:
		return errors.New("-drain and -timeout must be positive")
	case c.Group != "" && !progress.ValidGroup(c.Group):
		return fmt.Errorf("-group %q is not a group name", c.Group)
	case c.PublishVia != viaRedis && c.PublishVia != viaAPI:
		return fmt.Errorf("-publish-via %q: want %s or %s", c.PublishVia, viaRedis, viaAPI)
	case c.Token != "" && (c.inProcess() || c.PublishVia != viaAPI):
		return errors.New("-token goes with -url and -publish-via api (in-process an admin token is made up)")
	}
	if publishTime := time.Duration(float64(c.Events) / c.Rate * float64(time.Second)); publishTime+c.Drain >= c.Timeout {
		return fmt.Errorf("publishing %d events at %g/s takes %s: raise -timeout (%s) or -rate", c.Events, c.Rate, publishTime, c.Timeout)
	}
	if !c.inProcess() {
		u, err := url.Parse(c.URL)
		if err != nil || u.Scheme != "http" || u.Host == "" {
			return fmt.Errorf("-url %q: want http://host:port", c.URL)
		}
		if !loopback(u.Hostname()) {
			return fmt.Errorf("-url %q: loopback only (localhost, 127.0.0.0/8, ::1)", c.URL)
		}
		if c.PublishVia == viaRedis && c.RedisURL == "" {
			return errors.New("-url needs -redis-url (the Redis that server uses, to publish to), or -publish-via api with -token")
		}
		if c.PublishVia == viaAPI && c.Token == "" {
			return errors.New("-publish-via api with -url needs -token, a bearer token that may publish to the group")
		}
	} else if c.ServerPID != 0 {
		return errors.New("-server-pid goes with -url; in-process the RSS is this process's")
	}
	return checkRedisURL(c.RedisURL)
}

// checkRedisURL accepts "", unix sockets and loopback Redis URLs.
func checkRedisURL(u string) error {
	if u == "" || strings.HasPrefix(u, "unix://") {
		return nil
	}
	opt, err := redis.ParseURL(u)
	if err != nil {
		return fmt.Errorf("-redis-url: %w", err)
	}
	host, _, _ := net.SplitHostPort(opt.Addr)
	if !loopback(host) {
		return fmt.Errorf("-redis-url %q: loopback only", u)
	}
	return nil
}

// loopback reports whether host names this machine's loopback interface.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
