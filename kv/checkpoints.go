package kv

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/stream"
)

// Checkpoints keeps named positions (for example a projection's last
// handled stream sequence) in a JetStream KV bucket, one key per name, with
// compare-and-set writes so that two workers cannot both advance the same
// checkpoint from the same revision.
//
// The key of a name is stream.EncodeID(name), so any non-empty UTF-8 name of
// at most 512 bytes works and ordinary names ("orders-summary") are the key
// itself. The value is the position in decimal ASCII ("1234"), readable with
// `nats kv get esnats_checkpoints orders-summary`.
//
// All methods are safe for concurrent use.
type Checkpoints struct {
	kv     jetstream.KeyValue
	bucket string
}

// NewCheckpoints creates the checkpoint bucket described by cfg (default
// name DefaultCheckpointBucket, "esnats_checkpoints"), or updates an
// existing one to cfg, and returns a Checkpoints on it. It is idempotent.
// MaxValueSize is irrelevant to checkpoints (values are at most 20 bytes).
// Errors are those of NewStore.
func NewCheckpoints(ctx context.Context, js jetstream.JetStream, cfg Config) (*Checkpoints, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults(DefaultCheckpointBucket)
	kv, _, err := openBucket(ctx, js, cfg, true)
	if err != nil {
		return nil, err
	}
	return &Checkpoints{kv: kv, bucket: cfg.Bucket}, nil
}

// Bucket returns the name of the checkpoint bucket.
func (c *Checkpoints) Bucket() string { return c.bucket }

// checkpointKey returns the key of a checkpoint name.
func checkpointKey(name string) (string, error) {
	key, err := stream.EncodeID(name)
	if err != nil {
		return "", fmt.Errorf("checkpoint name: %w", err)
	}
	return key, nil
}

// Get returns the checkpoint's position and its KV revision; 0, 0 and no
// error when it has never been set (or was deleted). Pass rev to Set to
// advance it.
//
// Errors: an invalid name (stream.ErrInvalidID, before any I/O); a stored
// value that is not a decimal position (ErrCorruptCheckpoint, with rev set
// so that Set can overwrite it); otherwise the server's or the
// connection's. All but the first are an *Error naming the bucket and key.
func (c *Checkpoints) Get(ctx context.Context, name string) (pos uint64, rev uint64, err error) {
	key, err := checkpointKey(name)
	if err != nil {
		return 0, 0, err
	}
	entry, err := c.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, &Error{Op: "get checkpoint", Bucket: c.bucket, Key: key, Err: err}
	}
	pos, err = strconv.ParseUint(string(entry.Value()), 10, 64)
	if err != nil {
		return 0, entry.Revision(), &Error{Op: "get checkpoint", Bucket: c.bucket, Key: key, Revision: entry.Revision(),
			Err: fmt.Errorf("%w: value %.32q is not a decimal position", ErrCorruptCheckpoint, entry.Value())}
	}
	return pos, entry.Revision(), nil
}

// Set stores pos as the checkpoint's position if its KV revision is still
// expectedRev (0: if it has never been set, or was deleted), and returns the
// new revision. Positions may go down (a rebuild starts again from 0); only
// the revision is checked.
//
// When the checkpoint changed since expectedRev was read (another worker
// set it), nothing is written and the error matches stream.ErrConflict:
// Get it again. An invalid name gives an error matching
// stream.ErrInvalidID before any I/O. Errors after I/O are an *Error naming
// the bucket, the key and expectedRev.
func (c *Checkpoints) Set(ctx context.Context, name string, pos uint64, expectedRev uint64) (newRev uint64, err error) {
	key, err := checkpointKey(name)
	if err != nil {
		return 0, err
	}
	value := []byte(strconv.FormatUint(pos, 10))
	if expectedRev == 0 {
		newRev, err = c.kv.Create(ctx, key, value)
	} else {
		newRev, err = c.kv.Update(ctx, key, value, expectedRev)
	}
	switch {
	case err == nil:
		return newRev, nil
	case isCASConflict(err):
		return 0, &Error{Op: "set checkpoint", Bucket: c.bucket, Key: key, Revision: expectedRev,
			Err: fmt.Errorf("%w: the checkpoint is no longer at the expected revision: %w", stream.ErrConflict, err)}
	default:
		return 0, &Error{Op: "set checkpoint", Bucket: c.bucket, Key: key, Revision: expectedRev, Err: err}
	}
}

// Delete removes the checkpoint (with a KV purge); no error when it does not
// exist. The next Set must then expect revision 0. An invalid name gives an
// error matching stream.ErrInvalidID before any I/O.
func (c *Checkpoints) Delete(ctx context.Context, name string) error {
	key, err := checkpointKey(name)
	if err != nil {
		return err
	}
	if _, err := c.kv.Get(ctx, key); errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	} else if err != nil {
		return &Error{Op: "delete checkpoint", Bucket: c.bucket, Key: key, Err: err}
	}
	if err := c.kv.Purge(ctx, key); err != nil {
		return &Error{Op: "delete checkpoint", Bucket: c.bucket, Key: key, Err: err}
	}
	return nil
}
