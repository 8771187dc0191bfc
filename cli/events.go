package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/esnats/esnats/stream"
)

// eventQuery selects events of a store.
type eventQuery struct {
	aggType    string
	id         string
	eventTypes []string
	from       uint64
	since      string
	limit      int
	follow     bool
}

// filter returns the subject filter of the query.
func (q eventQuery) filter(prefix string) (string, error) {
	switch {
	case q.id != "" && q.aggType == "":
		return "", usagef("--id needs --type (the aggregate type)")
	case q.id != "":
		tok, err := stream.EncodeID(q.id)
		if err != nil {
			return "", withCode(ExitUsage, err)
		}
		if err := stream.ValidateName("aggregate type", q.aggType); err != nil {
			return "", withCode(ExitUsage, err)
		}
		return prefix + "." + q.aggType + "." + tok, nil
	case q.aggType != "":
		if err := stream.ValidateName("aggregate type", q.aggType); err != nil {
			return "", withCode(ExitUsage, err)
		}
		return prefix + "." + q.aggType + ".*", nil
	default:
		return prefix + ".>", nil
	}
}

// parseSince accepts an RFC 3339 time or a duration back from now ("1h").
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			d = -d
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, usagef("--since %q: want a duration back from now (90s, 1h) or a time (2006-01-02T15:04:05Z)", s)
}

