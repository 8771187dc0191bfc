// Package app is the service example's library: Serve puts the cart domain
// (package cart) behind a NATS micro service whose endpoints take JSON
// commands over request/reply and run them on an aggregate.Repository, and
// RunWorker keeps a read model of all carts in a JetStream KV bucket and
// answers queries on it. cmd/cart-api and cmd/cart-worker run them as two
// processes; any number of each may run (requests are load-balanced over a
// queue group, and one worker at a time applies events while the others
// stand by and answer queries).
//
// # Subjects (Config.Prefix "cart")
//
//	cart.add       {"cart":"alice","sku":"apple","quantity":2}  -> CartState
//	cart.remove    {"cart":"alice","sku":"apple"}               -> CartState
//	cart.checkout  {"cart":"alice"}                             -> CartState
//	cart.get       {"cart":"alice"}                             -> CartState (from the event store)
//	cart.summary   {"cart":"alice"}                             -> Summary   (from the read model)
//	cart.sales     {}                                           -> Sales     (from the read model)
//
// Errors are micro service errors: the Nats-Service-Error-Code header holds
// "400" (a malformed request, or a cart rule refusing the command), "404"
// (no such cart), "409" (the cart kept changing under the command until the
// retries ran out) or "500" (anything else), the Nats-Service-Error header
// the reason, and the body an ErrorBody with the same.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/stream"
)

// Defaults applied to a zero Config.
const (
	DefaultStore          = "shop"
	DefaultPrefix         = "cart"
	DefaultRequestTimeout = 10 * time.Second
	// DefaultURL is where the mains connect when NATS_URL is not set: the
	// server `esnats dev` runs.
	DefaultURL = "nats://127.0.0.1:4222"
)

// Config configures Serve and RunWorker; both processes must use the same
// Store, Prefix and Replicas. The zero value of every field means its
// documented default.
type Config struct {
	// Store names the event store (the JetStream stream, whose subjects
	// are <Store>.>); the snapshots bucket is <Store>_snapshots and the read
	// model's bucket <Store>_cart_views. Default "shop".
	Store string
	// Prefix is the first token of the service's subjects (<Prefix>.add,
	// ...). Default "cart".
	Prefix string
	// Replicas is the replication factor of the stream and the buckets: 1
	// on a single server (esnats dev), 3 on a 3-node cluster. Default 1.
	Replicas int
	// MaxAttempts bounds how often a command that meets a concurrent
	// change of its cart is run again before the request fails with 409.
	// Default aggregate.DefaultMaxAttempts (10).
	MaxAttempts int
	// RequestTimeout bounds the handling of one request. Default 10s.
	RequestTimeout time.Duration
	// Consumer tunes the read model's delivery (batch size, fail-over
	// time, retries); its zero fields mean the consumers defaults, except
	// Retries (default 10). The worker sets Name and the filters, and
	// always uses OnFailure consumers.Stop: an event the read model keeps
	// failing on stops the projection, and the worker starts it again
	// after a pause, so that no event is skipped (a poison event blocks
	// the read model loudly: in the log and in its lag).
	Consumer consumers.Config
	// Logger receives what an operator needs. Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Store == "" {
		c.Store = DefaultStore
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.Consumer.Retries <= 0 {
		c.Consumer.Retries = 10
	}
	c.Consumer.OnFailure = consumers.Stop
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports a configuration that cannot work, before any I/O.
func (c Config) Validate() error {
	c = c.withDefaults()
	if err := stream.ValidateName("store name", c.Store); err != nil {
		return fmt.Errorf("app: Config.Store: %w", err)
	}
	if err := stream.ValidateName("subject prefix", c.Prefix); err != nil {
		return fmt.Errorf("app: Config.Prefix: %w", err)
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return fmt.Errorf("app: Config.Replicas must be 1 to 5, got %d", c.Replicas)
	}
	if c.MaxAttempts < 0 {
		return fmt.Errorf("app: Config.MaxAttempts must not be negative, got %d", c.MaxAttempts)
	}
	return nil
}

// snapshotsBucket and viewsBucket name the KV buckets of the store.
func (c Config) snapshotsBucket() string { return c.Store + "_snapshots" }
func (c Config) viewsBucket() string     { return c.Store + "_cart_views" }

// subject returns <Prefix>.<endpoint>.
func (c Config) subject(endpoint string) string { return c.Prefix + "." + endpoint }

// FromEnv reads the mains' settings from the environment through getenv
// (os.Getenv): NATS_URL, the server URL or a comma-separated list of them
// (default DefaultURL), and REPLICAS (default 1). The rest of the Config is
// left zero (its defaults).
func FromEnv(getenv func(string) string) (url string, cfg Config, err error) {
	var urls []string
	for _, u := range strings.Split(getenv("NATS_URL"), ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	url = strings.Join(urls, ",")
	if url == "" {
		url = DefaultURL
	}
	cfg.Replicas = 1
	if r := strings.TrimSpace(getenv("REPLICAS")); r != "" {
		n, err := strconv.Atoi(r)
		if err != nil || n < 1 || n > 5 {
			return "", Config{}, fmt.Errorf("REPLICAS must be a number from 1 to 5, got %q", r)
		}
		cfg.Replicas = n
	}
	return url, cfg, nil
}

// Connect connects to url (one URL or a comma-separated list) as name. It
// never gives up: when no server answers yet it returns a connection that
// keeps trying (so a process may start before its servers), and a lost
// connection is retried forever, every second; the events are logged on log.
func Connect(url, name string, log *slog.Logger) (*nats.Conn, error) {
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.RetryOnFailedConnect(true),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("connected to NATS", "server", nc.ConnectedUrlRedacted(), "server_name", nc.ConnectedServerName())
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", "server", nc.ConnectedUrlRedacted(), "server_name", nc.ConnectedServerName())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("NATS error", "subject", subject, "error", err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", url, err)
	}
	if !nc.IsConnected() {
		log.Warn("no NATS server answers yet; retrying every second", "url", url)
	}
	return nc, nil
}

// Logger returns the mains' logger: text on stderr, at LOG_LEVEL (debug,
// info, warn, error; default info) read through getenv.
func Logger(getenv func(string) string) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(getenv("LOG_LEVEL"))); err != nil {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// Drain drains nc (subscriptions finish the messages they hold, pending
// publishes are flushed) and waits up to timeout for it to close; then it
// closes it anyway. For the mains' shutdown.
func Drain(nc *nats.Conn, timeout time.Duration) {
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	deadline := time.Now().Add(timeout)
	for !nc.IsClosed() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	nc.Close()
}

// Main is the body of the example's programs (cmd/cart-api, cmd/cart-worker):
// it reads the environment (FromEnv, Logger), connects as name (reconnecting
// forever), runs body until SIGINT or SIGTERM, drains the connection, and
// exits with status 1 if anything failed.
func Main(name string, body func(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cfg Config) error) {
	log := Logger(os.Getenv)
	err := func() error {
		url, cfg, err := FromEnv(os.Getenv)
		if err != nil {
			return err
		}
		cfg.Logger = log
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		log.Info(name+" starting", "nats_url", url, "replicas", cfg.Replicas)
		nc, err := Connect(url, name, log)
		if err != nil {
			return err
		}
		defer Drain(nc, 5*time.Second)
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		return body(ctx, nc, js, cfg)
	}()
	if err != nil {
		log.Error(name+" failed", "error", err)
		os.Exit(1)
	}
}
