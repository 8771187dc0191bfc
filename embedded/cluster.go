package embedded

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Cluster defaults.
const (
	// DefaultClusterName is the cluster name used when ClusterOptions.Name is empty.
	DefaultClusterName = "esnats"
	// DefaultClusterSize is the number of nodes when ClusterOptions.Size is 0.
	DefaultClusterSize = 3
	// DefaultClusterTimeout bounds StartCluster and RestartNode's wait for a
	// JetStream meta leader.
	DefaultClusterTimeout = 30 * time.Second
)

// ErrNoLeader is returned (wrapped) by StreamLeader when no running node
// currently leads the stream, and by the Wait functions when none was found
// before their context ended.
var ErrNoLeader = errors.New("embedded: no leader")

// startAttempts is how often StartCluster tries when a pre-chosen cluster
// port was taken by someone else between choosing and binding it.
const startAttempts = 3

// ClusterOptions configure a JetStream cluster of embedded servers on
// loopback. Zero values are documented defaults, except Dir.
type ClusterOptions struct {
	// Name is the cluster name; node i is named "<Name>-n<i>". Default
	// DefaultClusterName ("esnats").
	Name string

	// Size is the number of nodes. Default DefaultClusterSize (3). Must be at
	// least 2: a JetStream meta group needs two peers to elect a leader.
	Size int

	// Dir is the parent store directory; node i stores in Dir/<node name>.
	// Required: StartCluster returns an error matching ErrDirRequired when empty.
	Dir string

	// Sync is the fsync policy of every node. Default SyncAlways.
	Sync SyncPolicy

	// Logging routes every node's log to stderr, prefixed with its name.
	Logging bool

	// Timeout bounds how long StartCluster and RestartNode wait for the
	// JetStream meta leader. Default DefaultClusterTimeout (30s).
	Timeout time.Duration

	// Configure, if set, is called last on node i's nats-server options on
	// every start of that node (escape hatch, see Options.Configure).
	// StartCluster calls it concurrently for different nodes.
	Configure func(i int, o *server.Options)
}

// Cluster is a JetStream cluster of in-process servers on 127.0.0.1: random
// client ports, fixed (pre-chosen, free) cluster ports, and every node routed
// to every node, so any node can be stopped and restarted with the same
// name, store directory and ports.
//
// All methods are safe for concurrent use.
type Cluster struct {
	opts  ClusterOptions
	nodes []*Server // fixed after StartCluster
}

