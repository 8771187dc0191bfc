package cli

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
)

// consumerRow is one durable consumer of a store.
type consumerRow struct {
	Name        string    `json:"name"`
	Filters     []string  `json:"filters"`
	Position    uint64    `json:"position"`  // ack floor: every event up to it is handled
	Delivered   uint64    `json:"delivered"` // last stream sequence delivered
	Lag         uint64    `json:"lag"`       // matching events not yet acknowledged
	Pending     uint64    `json:"pending"`   // matching events not yet delivered
	AckPending  int       `json:"ack_pending"`
	Redelivered int       `json:"redelivered"`
	Waiting     int       `json:"waiting"` // pull requests waiting: workers attached
	Pinned      string    `json:"pinned,omitempty"`
	LastActive  time.Time `json:"last_active,omitzero"`
	State       string    `json:"state"`
}

// consumerRowOf summarises a consumer. State is "caught-up" (nothing left),
// "working" (a worker is attached and events are left), "stalled" (events
// are left and no worker asks for them) or "idle" (no worker, nothing left).
func consumerRowOf(info *jetstream.ConsumerInfo) consumerRow {
	r := consumerRow{
		Name:        info.Name,
		Filters:     info.Config.FilterSubjects,
		Position:    info.AckFloor.Stream,
		Delivered:   info.Delivered.Stream,
		Pending:     info.NumPending,
		AckPending:  info.NumAckPending,
		Redelivered: info.NumRedelivered,
		Waiting:     info.NumWaiting,
		Lag:         info.NumPending + uint64(info.NumAckPending),
	}
	if info.Config.FilterSubject != "" {
		r.Filters = append([]string{info.Config.FilterSubject}, r.Filters...)
	}
	for _, g := range info.PriorityGroups {
		if g.PinnedClientID != "" {
			r.Pinned = g.PinnedClientID
		}
	}
	if info.Delivered.Last != nil {
		r.LastActive = *info.Delivered.Last
	}
	if info.AckFloor.Last != nil && info.AckFloor.Last.After(r.LastActive) {
		r.LastActive = *info.AckFloor.Last
	}
	attached := info.NumWaiting > 0 || info.PushBound || r.Pinned != ""
	switch {
	case r.Lag == 0 && attached:
		r.State = "caught-up"
	case r.Lag == 0:
		r.State = "idle"
	case attached:
		r.State = "working"
	default:
		r.State = "stalled"
	}
	return r
}

// storeConsumers lists the durable consumers of a store's stream, within
// --timeout (a refused listing fails at once, see connection.do).
func storeConsumers(ctx context.Context, c *connection, store string) ([]consumerRow, error) {
	rows := []consumerRow{}
	err := c.do(ctx, call{subjects: []string{c.api + "STREAM.INFO." + store, c.api + "CONSUMER.LIST." + store}}, func(ctx context.Context) error {
		st, err := c.js.Stream(ctx, store)
		if err != nil {
			return err
		}
		lister := st.ListConsumers(ctx)
		for info := range lister.Info() {
			if info.Config.Durable == "" {
				continue // ephemeral (an esnats events reader, a nats CLI view)
			}
			rows = append(rows, consumerRowOf(info))
		}
		return lister.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("listing the consumers of store %q: %w", store, err)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	return rows, nil
}

func (a *app) consumersCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "consumers STORE",
		Short: "List a store's durable consumers with position, lag and state",
		Long: `List the durable consumers of a store (projections, replication relays, your
own consumers) with their position (acknowledgement floor: every event up to
it is handled), lag (matching events not yet acknowledged) and state:
caught-up, working, stalled (events wait and no worker asks for them) or idle.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := a.conn.connect(ctx, "esnats consumers", false)
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := a.lookupStore(ctx, c, args[0]); err != nil {
				return err
			}
			rows, err := storeConsumers(ctx, c, args[0])
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return writeJSON(w, rows)
			}
			if len(rows) == 0 {
				fmt.Fprintf(w, "store %s has no durable consumers\n", args[0])
				return nil
			}
			t := newTable(w, "CONSUMER", "FILTER", "POSITION", "LAG", "PENDING", "ACK PENDING", "REDELIVERED", "STATE", "LAST ACTIVE")
			for _, r := range rows {
				t.row(r.Name, strings.Join(r.Filters, ","), r.Position, r.Lag, r.Pending, r.AckPending, r.Redelivered, r.State, shortTime(r.LastActive))
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
