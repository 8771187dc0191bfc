package embedded

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Defaults used when the corresponding Options field is zero.
const (
	// DefaultHost is the interface servers listen on: loopback only.
	DefaultHost = "127.0.0.1"
	// DefaultStartTimeout bounds how long Start and Restart wait for a server
	// to accept connections.
	DefaultStartTimeout = 10 * time.Second
)

var (
	// ErrDirRequired is returned (wrapped) by Start and StartCluster when no
	// store directory was given. There is deliberately no default: a program
	// must decide where its events live, and tests use RunServer/RunCluster,
	// which pick t.TempDir().
	ErrDirRequired = errors.New("embedded: Dir is required")

	// ErrJetStreamNotStarted is returned (wrapped, with the server's reason)
	// by Start, Restart, StartCluster and RestartNode when the server came up
	// but JetStream did not, for example because the store directory cannot
	// be created. The server is shut down rather than left running without
	// JetStream.
	ErrJetStreamNotStarted = errors.New("embedded: JetStream did not start")

	// ErrNotReady is returned (wrapped) when a server does not accept
	// connections within its start timeout, or failed to start for another
	// reason (a listener could not bind, invalid Configure changes, ...).
	ErrNotReady = errors.New("embedded: server did not become ready")
)

// dirRequiredError names the missing field and matches ErrDirRequired.
type dirRequiredError struct{ field string }

func (e dirRequiredError) Error() string {
	return "embedded: " + e.field + " is required (the JetStream store directory; tests can use RunServer/RunCluster, which use t.TempDir)"
}

func (e dirRequiredError) Is(target error) bool { return target == ErrDirRequired }

// Options configure one embedded server. The zero value of every field is a
// documented default, except Dir, which Start requires.
type Options struct {
	// Name is the server name (also the JetStream node identity). Default: a
	// generated unique name "embedded-<random hex>", kept across Restart.
	Name string

	// Dir is the JetStream store directory; the server keeps its data in
	// Dir/jetstream and creates it if needed. Required: Start returns an
	// error matching ErrDirRequired when it is empty.
	Dir string

	// Host is the client listen address. Default DefaultHost (127.0.0.1).
	Host string

	// Port is the client port. 0 or -1 (the default) picks a random free
	// port; the bound port is remembered and reused by Restart. Ignored
	// when InProcessOnly is set.
	Port int

	// InProcessOnly starts the server without any network listener
	// (nats-server DontListen). Clients connect with Server.Connect, or with
	// nats.InProcessServer(s) where s is the *Server. ClientURL is then "".
	InProcessOnly bool

	// Sync is the fsync policy of JetStream data. Default SyncAlways.
	Sync SyncPolicy

	// MaxMemory and MaxStore are the JetStream memory and disk limits in
	// bytes. 0 (the default) lets the server choose (75% of RAM and of the
	// free disk space, respectively).
	MaxMemory, MaxStore int64

	// Logging routes the server's log (notices, warnings, errors; no debug
	// or trace) to stderr, prefixed with the server name. Default: quiet.
	Logging bool

	// StartTimeout bounds how long Start and Restart wait for the server to
	// accept connections. Default DefaultStartTimeout (10s).
	StartTimeout time.Duration

	// Configure, if set, is called last on the nats-server options built from
	// the fields above, before the server is created, on every start
	// (including Restart): an escape hatch for accounts, users, TLS,
	// monitoring, leaf nodes, etc. It must not turn JetStream off: Start
	// fails without it.
	Configure func(*server.Options)
}

// withDefaults fills in defaults; opts.Dir must already be checked.
func (opts Options) withDefaults() Options {
	if opts.Name == "" {
		opts.Name = "embedded-" + randomHex(6)
	}
	if opts.Host == "" {
		opts.Host = DefaultHost
	}
	if opts.Port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = DefaultStartTimeout
	}
	return opts
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}