// StartCluster starts opts.Size nodes concurrently and returns once all
// accept connections, have JetStream enabled, and a JetStream meta leader is
// elected with every node current (see WaitForMetaLeader). Then JetStream API
// calls work.
//
// A brand-new cluster (no node directory under opts.Dir existed, or all were
// empty) usually elects its meta leader within a second, but about one start
// in three loses that first election and would sit leaderless for the raft
// election timeout (4-9s). StartCluster then shuts the nodes down, removes
// the node directories it just created, and starts again (at most 3 times,
// after 2.5s each). Existing node directories are never removed: a cluster
// restarted on old data waits for its regular election (typically 4-9s).
//
// Errors: ErrDirRequired (no Dir), ErrJetStreamNotStarted and ErrNotReady
// (a node failed, see Start), ErrNoLeader (no meta leader within
// opts.Timeout of the last attempt). On error nothing is left running.
func StartCluster(opts ClusterOptions) (*Cluster, error) {
	if opts.Dir == "" {
		return nil, dirRequiredError{field: "ClusterOptions.Dir"}
	}
	if opts.Name == "" {
		opts.Name = DefaultClusterName
	}
	if opts.Size == 0 {
		opts.Size = DefaultClusterSize
	}
	if opts.Size < 2 {
		return nil, fmt.Errorf("embedded: ClusterOptions.Size must be at least 2, got %d", opts.Size)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultClusterTimeout
	}

	// A brand-new cluster may lose its first meta leader election: every
	// node campaigns 100-800ms after it starts, and an election among empty
	// logs needs the vote of every node, so two nodes campaigning at once
	// (or a vote request sent before the routes are up) leaves the cluster
	// leaderless until the raft election timeout (4-9s, not configurable
	// from outside nats-server). That happens in about a third of starts. As
	// long as the cluster is brand new (no node directory existed), it is
	// cheaper to throw it away and start again than to wait.
	dirs := make([]string, opts.Size)
	fresh := true
	for i := range dirs {
		dirs[i] = filepath.Join(opts.Dir, nodeName(opts.Name, i))
		if !isEmptyOrMissing(dirs[i]) {
			fresh = false
		}
	}

	// reset removes the node directories of a brand-new cluster after a
	// failed attempt, so that the next attempt bootstraps again.
	reset := func(cause error) error {
		for _, d := range dirs {
			if err := os.RemoveAll(d); err != nil {
				return fmt.Errorf("embedded: cluster %q: reset node dir for a new bootstrap: %w (after: %w)", opts.Name, err, cause)
			}
		}
		return nil
	}

	for bootstrapTry, portTry := 0, 0; ; {
		c, portTaken, err := startNodes(opts)
		if err != nil {
			portTry++
			if !portTaken || portTry >= startAttempts {
				return nil, err
			}
			if fresh {
				if err := reset(err); err != nil {
					return nil, err
				}
			}
			continue
		}
		bootstrapTry++
		retryFresh := fresh && bootstrapTry < bootstrapAttempts
		wait := opts.Timeout
		if retryFresh {
			wait = min(bootstrapWindow, opts.Timeout)
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		err = c.WaitForMetaLeader(ctx)
		cancel()
		if err == nil {
			return c, nil
		}
		c.Shutdown()
		if !retryFresh || !errors.Is(err, context.DeadlineExceeded) {
			return nil, err
		}
		if err := reset(err); err != nil {
			return nil, err
		}
	}
}

// Bootstrap election retries of a brand-new cluster (see StartCluster).
const (
	bootstrapAttempts = 3
	bootstrapWindow   = 2500 * time.Millisecond
)

func nodeName(cluster string, i int) string { return fmt.Sprintf("%s-n%d", cluster, i) }

// isEmptyOrMissing reports whether dir does not exist or is an empty directory.
func isEmptyOrMissing(dir string) bool {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return true
	}
	return err == nil && len(entries) == 0
}

// startNodes starts all nodes of a cluster (without waiting for the meta
// leader). portTaken reports that a pre-chosen cluster port was taken by
// another process before a node could bind it: worth another attempt.
func startNodes(opts ClusterOptions) (c *Cluster, portTaken bool, err error) {
	ports, err := freePorts(DefaultHost, opts.Size)
	if err != nil {
		return nil, false, fmt.Errorf("embedded: choose cluster ports: %w", err)
	}
	routes := make([]string, len(ports))
	for i, p := range ports {
		routes[i] = "nats://" + net.JoinHostPort(DefaultHost, strconv.Itoa(p))
	}
	routeStr := strings.Join(routes, ",")

	// Start the nodes concurrently, so that their meta groups come up
	// close together and the bootstrap election finds every peer.
	nodes := make([]*Server, opts.Size)
	errs := make([]error, opts.Size)
	var wg sync.WaitGroup
	for i := range opts.Size {
		name := nodeName(opts.Name, i)
		nodeOpts := Options{
			Name:    name,
			Dir:     filepath.Join(opts.Dir, name),
			Host:    DefaultHost,
			Port:    server.RANDOM_PORT,
			Sync:    opts.Sync,
			Logging: opts.Logging,
			Configure: func(o *server.Options) {
				o.Cluster.Name = opts.Name
				o.Cluster.Host = DefaultHost
				o.Cluster.Port = ports[i]
				// Every node (itself included, which the server ignores)
				// so that the expected meta group size is the cluster size
				// and a restarted node finds all others.
				o.Routes = server.RoutesFromStr(routeStr)
				if opts.Configure != nil {
					opts.Configure(i, o)
				}
			},
		}
		wg.Go(func() { nodes[i], errs[i] = Start(nodeOpts) })
	}
	wg.Wait()
	for i, startErr := range errs {
		if startErr != nil {
			for _, n := range nodes {
				if n != nil {
					n.Shutdown()
				}
			}
			// The port may already be free again (an outgoing
			// connection's ephemeral port that closed meanwhile), so the
			// server's own report counts too.
			taken := addrInUse(startErr) || portInUse(ports[i])
			return nil, taken, fmt.Errorf("embedded: cluster %q: start node %d: %w", opts.Name, i, startErr)
		}
	}
	return &Cluster{opts: opts, nodes: nodes}, false, nil
}

