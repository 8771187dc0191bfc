package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/esnats/esnats/kv"
	"github.com/esnats/esnats/stream"
)

const defaultSnapshotBucket = kv.DefaultBucket

// snapshotRecord is one snapshot as the CLI shows it.
type snapshotRecord struct {
	Key           string    `json:"key"`
	AggregateType string    `json:"aggregate_type"`
	AggregateID   string    `json:"aggregate_id"`
	Version       uint64    `json:"version"`
	Sequence      uint64    `json:"sequence"`
	StateType     string    `json:"state_type"`
	Schema        int       `json:"schema"`
	ContentType   string    `json:"content_type"`
	Size          int       `json:"size"`
	Taken         time.Time `json:"taken,omitzero"`
	Updated       time.Time `json:"updated"`
	Revision      uint64    `json:"revision"`
	Error         string    `json:"error,omitempty"`
}

func snapshotOf(key string, entry jetstream.KeyValueEntry) snapshotRecord {
	r := snapshotRecord{Key: key, Size: len(entry.Value()), Updated: entry.Created(), Revision: entry.Revision()}
	agg, err := kv.ParseKey(key)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.AggregateType, r.AggregateID = agg.Type, agg.ID
	snap, err := kv.DecodeSnapshot(entry.Value(), agg)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.Version, r.Sequence, r.StateType, r.Schema, r.ContentType, r.Taken = snap.Version, snap.Sequence, snap.StateType, snap.SchemaVersion, snap.ContentType, snap.Time
	return r
}

// bucketCall is the request that opens bucket.
func bucketCall(c *connection, bucket string) call {
	return call{subjects: []string{c.api + "STREAM.INFO.KV_" + bucket}}
}

// getCall is a read of a key of bucket: a direct get, or a message get on
// a bucket without direct gets.
func getCall(c *connection, bucket string) call {
	return call{subjects: []string{c.api + "DIRECT.GET.KV_" + bucket + ".>", c.api + "STREAM.MSG.GET.KV_" + bucket}}
}

// keyValue opens bucket within --timeout.
func keyValue(ctx context.Context, c *connection, bucket string) (b jetstream.KeyValue, err error) {
	err = c.do(ctx, bucketCall(c, bucket), func(ctx context.Context) error {
		b, err = c.js.KeyValue(ctx, bucket)
		return err
	})
	return b, err
}

// getKey reads key from bucket b within --timeout.
func getKey(ctx context.Context, c *connection, b jetstream.KeyValue, bucket, key string) (e jetstream.KeyValueEntry, err error) {
	err = c.do(ctx, getCall(c, bucket), func(ctx context.Context) error {
		e, err = b.Get(ctx, key)
		return err
	})
	return e, err
}

// openBucket opens a snapshot bucket, or says it does not exist.
func openBucket(ctx context.Context, c *connection, bucket string) (jetstream.KeyValue, error) {
	b, err := keyValue(ctx, c, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, withCode(ExitNotFound, fmt.Errorf("no snapshot bucket %q on %s (snapshots are written by repositories configured with kv snapshots; --bucket names another)", bucket, c.url))
	}
	if err != nil {
		return nil, fmt.Errorf("opening bucket %q: %w", bucket, err)
	}
	return b, nil
}

// findSnapshot returns agg's snapshot in bucket, or nil when there is none
// (also when the bucket does not exist).
func (a *app) findSnapshot(ctx context.Context, c *connection, bucket string, agg stream.Aggregate) (*snapshotRecord, error) {
	key, err := kv.Key(agg)
	if err != nil {
		return nil, withCode(ExitUsage, err)
	}
	b, err := keyValue(ctx, c, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening bucket %q: %w", bucket, err)
	}
	entry, err := getKey(ctx, c, b, bucket, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading snapshot %s from bucket %q: %w", key, bucket, err)
	}
	r := snapshotOf(key, entry)
	return &r, nil
}