// Server is an in-process nats-server with JetStream enabled.
//
// All methods are safe for concurrent use. Restart replaces the underlying
// *server.Server; connections made with Connect reconnect to the new one on
// their own (nats.go reconnect logic), including in-process connections.
type Server struct {
	opts Options // with defaults; fixed after Start

	mu      sync.Mutex
	ns      *server.Server // current (or last) nats-server
	running bool
	port    int    // client port to use on the next start (actual port once bound)
	url     string // client URL, "" when InProcessOnly
}

// Start starts a server with JetStream and returns once it accepts
// connections and JetStream is enabled.
//
// Errors: ErrDirRequired when opts.Dir is empty; ErrJetStreamNotStarted
// (with the server's reason, e.g. the store directory cannot be created)
// when JetStream did not start; ErrNotReady when the server failed to start
// or to accept connections within opts.StartTimeout. On error nothing is
// left running.
func Start(opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, dirRequiredError{field: "Options.Dir"}
	}
	opts = opts.withDefaults()
	s := &Server{opts: opts, port: opts.Port}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.startLocked(); err != nil {
		return nil, err
	}
	return s, nil
}

// serverOptions builds the nats-server options for the next start.
func (s *Server) serverOptions() *server.Options {
	o := &server.Options{
		ServerName:         s.opts.Name,
		Host:               s.opts.Host,
		Port:               s.port,
		DontListen:         s.opts.InProcessOnly,
		JetStream:          true,
		StoreDir:           s.opts.Dir,
		JetStreamMaxMemory: s.opts.MaxMemory,
		JetStreamMaxStore:  s.opts.MaxStore,
		NoLog:              true,
		NoSigs:             true,
	}
	s.opts.Sync.apply(o)
	if s.opts.Configure != nil {
		s.opts.Configure(o)
	}
	return o
}

// startLocked creates and starts a nats-server; s.mu must be held.
func (s *Server) startLocked() error {
	o := s.serverOptions()
	name := s.opts.Name
	ns, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("%w: server %q: invalid options: %w", ErrNotReady, name, err)
	}
	var w io.Writer
	if s.opts.Logging {
		w = os.Stderr
	}
	lg := newServerLogger(w, name)
	ns.SetLogger(lg, false, false)

	fail := func(err error) error {
		ns.Shutdown()
		ns.WaitForShutdown()
		s.ns = ns
		s.running = false
		return err
	}

	// Start runs synchronously up to and including enabling JetStream, and
	// returns early after a Fatalf (recorded by our logger, which does not
	// exit) when that fails. Note that JetStreamEnabled() can report true
	// after a failed enable (nats-server 2.15 publishes its JetStream state
	// before checking the store dir), so the fatal message decides.
	// Listeners start in the background; their failures arrive as Fatalf too.
	ns.Start()
	checkFatal := func() error {
		f, aboutJS := lg.fatalMsg()
		switch {
		case f == "":
			return nil
		case aboutJS:
			return fmt.Errorf("%w on server %q (store dir %q): %s", ErrJetStreamNotStarted, name, o.StoreDir, f)
		default:
			return fmt.Errorf("%w: server %q: %s", ErrNotReady, name, f)
		}
	}
	checkJS := func() error {
		if ns.JetStreamEnabled() {
			return nil
		}
		reason := lg.reason()
		if reason == "" {
			reason = "JetStream is not enabled (did Configure turn it off?)"
		}
		return fmt.Errorf("%w on server %q (store dir %q): %s", ErrJetStreamNotStarted, name, o.StoreDir, reason)
	}
	if err := checkFatal(); err != nil {
		return fail(err)
	}
	if err := checkJS(); err != nil {
		return fail(err)
	}

	deadline := time.Now().Add(s.opts.StartTimeout)
	for !ns.ReadyForConnections(50 * time.Millisecond) {
		if err := checkFatal(); err != nil {
			return fail(err)
		}
		if time.Now().After(deadline) {
			reason := lg.reason()
			if reason == "" {
				reason = "timed out"
			}
			return fail(fmt.Errorf("%w: server %q not accepting connections after %s: %s", ErrNotReady, name, s.opts.StartTimeout, reason))
		}
	}
	if err := checkFatal(); err != nil {
		return fail(err)
	}
	if err := checkJS(); err != nil {
		return fail(err)
	}

	s.url = ""
	if !o.DontListen {
		addr, ok := ns.Addr().(*net.TCPAddr)
		if !ok || addr == nil {
			return fail(fmt.Errorf("%w: server %q has no client listener", ErrNotReady, name))
		}
		s.port = addr.Port
		host := o.Host
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			host = DefaultHost
		}
		scheme := "nats"
		if o.TLSConfig != nil {
			scheme = "tls"
		}
		s.url = scheme + "://" + net.JoinHostPort(host, strconv.Itoa(addr.Port))
	}
	s.ns = ns
	s.running = true
	return nil
}