// freePorts returns n distinct ports that were free on host a moment ago.
// Another process may take one before the server binds it; StartCluster
// retries in that case.
func freePorts(host string, n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// addrInUse reports whether err is a start that failed because a listener
// could not bind its port (nats-server reports it as text).
func addrInUse(err error) bool {
	return err != nil && strings.Contains(err.Error(), "address already in use")
}

// portInUse reports whether port on DefaultHost cannot be bound now.
func portInUse(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(DefaultHost, strconv.Itoa(port)))
	if err != nil {
		return true
	}
	l.Close()
	return false
}

// Nodes returns the cluster's nodes in index order (a new slice; the
// *Server values are shared and stay valid across StopNode/RestartNode).
func (c *Cluster) Nodes() []*Server {
	return append([]*Server(nil), c.nodes...)
}

// Node returns node i. It panics if i is out of range.
func (c *Cluster) Node(i int) *Server { return c.nodes[i] }

// Name returns the cluster name.
func (c *Cluster) Name() string { return c.opts.Name }

// ClientURLs returns every node's client URL in index order, stopped nodes
// included (their URLs stay valid across RestartNode).
func (c *Cluster) ClientURLs() []string {
	urls := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		urls[i] = n.ClientURL()
	}
	return urls
}

// Connect connects a client with all ClientURLs as its server pool, so it
// connects to any running node and fails over when its node stops. opts are
// passed to nats.Connect. The caller owns (and must close) the connection.
func (c *Cluster) Connect(opts ...nats.Option) (*nats.Conn, error) {
	return nats.Connect(strings.Join(c.ClientURLs(), ","), opts...)
}

// running returns the running nodes and their nats-servers.
func (c *Cluster) running() []*server.Server {
	var out []*server.Server
	for _, n := range c.nodes {
		n.mu.Lock()
		if n.running {
			out = append(out, n.ns)
		}
		n.mu.Unlock()
	}
	return out
}

// metaReady reports whether one running node is the JetStream meta leader,
// sees every running node as a peer, and every running node is current.
func (c *Cluster) metaReady() (bool, error) {
	running := c.running()
	if len(running) == 0 {
		return false, fmt.Errorf("embedded: cluster %q: no node is running: %w", c.opts.Name, ErrNoLeader)
	}
	var leader *server.Server
	for _, ns := range running {
		if !ns.JetStreamEnabled() {
			return false, fmt.Errorf("%w on cluster node %q", ErrJetStreamNotStarted, ns.Name())
		}
		if ns.JetStreamIsLeader() {
			if leader != nil {
				return false, nil // two claim leadership during a transition
			}
			leader = ns
		}
	}
	if leader == nil || len(leader.JetStreamClusterPeers()) < len(running) {
		return false, nil
	}
	for _, ns := range running {
		if !ns.JetStreamIsCurrent() {
			return false, nil
		}
	}
	return true, nil
}

// pollInterval is how often the Wait functions check cluster state.
const pollInterval = 20 * time.Millisecond

// poll calls check every pollInterval until it returns true or an error, or
// ctx ends (then the error wraps ctx.Err() and describes what was awaited).
func poll(ctx context.Context, what string, check func() (bool, error)) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		ok, err := check()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s: %w", ErrNoLeader, what, ctx.Err())
		case <-t.C:
		}
	}
}

// WaitForMetaLeader waits until a JetStream meta leader is elected among the
// running nodes, it counts every running node as a peer, and every running
// node is current with it: after that, JetStream API requests (create stream,
// ...) are answered. It polls every 20ms until ctx ends.
//
// Errors: ErrNoLeader wrapping ctx.Err() on timeout (or when no node is
// running); ErrJetStreamNotStarted if a running node lost JetStream.
func (c *Cluster) WaitForMetaLeader(ctx context.Context) error {
	return poll(ctx, fmt.Sprintf("cluster %q: waiting for the JetStream meta leader", c.opts.Name), c.metaReady)
}

