package soak

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// Config describes the store and its companions on a cluster. The zero
// value of each field is its documented default.
type Config struct {
	Store          string        // store (stream) name; default "soak"
	SnapshotBucket string        // default "soak_snapshots"
	SnapshotEvery  int           // snapshot every N events; default 10
	Replicas       int           // of the store and the buckets; default 3
	Timeout        time.Duration // JetStream default timeout of the connections (per append attempt); default 2s
	Logger         *slog.Logger  // for the repositories and workers; default discard
}

func (c Config) withDefaults() Config {
	if c.Store == "" {
		c.Store = "soak"
	}
	if c.SnapshotBucket == "" {
		c.SnapshotBucket = "soak_snapshots"
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = 10
	}
	if c.Replicas == 0 {
		c.Replicas = 3
	}
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Env is a store on a cluster, with what the workload needs: a connection
// for the writers and one for the projection worker (each to every node,
// reconnecting for ever), the store opened on each, a snapshot bucket, a
// repository for commands (with a cache) and one for loads (no cache: every
// load is a snapshot and the events after it).
type Env struct {
	Cfg     Config            // with defaults applied
	Cluster *embedded.Cluster // the cluster it was opened on

	NC, WorkerNC       *nats.Conn                      // the writers' and the worker's connections
	JS, WorkerJS       jetstream.JetStream             // on NC and WorkerNC, with Cfg.Timeout
	Store, WorkerStore *stream.Store                   // the store, on JS and on WorkerJS
	Snapshots          *kv.Store                       // the snapshot bucket, on JS
	Commands, Loads    *aggregate.Repository[*Counter] // with a cache (commands), without (loads)
}

// Open connects to c and creates (or opens, when they exist: after a
// whole-cluster restart) the store and the snapshot bucket.
func Open(ctx context.Context, c *embedded.Cluster, cfg Config) (*Env, error) {
	cfg = cfg.withDefaults()
	e := &Env{Cfg: cfg, Cluster: c}
	ok := false
	defer func() {
		if !ok {
			e.Close()
		}
	}()
	conn := func(name string) (*nats.Conn, jetstream.JetStream, error) {
		nc, err := c.Connect(nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			return nil, nil, err
		}
		js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(cfg.Timeout))
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
		return nc, js, nil
	}
	var err error
	if e.NC, e.JS, err = conn("soak-writers"); err != nil {
		return nil, err
	}
	if e.WorkerNC, e.WorkerJS, err = conn("soak-worker"); err != nil {
		return nil, err
	}
	scfg := e.StoreConfig()
	if e.Store, err = stream.NewStore(ctx, e.JS, scfg); err != nil {
		return nil, err
	}
	if e.WorkerStore, err = stream.OpenStore(ctx, e.WorkerJS, scfg); err != nil {
		return nil, err
	}
	if _, err := c.WaitForStreamLeader(ctx, "", cfg.Store); err != nil {
		return nil, err
	}
	if e.Snapshots, err = kv.NewStore(ctx, e.JS, kv.Config{Bucket: cfg.SnapshotBucket, Replicas: cfg.Replicas}); err != nil {
		return nil, err
	}
	if e.Commands, err = aggregate.NewRepository(aggregate.Config[*Counter]{
		Store: e.Store, Type: AggregateType, New: NewCounter, Snapshots: e.Snapshots,
		SnapshotEvery: cfg.SnapshotEvery, Logger: cfg.Logger,
	}); err != nil {
		return nil, err
	}
	if e.Loads, err = aggregate.NewRepository(aggregate.Config[*Counter]{
		Store: e.Store, Type: AggregateType, New: NewCounter, Snapshots: e.Snapshots,
		SnapshotEvery: cfg.SnapshotEvery, CacheSize: -1, Logger: cfg.Logger,
	}); err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

// StoreConfig returns the store's configuration.
func (e *Env) StoreConfig() stream.Config {
	return stream.Config{Name: e.Cfg.Store, Registry: NewRegistry(), Replicas: e.Cfg.Replicas}
}

// Close waits for background snapshot writes and closes the connections.
func (e *Env) Close() {
	for _, r := range []*aggregate.Repository[*Counter]{e.Commands, e.Loads} {
		if r != nil {
			r.Flush()
		}
	}
	for _, nc := range []*nats.Conn{e.NC, e.WorkerNC} {
		if nc != nil {
			nc.Close()
		}
	}
}

// LastSequence returns the store's last stream sequence, as its leader
// reports it (retrying while no leader answers).
func (e *Env) LastSequence(ctx context.Context) (uint64, error) {
	var last uint64
	err := retry(ctx, func() error {
		s, err := e.JS.Stream(ctx, e.Cfg.Store)
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		last = info.State.LastSeq
		return nil
	})
	return last, err
}

// Check waits until every replica of the store is current, then runs a
// Checker on the store (Repository: the load repository) against ledger.
func (e *Env) Check(ctx context.Context, ledger *Ledger) (*Report, error) {
	if err := e.Cluster.WaitForStreamCurrent(ctx, "", e.Cfg.Store); err != nil {
		return nil, err
	}
	last, err := e.LastSequence(ctx)
	if err != nil {
		return nil, err
	}
	e.Commands.Flush() // snapshots written: loads see them
	return (&Checker{Store: e.Store, Ledger: ledger, LastSequence: last, Repository: e.Loads}).Check(ctx)
}

// NodeIndex returns n's index in c, or -1.
func NodeIndex(c *embedded.Cluster, n *embedded.Server) int {
	for i, m := range c.Nodes() {
		if m == n {
			return i
		}
	}
	return -1
}

// StopStreamLeader waits until every replica of the stream is current (so
// that its leader hands over at once instead of leaving the cluster to an
// election timeout), stops the node leading it, and waits until another
// node leads it. It returns the stopped node's index.
func StopStreamLeader(ctx context.Context, c *embedded.Cluster, streamName string) (int, error) {
	if err := c.WaitForStreamCurrent(ctx, "", streamName); err != nil {
		return -1, err
	}
	leader, err := c.StreamLeader("", streamName)
	if err != nil {
		return -1, err
	}
	i := NodeIndex(c, leader)
	if i < 0 {
		return -1, errors.New("soak: the stream leader is not a node of the cluster")
	}
	c.StopNode(i)
	next, err := c.WaitForStreamLeader(ctx, "", streamName)
	if err != nil {
		return i, fmt.Errorf("soak: no new leader of %s after stopping node %d: %w", streamName, i, err)
	}
	if next == leader {
		return i, fmt.Errorf("soak: node %d still leads %s after it was stopped", i, streamName)
	}
	return i, nil
}

// RestartNode restarts node i, waits until it has rejoined the cluster,
// and then until every replica of each of streams is current.
func RestartNode(ctx context.Context, c *embedded.Cluster, i int, streams ...string) error {
	if err := c.RestartNode(i); err != nil {
		return err
	}
	for _, s := range streams {
		if err := c.WaitForStreamCurrent(ctx, "", s); err != nil {
			return err
		}
	}
	return nil
}
