package kv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/esnats/esnats/internal/jsapi"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/esnats/esnats/stream"
)

// Defaults of Config.
const (
	// DefaultBucket is the snapshot bucket used when Config.Bucket is empty.
	DefaultBucket = "esnats_snapshots"
	// DefaultCheckpointBucket is the checkpoint bucket used by
	// NewCheckpoints when Config.Bucket is empty.
	DefaultCheckpointBucket = "esnats_checkpoints"
	// DefaultMaxValueSize is the largest value (encoded envelope and the
	// headers of the write) a bucket accepts when Config.MaxValueSize is 0:
	// 1 MiB, the NATS server's default max payload.
	DefaultMaxValueSize int32 = 1 << 20
	// MaxReplicas is the largest Config.Replicas JetStream accepts.
	MaxReplicas = 5
)

// writeReserve is the room Put and Set leave in MaxValueSize for the headers
// of a compare-and-set write (NATS/1.0 and Nats-Expected-Last-Subject-Sequence
// with a 20-digit revision take 73 bytes): the server counts headers against
// the bucket's max message size.
const writeReserve = 128

// Config describes a snapshot (or checkpoint) bucket. The zero value of each
// field means its documented default; Validate reports values that cannot
// work. A Config is a plain value, safe to copy and share.
type Config struct {
	// Bucket is the KV bucket name: 1 to 128 ASCII letters, digits, '-' and
	// '_'. Default DefaultBucket ("esnats_snapshots"), or
	// DefaultCheckpointBucket for NewCheckpoints.
	Bucket string

	// Replicas is the number of copies of the bucket in a cluster, 1 to 5.
	// Default 1 (development); use 3 in production.
	Replicas int

	// Compression turns on S2 compression of the bucket's stream on disk.
	// Default false.
	Compression bool

	// History is the number of revisions kept per key, 1 to 64. Default 1:
	// a snapshot replaces the previous one.
	History int

	// MaxValueSize is the largest KV value the bucket accepts, in bytes,
	// counting the encoded envelope and the headers of the write. Put
	// refuses a snapshot whose envelope is larger than MaxValueSize minus
	// 128 bytes with an error matching stream.ErrTooLarge, before any I/O.
	// Default DefaultMaxValueSize (1 MiB). Negative is invalid.
	MaxValueSize int32

	// Memory keeps the bucket in memory instead of files (for tests: its
	// content is lost when the server stops). Default false: file storage.
	Memory bool

	// TTL, when positive, expires each value that long after it was
	// written. Default 0: values never expire. Negative is invalid.
	TTL time.Duration

	// Description is the bucket's description, shown by the nats CLI.
	// Optional.
	Description string

	// TracerProvider traces the snapshot reads and writes of a Store
	// (spans esnats.snapshot.get and esnats.snapshot.put, children of the
	// caller's span: a load, or the command that took the snapshot; see
	// docs/observability.md). It is not part of the bucket's configuration.
	// Default: the global provider (otel.GetTracerProvider), a no-op until
	// the application sets one.
	TracerProvider trace.TracerProvider
}

// Validate reports whether c describes a bucket that can be created. The
// error wraps ErrInvalidConfig. Validate does no I/O.
func (c Config) Validate() error {
	if c.Bucket != "" {
		if err := stream.ValidateName("bucket", c.Bucket); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, unprefixed{err})
		}
	}
	switch {
	case c.Replicas < 0 || c.Replicas > MaxReplicas:
		return fmt.Errorf("%w: Replicas %d is not between 1 and %d (0 = default 1)", ErrInvalidConfig, c.Replicas, MaxReplicas)
	case c.History < 0 || c.History > jetstream.KeyValueMaxHistory:
		return fmt.Errorf("%w: History %d is not between 1 and %d (0 = default 1)", ErrInvalidConfig, c.History, jetstream.KeyValueMaxHistory)
	case c.MaxValueSize < 0:
		return fmt.Errorf("%w: MaxValueSize %d is negative (0 = default %d)", ErrInvalidConfig, c.MaxValueSize, DefaultMaxValueSize)
	case c.MaxValueSize > 0 && c.MaxValueSize <= writeReserve:
		return fmt.Errorf("%w: MaxValueSize %d leaves no room for a value (the write's headers take up to %d bytes)", ErrInvalidConfig, c.MaxValueSize, writeReserve)
	case c.TTL < 0:
		return fmt.Errorf("%w: TTL %s is negative (0 = no expiry)", ErrInvalidConfig, c.TTL)
	}
	return nil
}

