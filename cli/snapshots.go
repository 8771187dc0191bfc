package cli

import (
	"context"
	"errors"
	"fmt"
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

// openBucket opens a snapshot bucket, or says it does not exist.
func openBucket(ctx context.Context, c *connection, bucket string) (jetstream.KeyValue, error) {
	b, err := c.js.KeyValue(ctx, bucket)
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
	b, err := c.js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening bucket %q: %w", bucket, err)
	}
	entry, err := b.Get(ctx, key)
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
			lister, err := b.ListKeysFiltered(ctx, filter)
			if err != nil {
				return fmt.Errorf("listing bucket %q: %w", bucket, err)
			}
			var keys []string
			for k := range lister.Keys() {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			rows := []snapshotRecord{}
			for _, k := range keys {
				entry, err := b.Get(ctx, k)
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