func (a *app) snapshotsCmd() *cobra.Command {
	var (
		asJSON bool
		bucket string
	)
	cmd := &cobra.Command{
		Use:   "snapshots [TYPE]",
		Short: "List snapshots (of one aggregate type) with version, position and size",
		Long: `List the snapshots in a snapshot bucket (default esnats_snapshots), optionally
of one aggregate type: each with the version and stream sequence it holds,
its state type and schema, and its size. A value that does not decode as a
snapshot is listed with the reason.`,
		Args: args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := a.conn.connect(ctx, "esnats snapshots", false)
			if err != nil {
				return err
			}
			defer c.Close()
			b, err := openBucket(ctx, c, bucket)
			if err != nil {
				return err
			}
			filter := ">"
			if len(args) == 1 {
				if err := stream.ValidateName("aggregate type", args[0]); err != nil {
					return withCode(ExitUsage, err)
				}
				filter = args[0] + ".*"
			}
			keys, err := listKeys(ctx, c, b, bucket, filter)
			if err != nil {
				return fmt.Errorf("listing bucket %q: %w", bucket, err)
			}
			rows := []snapshotRecord{}
			for _, k := range keys {
				entry, err := getKey(ctx, c, b, bucket, k)
				if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
					continue // deleted meanwhile
				}
				if err != nil {
					return fmt.Errorf("reading %s from bucket %q: %w", k, bucket, err)
				}
				rows = append(rows, snapshotOf(k, entry))
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(w, rows)
			}
			if len(rows) == 0 {
				fmt.Fprintf(w, "no snapshots in bucket %s\n", bucket)
				return nil
			}
			t := newTable(w, "AGGREGATE", "VERSION", "SEQ", "STATE", "SCHEMA", "SIZE", "TAKEN", "PROBLEM")
			for _, r := range rows {
				agg := r.AggregateType + "/" + r.AggregateID
				if r.AggregateType == "" {
					agg = r.Key
				}
				problem := r.Error
				if problem == "" {
					problem = "-"
				}
				t.row(agg, r.Version, r.Sequence, r.StateType, r.Schema, humanBytes(uint64(r.Size)), shortTime(r.Taken), problem)
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&bucket, "bucket", defaultSnapshotBucket, "snapshot bucket")
	return cmd
}

// listKeys lists the keys of bucket b that match filter, sorted. The
// listing is a KV watcher, an ordered consumer on the bucket's stream: its
// creation must be answered within --timeout, and each key (and the end of
// the listing) must come within --timeout of the one before. A refused
// creation fails at once (see connection.do).
func listKeys(ctx context.Context, c *connection, b jetstream.KeyValue, bucket, filter string) ([]string, error) {
	stream := "KV_" + bucket
	// The watcher's context is its subscription's lifetime (nats.go
	// unsubscribes when it ends), so it cannot be the bounded one of the
	// creation: that one cancels it only while the creation is waiting.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var w jetstream.KeyWatcher
	err := c.do(ctx, call{
		subjects: []string{c.api + "CONSUMER.CREATE." + stream + ".>"},
		why:      "a key listing creates a consumer on the bucket's stream " + stream,
	}, func(ctx context.Context) error {
		type created struct {
			w   jetstream.KeyWatcher
			err error
		}
		ch := make(chan created, 1)
		go func() {
			w, err := b.WatchFiltered(wctx, []string{filter}, jetstream.IgnoreDeletes(), jetstream.MetaOnly())
			ch <- created{w, err}
		}()
		select {
		case r := <-ch:
			w = r.w
			return r.err
		case <-ctx.Done():
			cancel() // ends the creation's request
			if r := <-ch; r.err == nil {
				_ = r.w.Stop()
			}
			return ctx.Err()
		}
	})
	if err != nil {
		return nil, err
	}
	defer stopWatcher(ctx, c, w, stream)
	var keys []string
	idle := time.NewTimer(c.timeout)
	defer idle.Stop()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("the key listing ended before its last key (the connection closed)")
			}
			if e == nil { // the initial values are all in
				sort.Strings(keys)
				return slices.Compact(keys), nil
			}
			keys = append(keys, e.Key())
			idle.Reset(c.timeout)
		case <-idle.C:
			return nil, fmt.Errorf("the key listing stalled: no key for %s (--timeout), %d listed so far", c.timeout, len(keys))
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// stopWatcher stops a key listing, which deletes its consumer: it waits
// for that within --timeout, and not at all once the server refused the
// delete (a user allowed to list but not to delete; the server removes the
// consumer by itself later). The refusal is printed, once.
func stopWatcher(ctx context.Context, c *connection, w jetstream.KeyWatcher, stream string) {
	cl := c.errs.claim(c.matcher(call{subjects: []string{c.api + "CONSUMER.DELETE." + stream + ".>"}}))
	defer c.errs.release(cl, false)
	done := make(chan struct{})
	go func() {
		_ = w.Stop()
		close(done)
	}()
	t := time.NewTimer(c.timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-cl.hit:
	case <-t.C:
	case <-ctx.Done():
	}
}