// readEvents delivers the events matching q, in stream order, to emit until
// emit returns false, the matching events are exhausted (unless following)
// or ctx ends. It returns how many matching events are left unread.
//
// A one-off read goes through an ephemeral consumer of its own (created
// within --timeout), fetched from batch after batch; following, through an
// ordered consumer, which nats.go recreates after a reconnect. Either way
// the server deletes the consumer a few seconds after the last pull: a
// read leaves nothing behind, and needs no permission to delete consumers.
// A consumer creation or a pull the server refuses fails at once.
func (a *app) readEvents(ctx context.Context, c *connection, si *storeInfo, q eventQuery, emit func(eventRecord) bool) (left uint64, err error) {
	filter, err := q.filter(si.prefix)
	if err != nil {
		return 0, err
	}
	since, err := parseSince(q.since, time.Now())
	if err != nil {
		return 0, err
	}
	name := si.info.Config.Name
	deliver, startSeq := jetstream.DeliverAllPolicy, uint64(0)
	var startTime *time.Time
	switch {
	case q.from > 0 && !since.IsZero():
		return 0, usagef("--from and --since exclude each other")
	case q.from > 0:
		deliver, startSeq = jetstream.DeliverByStartSequencePolicy, q.from
	case !since.IsZero():
		deliver, startTime = jetstream.DeliverByStartTimePolicy, &since
	}
	reading := call{
		subjects: []string{c.api + "CONSUMER.CREATE." + name + ".>", c.api + "CONSUMER.MSG.NEXT." + name + ".>"},
		why:      "reading events creates a consumer on the store and pulls from it",
	}
	handle := func(msg jetstream.Msg) (cont bool, pending uint64) {
		md, err := msg.Metadata()
		if err != nil {
			return true, 0
		}
		rec := a.decodeEvent(si.prefix, msg.Subject(), md.Sequence.Stream, md.Timestamp, msg.Headers(), msg.Data())
		if len(q.eventTypes) > 0 && !slices.Contains(q.eventTypes, rec.Type) {
			return true, md.NumPending
		}
		return emit(rec), md.NumPending
	}

	if q.follow {
		var cons jetstream.Consumer
		err := c.do(ctx, reading, func(ctx context.Context) (err error) {
			cons, err = c.js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{filter}, DeliverPolicy: deliver, OptStartSeq: startSeq, OptStartTime: startTime,
				InactiveThreshold: 5 * time.Second,
			})
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("reading store %q: %w", name, err)
		}
		// Pulls refused later (permissions changed under a long follow)
		// end it too.
		err = c.watch(ctx, reading, 0, func(ctx context.Context) error {
			it, err := cons.Messages()
			if err != nil {
				return err
			}
			stop := context.AfterFunc(ctx, it.Stop)
			defer stop()
			defer it.Stop()
			for {
				msg, err := it.Next()
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
						return nil
					}
					return err
				}
				if cont, _ := handle(msg); !cont {
					return nil
				}
			}
		})
		if err != nil && ctx.Err() == nil {
			return 0, fmt.Errorf("following store %q: %w", name, err)
		}
		return 0, nil
	}

	var cons jetstream.Consumer
	err = c.do(ctx, reading, func(ctx context.Context) (err error) {
		cons, err = c.js.CreateConsumer(ctx, name, jetstream.ConsumerConfig{
			FilterSubject: filter, DeliverPolicy: deliver, OptStartSeq: startSeq, OptStartTime: startTime,
			AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: 5 * time.Second, MemoryStorage: true, Replicas: 1,
		})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("reading store %q: %w", name, err)
	}
	for {
		// A pull gets what the consumer has at once (an empty batch: no
		// more), and nats.go ends it after a second without an answer. A
		// pull the server refuses gets no answer either: the watch tells
		// the two apart. No timeout of ours: emit may wait for a slow
		// reader of the output.
		var (
			n       int
			stopped bool
			pending uint64
		)
		err := c.watch(ctx, reading, 0, func(ctx context.Context) error {
			batch, err := cons.FetchNoWait(256)
			if err != nil {
				return err
			}
			msgs := batch.Messages()
			for {
				select {
				case msg, ok := <-msgs:
					if !ok {
						if err := batch.Error(); err != nil {
							return err
						}
						if n == 0 {
							return ctx.Err() // refused meanwhile, or nil: the end
						}
						return nil
					}
					n++
					var cont bool
					cont, pending = handle(msg)
					if !cont || pending == 0 {
						stopped = !cont
						return nil
					}
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		})
		if err != nil {
			return 0, fmt.Errorf("reading store %q: %w", name, err)
		}
		if stopped {
			return pending, nil
		}
		if n == 0 || pending == 0 || ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
}

func (a *app) eventsCmd() *cobra.Command {
	var (
		q      eventQuery
		asJSON bool
		wide   bool
	)
	cmd := &cobra.Command{
		Use:     "events STORE",
		Aliases: []string{"view"},
		Short:   "Show or follow events, filtered by aggregate, event type, position or time",
		Long: `Show a store's events in stream order with their payloads as JSON, or follow
new ones (-f). Filter by aggregate type (--type), aggregate (--type and --id),
event type (--event, repeatable), start position (--from SEQ) or time (--since
1h, or an RFC 3339 time). With --json each event is one line of JSON.

Payloads are decoded by their content type (msgpack or JSON); events that
cannot be decoded are shown with the reason, never skipped.`,
		Example: `  esnats events shop --type cart --id alice@example.com
  esnats events shop --event ItemAdded --since 10m
  esnats events shop -f --json | jq .data`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := a.conn.connect(ctx, "esnats events", q.follow)
			if err != nil {
				return err
			}
			defer c.Close()
			si, err := a.lookupStore(ctx, c, args[0])
			if err != nil {
				return err
			}
			return a.printEvents(ctx, cmd.OutOrStdout(), c, si, q, asJSON, wide)
		},
	}
	f := cmd.Flags()
	f.StringVar(&q.aggType, "type", "", "aggregate type")
	f.StringVar(&q.id, "id", "", "aggregate id (with --type)")
	f.StringSliceVar(&q.eventTypes, "event", nil, "event type (repeatable, or comma separated)")
	f.Uint64Var(&q.from, "from", 0, "start at this stream sequence")
	f.StringVar(&q.since, "since", "", "start at this time (RFC 3339) or this long ago (e.g. 1h)")
	f.IntVarP(&q.limit, "limit", "n", 100, "show at most this many events (0: all)")
	f.BoolVarP(&q.follow, "follow", "f", false, "keep showing new events until interrupted")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per event (JSON Lines)")
	f.BoolVar(&wide, "wide", false, "do not shorten payloads in the table")
	return cmd
}

// printEvents prints the events q selects as a table or JSON lines.
func (a *app) printEvents(ctx context.Context, w io.Writer, c *connection, si *storeInfo, q eventQuery, asJSON, wide bool) error {
	if q.follow {
		q.limit = 0
	}
	var t *table
	if !asJSON {
		t = newTable(w, "SEQ", "TIME", "AGGREGATE", "VERSION", "EVENT", "DATA")
	}
	shown := 0
	var werr error
	left, err := a.readEvents(ctx, c, si, q, func(r eventRecord) bool {
		shown++
		if asJSON {
			werr = writeJSONLine(w, r)
		} else {
			t.row(r.Sequence, shortTime(r.Time), r.AggregateType+"/"+r.AggregateID, r.Version, r.Type, r.cell(wide))
			if q.follow {
				werr = t.flush() // show each event as it comes
			}
		}
		return werr == nil && (q.limit <= 0 || shown < q.limit)
	})
	if werr != nil {
		return werr
	}
	if t != nil {
		if shown == 0 {
			fmt.Fprintf(w, "no events in store %s match\n", si.info.Config.Name)
			return err
		}
		if ferr := t.flush(); ferr != nil {
			return ferr
		}
		if left > 0 {
			fmt.Fprintf(w, "... %d more on the selected subjects (--limit 0 shows all, --from SEQ starts later)\n", left)
		}
	}
	return err
}

// aggregateRecord is what "aggregate" prints with --json.
type aggregateRecord struct {
	Store    string          `json:"store"`
	Type     string          `json:"type"`
	ID       string          `json:"id"`
	Subject  string          `json:"subject"`
	Version  uint64          `json:"version"`
	Sequence uint64          `json:"sequence"`
	Events   []eventRecord   `json:"events"`
	Snapshot *snapshotRecord `json:"snapshot"`
}

func (a *app) aggregateCmd() *cobra.Command {
	var (
		asJSON bool
		wide   bool
		bucket string
	)
	cmd := &cobra.Command{
		Use:   "aggregate STORE TYPE ID",
		Short: "Show an aggregate's history with versions, and its snapshot",
		Long: `Show every event of one aggregate with its version and stream sequence, and
the aggregate's snapshot in the snapshot bucket (if any): which version it
holds and how many events a load reads after it.`,
		Example: `  esnats aggregate shop cart alice@example.com`,
		Args:    args(cobra.ExactArgs(3)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := a.conn.connect(ctx, "esnats aggregate", false)
			if err != nil {
				return err
			}
			defer c.Close()
			si, err := a.lookupStore(ctx, c, args[0])
			if err != nil {
				return err
			}
			q := eventQuery{aggType: args[1], id: args[2]}
			subject, err := q.filter(si.prefix)
			if err != nil {
				return err
			}
			rec := aggregateRecord{Store: args[0], Type: args[1], ID: args[2], Subject: subject, Events: []eventRecord{}}
			if _, err := a.readEvents(ctx, c, si, q, func(r eventRecord) bool {
				rec.Events = append(rec.Events, r)
				rec.Version, rec.Sequence = r.Version, r.Sequence
				return true
			}); err != nil {
				return err
			}
			snap, err := a.findSnapshot(ctx, c, bucket, stream.Aggregate{Type: args[1], ID: args[2]})
			if err != nil {
				return err
			}
			rec.Snapshot = snap
			if len(rec.Events) == 0 && snap == nil {
				return withCode(ExitNotFound, fmt.Errorf("aggregate %s/%s has no events in store %s (subject %s)", args[1], args[2], args[0], subject))
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(w, rec)
			}
			fmt.Fprintf(w, "aggregate %s/%s in store %s (subject %s)\n", rec.Type, rec.ID, rec.Store, rec.Subject)
			fmt.Fprintf(w, "version %d, last event at stream sequence %d, %d events\n", rec.Version, rec.Sequence, len(rec.Events))
			if snap == nil {
				fmt.Fprintf(w, "snapshot: none in bucket %s (a load reads all %d events)\n", bucket, len(rec.Events))
			} else {
				after := 0
				for _, e := range rec.Events {
					if e.Sequence > snap.Sequence {
						after++
					}
				}
				fmt.Fprintf(w, "snapshot: version %d (sequence %d), state %s schema %d, %s, taken %s; a load reads %d events after it\n",
					snap.Version, snap.Sequence, snap.StateType, snap.Schema, humanBytes(uint64(snap.Size)), shortTime(snap.Updated), after)
			}
			fmt.Fprintln(w)
			t := newTable(w, "VERSION", "SEQ", "TIME", "EVENT", "DATA")
			for _, e := range rec.Events {
				t.row(e.Version, e.Sequence, shortTime(e.Time), e.Type, e.cell(wide))
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&wide, "wide", false, "do not shorten payloads")
	cmd.Flags().StringVar(&bucket, "bucket", defaultSnapshotBucket, "snapshot bucket")
	return cmd
}