// MetaLeader returns the running node that currently is the JetStream meta
// leader, or an error matching ErrNoLeader.
func (c *Cluster) MetaLeader() (*Server, error) {
	for _, n := range c.nodes {
		if n.Running() && n.NATS().JetStreamIsLeader() {
			return n, nil
		}
	}
	return nil, fmt.Errorf("%w: cluster %q has no JetStream meta leader", ErrNoLeader, c.opts.Name)
}

// StreamLeader returns the running node that currently leads stream in
// account ("" means the default global account, $G), or an error matching
// ErrNoLeader (stream unknown, or between leaders). The answer can be stale
// the moment it returns; use WaitForStreamLeader after a failover.
func (c *Cluster) StreamLeader(account, stream string) (*Server, error) {
	if account == "" {
		account = server.DEFAULT_GLOBAL_ACCOUNT
	}
	for _, n := range c.nodes {
		if n.Running() && n.NATS().JetStreamIsStreamLeader(account, stream) {
			return n, nil
		}
	}
	return nil, fmt.Errorf("%w: cluster %q: no leader for stream %q in account %q", ErrNoLeader, c.opts.Name, stream, account)
}

// WaitForStreamLeader polls StreamLeader every 20ms until a running node
// leads the stream or ctx ends (then an error matching ErrNoLeader and
// wrapping ctx.Err()). A stream leader just elected may still refuse a
// publish for a moment; callers that publish right after a failover should
// retry.
func (c *Cluster) WaitForStreamLeader(ctx context.Context, account, stream string) (*Server, error) {
	var leader *Server
	err := poll(ctx, fmt.Sprintf("cluster %q: waiting for a leader of stream %q", c.opts.Name, stream), func() (bool, error) {
		l, err := c.StreamLeader(account, stream)
		if err != nil {
			return false, nil
		}
		leader = l
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	return leader, nil
}

// WaitForStreamCurrent polls every 20ms until the stream has a leader and
// every running node that holds a replica of it is current (caught up with
// the leader), or ctx ends (then an error matching ErrNoLeader and wrapping
// ctx.Err()). Call it before stopping a stream leader in a failover test:
// the leader hands over to a current follower at shutdown, whereas with a
// lagging follower the cluster may wait for an election timeout (4-9s).
func (c *Cluster) WaitForStreamCurrent(ctx context.Context, account, stream string) error {
	if account == "" {
		account = server.DEFAULT_GLOBAL_ACCOUNT
	}
	return poll(ctx, fmt.Sprintf("cluster %q: waiting for all replicas of stream %q to be current", c.opts.Name, stream), func() (bool, error) {
		if _, err := c.StreamLeader(account, stream); err != nil {
			return false, nil
		}
		for _, ns := range c.running() {
			if ns.JetStreamIsStreamAssigned(account, stream) && !ns.JetStreamIsStreamCurrent(account, stream) {
				return false, nil
			}
		}
		return true, nil
	})
}

// StopNode shuts node i down (see Server.Shutdown); its raft groups step
// down first, so the others elect new leaders quickly. Stopping a stopped
// node does nothing. It panics if i is out of range.
func (c *Cluster) StopNode(i int) {
	c.nodes[i].Shutdown()
}

// RestartNode restarts node i (stopped or not) with the same name, store
// directory, client port and cluster port, then waits (up to
// ClusterOptions.Timeout) until it has rejoined: a meta leader exists and
// every running node, this one included, is current. Streams on the node
// catch up in the background. It panics if i is out of range.
//
// Errors: those of Server.Restart, or ErrNoLeader if the cluster did not
// settle in time (the node keeps running).
func (c *Cluster) RestartNode(i int) error {
	if err := c.nodes[i].Restart(); err != nil {
		return fmt.Errorf("embedded: cluster %q: restart node %d: %w", c.opts.Name, i, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
	defer cancel()
	return c.WaitForMetaLeader(ctx)
}

// Shutdown stops all nodes concurrently and waits for them. It is
// idempotent.
func (c *Cluster) Shutdown() {
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Go(n.Shutdown)
	}
	wg.Wait()
}

// String returns "cluster <name> [<url>, ...]".
func (c *Cluster) String() string {
	return fmt.Sprintf("cluster %s %v", c.opts.Name, c.ClientURLs())
}
