package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
)

// storeRow is one store in "stores".
type storeRow struct {
	Name       string    `json:"name"`
	Subject    string    `json:"subject"`
	Events     uint64    `json:"events"`
	Aggregates uint64    `json:"aggregates"`
	Bytes      uint64    `json:"bytes"`
	Replicas   int       `json:"replicas"`
	Storage    string    `json:"storage"`
	FirstSeq   uint64    `json:"first_seq"`
	LastSeq    uint64    `json:"last_seq"`
	LastEvent  time.Time `json:"last_event,omitzero"`
	Consumers  int       `json:"consumers"`
	MaxAge     string    `json:"max_age,omitempty"`
}

func (a *app) storesCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "stores",
		Aliases: []string{"ls"},
		Short:   "List event stores with their events, aggregates and bytes",
		Long: `List the event stores on the server: streams that look like esnats stores (one
subject space <prefix>.>, limits retention, atomic publish and direct get).
AGGREGATES counts the aggregate instances (distinct subjects) that have events.`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.conn.connect(cmd.Context(), "esnats stores", false)
			if err != nil {
				return err
			}
			defer c.Close()
			var rows []storeRow
			err = c.do(cmd.Context(), call{subjects: []string{c.api + "STREAM.LIST"}}, func(ctx context.Context) error {
				lister := c.js.ListStreams(ctx)
				for info := range lister.Info() {
					prefix, ok := isStore(info.Config)
					if !ok {
						continue
					}
					rows = append(rows, storeRowOf(info, prefix))
				}
				return lister.Err()
			})
			if err != nil {
				return fmt.Errorf("listing streams: %w", err)
			}
			if asJSON {
				if rows == nil {
					rows = []storeRow{}
				}
				return writeJSON(cmd.OutOrStdout(), rows)
			}
			if len(rows) == 0 {
				cmd.Printf("no event stores on %s\n", c.url)
				return nil
			}
			t := newTable(cmd.OutOrStdout(), "STORE", "SUBJECTS", "EVENTS", "AGGREGATES", "BYTES", "REPLICAS", "LAST EVENT", "CONSUMERS")
			for _, r := range rows {
				t.row(r.Name, r.Subject+".>", r.Events, r.Aggregates, humanBytes(r.Bytes), r.Replicas, shortTime(r.LastEvent), r.Consumers)
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func storeRowOf(info *jetstream.StreamInfo, prefix string) storeRow {
	r := storeRow{
		Name:       info.Config.Name,
		Subject:    prefix,
		Events:     info.State.Msgs,
		Aggregates: info.State.NumSubjects,
		Bytes:      info.State.Bytes,
		Replicas:   info.Config.Replicas,
		Storage:    info.Config.Storage.String(),
		FirstSeq:   info.State.FirstSeq,
		LastSeq:    info.State.LastSeq,
		Consumers:  info.State.Consumers,
	}
	if info.State.Msgs > 0 {
		r.LastEvent = info.State.LastTime
	}
	if info.Config.MaxAge > 0 {
		r.MaxAge = info.Config.MaxAge.String()
	}
	return r
}

// lookupStore looks the store up (see lookupStore) within --timeout; a
// refused lookup fails at once (see connection.do).
func (a *app) lookupStore(ctx context.Context, c *connection, name string) (si *storeInfo, err error) {
	err = c.do(ctx, call{subjects: []string{c.api + "STREAM.INFO." + name, c.api + "STREAM.LIST"}}, func(ctx context.Context) error {
		si, err = lookupStore(ctx, c, name)
		return err
	})
	var re *refusedError
	var na *noAnswerError
	if errors.As(err, &re) || errors.As(err, &na) {
		return nil, fmt.Errorf("looking up store %q: %w", name, err)
	}
	return si, err
}
