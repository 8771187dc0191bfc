package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/examples/service/cart"
	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

// NewStore creates the carts' event store (the JetStream stream cfg.Store,
// cfg.Replicas copies), or opens it and brings it to that configuration. It
// is idempotent: the API and the worker both call it when they start.
// Errors: an invalid cfg, and those of stream.NewStore.
func NewStore(ctx context.Context, js jetstream.JetStream, cfg Config) (*stream.Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	reg := stream.NewRegistry()
	cart.Register(reg)
	return stream.NewStore(ctx, js, stream.Config{
		Name:        cfg.Store,
		Registry:    reg,
		Replicas:    cfg.Replicas,
		Description: "esnats service example: shopping carts",
	})
}

// newSnapshots creates or opens the snapshot bucket of the carts.
func newSnapshots(ctx context.Context, js jetstream.JetStream, cfg Config) (*kv.Store, error) {
	return kv.NewStore(ctx, js, kv.Config{
		Bucket:      cfg.snapshotsBucket(),
		Replicas:    cfg.Replicas,
		Description: "esnats service example: snapshots of carts",
	})
}

// setupRetry runs fn until it succeeds, fails for good (see permanent) or
// ctx ends. A process may start before its cluster has elected a JetStream
// leader, or while a node is down: it then waits, saying why, rather than
// exit.
func setupRetry(ctx context.Context, log *slog.Logger, what string, fn func(ctx context.Context) error) error {
	wait := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := fn(actx)
		cancel()
		if err == nil {
			if attempt > 1 {
				log.Info("setup done", "what", what, "attempts", attempt)
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w (last error: %w)", what, ctx.Err(), err)
		}
		if permanent(err) {
			return fmt.Errorf("%s: %w", what, err)
		}
		log.Warn("setup failed, retrying", "what", what, "attempt", attempt, "in", wait, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (last error: %w)", what, ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// permanent reports setup errors that waiting cannot fix: a configuration
// the server refuses (an existing stream configured otherwise, replicas on
// a server that is not clustered, a bad request).
func permanent(err error) bool {
	if errors.Is(err, stream.ErrStoreConfig) || errors.Is(err, stream.ErrInvalidName) || errors.Is(err, kv.ErrInvalidConfig) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		const replicasNotSupported = 10074 // JSStreamReplicasNotSupportedErr
		return apiErr.ErrorCode == replicasNotSupported || apiErr.Code == 400
	}
	return false
}