// withDefaults returns c with its zero fields set to their defaults, using
// bucket as the default bucket name.
func (c Config) withDefaults(bucket string) Config {
	if c.Bucket == "" {
		c.Bucket = bucket
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.History == 0 {
		c.History = 1
	}
	if c.MaxValueSize == 0 {
		c.MaxValueSize = DefaultMaxValueSize
	}
	return c
}

// keyValueConfig is the JetStream KV configuration of c (with defaults).
func (c Config) keyValueConfig() jetstream.KeyValueConfig {
	storage := jetstream.FileStorage
	if c.Memory {
		storage = jetstream.MemoryStorage
	}
	return jetstream.KeyValueConfig{
		Bucket:       c.Bucket,
		Description:  c.Description,
		MaxValueSize: c.MaxValueSize,
		History:      uint8(c.History),
		TTL:          c.TTL,
		Storage:      storage,
		Replicas:     c.Replicas,
		Compression:  c.Compression,
	}
}

// openBucket creates or updates (create) or binds to (open) the bucket of
// cfg, which has its defaults, and returns it with the largest envelope a
// write may carry: the configured MaxValueSize, the bucket's own limit and
// the connection's max payload, whichever is smallest, less writeReserve.
func openBucket(ctx context.Context, js jetstream.JetStream, cfg Config, create bool) (jetstream.KeyValue, int, error) {
	var (
		kv  jetstream.KeyValue
		err error
	)
	if create {
		// Idempotent: an attempt whose reply was lost is retried.
		err = jsapi.Retry(ctx, js.Options().DefaultTimeout, func(ctx context.Context) (err error) {
			kv, err = js.CreateOrUpdateKeyValue(ctx, cfg.keyValueConfig())
			return err
		})
		if err != nil {
			return nil, 0, &Error{Op: "create bucket", Bucket: cfg.Bucket, Err: err}
		}
	} else {
		err = jsapi.Retry(ctx, js.Options().DefaultTimeout, func(ctx context.Context) (err error) {
			kv, err = js.KeyValue(ctx, cfg.Bucket)
			return err
		})
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, 0, &Error{Op: "open bucket", Bucket: cfg.Bucket, Err: fmt.Errorf("%w: %w (create it with NewStore)", stream.ErrNotFound, err)}
		}
		if err != nil {
			return nil, 0, &Error{Op: "open bucket", Bucket: cfg.Bucket, Err: err}
		}
	}
	if err := waitReadable(ctx, js, kv); err != nil {
		return nil, 0, &Error{Op: "open bucket", Bucket: cfg.Bucket, Err: err}
	}
	limit := int64(cfg.MaxValueSize)
	status, err := kv.Status(ctx)
	if err != nil {
		return nil, 0, &Error{Op: "open bucket", Bucket: cfg.Bucket, Err: err}
	}
	if bs, ok := status.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
		if m := int64(bs.StreamInfo().Config.MaxMsgSize); m > 0 && m < limit {
			limit = m
		}
	}
	if nc := js.Conn(); nc != nil {
		if m := nc.MaxPayload(); m > 0 && m < limit {
			limit = m
		}
	}
	return kv, max(int(limit)-writeReserve, 0), nil
}

// readableProbeKey is the key waitReadable reads; it never holds a value.
const readableProbeKey = "_esnats_probe"

// waitReadable waits until the bucket answers reads. Values are read with
// direct gets, answered by the stream's replicas once they are current; for
// a moment after a replicated bucket is created (or while it has no leader)
// nobody answers. It waits at most js's default timeout (5s) or until ctx
// ends.
func waitReadable(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) error {
	ctx, cancel := context.WithTimeout(ctx, js.Options().DefaultTimeout)
	defer cancel()
	delay := 5 * time.Millisecond
	for {
		_, err := kv.Get(ctx, readableProbeKey)
		if err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		if !errors.Is(err, nats.ErrNoResponders) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no replica answers reads yet (no stream leader?): %w", err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// unprefixed is err without the leading "esnats: " of its text, for an
// error quoted inside another esnats error; errors.Is and As still see err.
type unprefixed struct{ err error }

func (u unprefixed) Error() string { return strings.TrimPrefix(u.err.Error(), "esnats: ") }
func (u unprefixed) Unwrap() error { return u.err }
