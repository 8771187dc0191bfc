package embedded

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Connector is what MustConnect needs: *Server and *Cluster implement it.
type Connector interface {
	Connect(opts ...nats.Option) (*nats.Conn, error)
}

var (
	_ Connector = (*Server)(nil)
	_ Connector = (*Cluster)(nil)
)

// RunServer starts a server for a test and stops it in tb.Cleanup. Defaults
// differ from Start only in Dir: tb.TempDir() when the options leave it
// empty (so Restart keeps the data for the test's lifetime). Port stays
// random. Each opt edits the Options before Start. It calls tb.Fatal if the
// server does not start.
func RunServer(tb testing.TB, opts ...func(*Options)) *Server {
	tb.Helper()
	var o Options
	for _, f := range opts {
		f(&o)
	}
	if o.Dir == "" {
		o.Dir = tb.TempDir()
	}
	s, err := Start(o)
	if err != nil {
		tb.Fatalf("embedded.RunServer: %v", err)
	}
	tb.Cleanup(s.Shutdown)
	return s
}

// RunCluster starts a cluster (3 nodes by default) for a test, with Dir =
// tb.TempDir() unless set, waits for the JetStream meta leader, and stops it
// in tb.Cleanup. Each opt edits the ClusterOptions before StartCluster. It
// calls tb.Fatal if the cluster does not start.
func RunCluster(tb testing.TB, opts ...func(*ClusterOptions)) *Cluster {
	tb.Helper()
	var o ClusterOptions
	for _, f := range opts {
		f(&o)
	}
	if o.Dir == "" {
		o.Dir = tb.TempDir()
	}
	c, err := StartCluster(o)
	if err != nil {
		tb.Fatalf("embedded.RunCluster: %v", err)
	}
	tb.Cleanup(c.Shutdown)
	return c
}

// MustConnect connects to c (a *Server or *Cluster) with opts, closes the
// connection in tb.Cleanup (before a server started earlier in the test is
// stopped), and calls tb.Fatal on error.
func MustConnect(tb testing.TB, c Connector, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	nc, err := c.Connect(opts...)
	if err != nil {
		tb.Fatalf("embedded.MustConnect: %v", err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// MustJetStream is MustConnect followed by jetstream.New: it returns the
// connection (closed in tb.Cleanup) and its JetStream context.
func MustJetStream(tb testing.TB, c Connector, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	nc := MustConnect(tb, c, opts...)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("embedded.MustJetStream: %v", err)
	}
	return nc, js
}