// ClientURL returns the URL clients connect to, such as
// "nats://127.0.0.1:53187" ("tls://..." when Configure set a TLS config;
// an unspecified Host such as 0.0.0.0 is reported as 127.0.0.1), or "" when
// the server is InProcessOnly. The URL
// (and port) stays the same across Restart.
func (s *Server) ClientURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// Connect connects a new client to the server: in-process when the server
// is InProcessOnly, otherwise to ClientURL. opts are passed to nats.Connect
// after the connection target, so they can set a name, reconnect policy,
// etc. The caller owns (and must close) the connection.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	if s.opts.InProcessOnly {
		all := append([]nats.Option{nats.InProcessServer(s)}, opts...)
		return nats.Connect("", all...)
	}
	return nats.Connect(s.ClientURL(), opts...)
}

// InProcessConn returns a new in-process connection to the current
// nats-server, implementing nats.InProcessConnProvider: pass the *Server to
// nats.InProcessServer and the client reconnects to the new nats-server after
// a Restart. It works whether or not the server listens on TCP, and fails
// while the server is stopped.
func (s *Server) InProcessConn() (net.Conn, error) {
	s.mu.Lock()
	ns, running := s.ns, s.running
	s.mu.Unlock()
	if !running {
		return nil, fmt.Errorf("embedded: server %q is not running", s.opts.Name)
	}
	return ns.InProcessConn()
}

// NATS returns the underlying nats-server, for inspection (JetStreamConfig,
// Jsz, JetStreamIsStreamLeader, ...). After Restart it returns the new
// server; after Shutdown (or a failed Restart) the stopped one.
func (s *Server) NATS() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ns
}

// Name returns the server name (fixed for the life of the Server).
func (s *Server) Name() string { return s.opts.Name }

// Dir returns the JetStream store directory given in Options.Dir.
func (s *Server) Dir() string { return s.opts.Dir }

// Options returns the options the server was started with, defaults filled
// in (Port is the configured one; see ClientURL for the bound port).
func (s *Server) Options() Options { return s.opts }

// Running reports whether the server is started and not shut down.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// Shutdown stops the server and waits until it has fully stopped (listeners
// closed, JetStream stores flushed and closed). Clients are disconnected. It
// is idempotent and safe to call concurrently; Restart starts it again.
func (s *Server) Shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdownLocked()
}

func (s *Server) shutdownLocked() {
	if s.ns == nil {
		return
	}
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	s.running = false
}

// Restart shuts the server down (if running) and starts it again with the
// same options, name and store directory, so JetStream data survives, and on
// the same client port (the one bound by the first start), so connected
// clients reconnect. A port held by someone else for a moment (the
// ephemeral port of an outgoing connection can be any free port) is tried
// again for about a second. It returns the same errors as Start; after an
// error the server is stopped and Restart may be called again.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutdownLocked()
	for try := 1; ; try++ {
		err := s.startLocked()
		if err == nil || try == restartAttempts || !addrInUse(err) {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// restartAttempts bounds Restart's tries on a port in use.
const restartAttempts = 5
