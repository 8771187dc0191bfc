package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/examples/service/cart"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// ViewsProjection names the worker's projection and its durable consumer
// on the event store (`nats consumer info shop cart-views` shows where it
// stands).
const ViewsProjection = "cart-views"

// The read model's keys in its KV bucket (<Store>_cart_views): one per
// cart, one per SKU sold, and the number of checkouts. Ids and SKUs are
// escaped with stream.EncodeID, so any of them makes a valid key. Values are
// JSON (a Summary, or a decimal count), behind the KV read model's 10-byte
// header (see projections.KV).
const (
	cartKeyPrefix = "cart."
	soldKeyPrefix = "sold."
	checkoutsKey  = "checkouts"
)

// Summary is a cart as the read model has it: the reply to
// <Prefix>.summary. Version is the cart's version as of the last event the
// read model applied (compare with CartState.Version), Position that
// event's stream sequence.
type Summary struct {
	Cart       string         `json:"cart"`
	Version    uint64         `json:"version"`
	Position   uint64         `json:"position"`
	Items      map[string]int `json:"items"`
	Lines      int            `json:"lines"`
	Quantity   int            `json:"quantity"`
	CheckedOut bool           `json:"checked_out"`
}

// Sales is what was bought across all carts: the reply to <Prefix>.sales.
// Units counts the units of each SKU in checked-out carts, Checkouts the
// checked-out carts, and Position is the stream sequence of the last event
// the read model applied.
type Sales struct {
	Units     map[string]int `json:"units"`
	Checkouts int            `json:"checkouts"`
	Position  uint64         `json:"position"`
}

// NewViews creates (or opens) the read model's KV bucket,
// <Store>_cart_views with cfg.Replicas copies, and returns the model, ready
// for a projections.Runner: it keeps a Summary of every cart and the
// Sales. Errors: an invalid cfg, and those of projections.NewKV.
func NewViews(ctx context.Context, js jetstream.JetStream, cfg Config) (*projections.KV, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return projections.NewKV(ctx, js, projections.KVConfig{
		Bucket:      cfg.viewsBucket(),
		Replicas:    cfg.Replicas,
		Description: "esnats service example: cart summaries and sales",
	}, applyViews)
}

// applyViews applies one cart event to the read model. Each key's new
// value depends only on the event and on that key's own value, which is
// what makes the KV read model exactly-once (see projections.KV).
func applyViews(_ context.Context, tx *projections.KVBatch, ev *stream.Event) error {
	key, err := cartKey(ev.Aggregate.ID)
	if err != nil {
		return err
	}
	var s Summary
	if ok, err := getJSON(tx, key, &s); err != nil {
		return err
	} else if !ok {
		s = Summary{Cart: ev.Aggregate.ID}
	}
	if s.Items == nil {
		s.Items = map[string]int{}
	}
	switch e := ev.Data.(type) {
	case cart.ItemAdded:
		s.Items[e.SKU] += e.Quantity
	case cart.ItemRemoved:
		delete(s.Items, e.SKU)
	case cart.CheckedOut:
		s.CheckedOut = true
		for sku, n := range e.Items {
			k, err := soldKey(sku)
			if err != nil {
				return err
			}
			if err := addCount(tx, k, n); err != nil {
				return err
			}
		}
		if err := addCount(tx, checkoutsKey, 1); err != nil {
			return err
		}
	default:
		return nil // an event this model does not know: nothing to do
	}
	s.Version, s.Position = ev.Version, ev.Sequence
	s.Lines, s.Quantity = len(s.Items), 0
	for _, n := range s.Items {
		s.Quantity += n
	}
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tx.Put(key, data)
	return nil
}

func cartKey(id string) (string, error) {
	enc, err := stream.EncodeID(id)
	if err != nil {
		return "", err
	}
	return cartKeyPrefix + enc, nil
}

func soldKey(sku string) (string, error) {
	enc, err := stream.EncodeID(sku)
	if err != nil {
		return "", fmt.Errorf("sku %q: %w", sku, err)
	}
	return soldKeyPrefix + enc, nil
}

// getJSON decodes the JSON value of key into v; false if key is absent.
func getJSON(tx *projections.KVBatch, key string, v any) (bool, error) {
	data, ok, err := tx.Get(key)
	if err != nil || !ok {
		return false, err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("read model key %s: %w", key, err)
	}
	return true, nil
}

// addCount adds n to the decimal count under key.
func addCount(tx *projections.KVBatch, key string, n int) error {
	have := 0
	data, ok, err := tx.Get(key)
	if err != nil {
		return err
	}
	if ok {
		if have, err = strconv.Atoi(string(data)); err != nil {
			return fmt.Errorf("read model key %s: %w", key, err)
		}
	}
	tx.Put(key, []byte(strconv.Itoa(have+n)))
	return nil
}

// RunWorker runs the read model worker on js until ctx ends: it creates (or
// opens) the event store and the read model's bucket, waiting while
// JetStream is not available, then registers the micro service
// ViewsService with the queries <Prefix>.summary and <Prefix>.sales, and
// runs the projection ViewsProjection, which applies the carts' events to
// the read model exactly once, in order.
//
// Several workers may run: one applies the events while the others stand
// by (and take over within Config.Consumer.PinnedTTL, default 5s, when it
// stops); all of them answer queries from the shared bucket. A projection
// that fails (the Stop policy: an event the model kept failing on) is
// started again after a pause, 1s doubling to 30s, and logged each time.
// When ctx ends RunWorker finishes the batch in hand and returns nil.
// Errors: an invalid cfg, a setup that cannot succeed, the service failing
// to register, or the connection closing.
func RunWorker(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger.With("service", ViewsService)
	var store *stream.Store
	var model *projections.KV
	err := setupRetry(ctx, log, "event store "+cfg.Store+" and read model", func(ctx context.Context) error {
		s, err := NewStore(ctx, js, cfg)
		if err != nil {
			return err
		}
		m, err := NewViews(ctx, js, cfg)
		if err != nil {
			return err
		}
		store, model = s, m
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for the server
		}
		return err
	}

	q := &queries{cfg: cfg, model: model}
	svc, done, err := addService(js.Conn(), cfg, log, ViewsService, "esnats service example: queries on the cart read model", []endpoint{
		{"summary", exampleCart, q.summary},
		{"sales", "{}", q.sales},
	}, context.WithoutCancel(ctx))
	if err != nil {
		return err
	}
	log.Info("serving", "subjects", cfg.Prefix+".{summary,sales}", "bucket", model.Bucket(), "projection", ViewsProjection)

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	ran := make(chan error, 1)
	go func() { ran <- runProjection(wctx, js, store, model, cfg, log) }()
	select {
	case err := <-ran:
		_ = svc.Stop()
		return err
	case <-done:
		stop()
		<-ran
		return errors.New("the service stopped: the NATS connection is closed")
	case <-ctx.Done():
		err := <-ran
		if serr := svc.Stop(); serr != nil {
			log.Error("stopping the service", "error", serr)
		}
		log.Info("stopped")
		return err
	}
}

// runProjection runs the projection until ctx ends, starting it again
// after each failure.
func runProjection(ctx context.Context, js jetstream.JetStream, store *stream.Store, model *projections.KV, cfg Config, log *slog.Logger) error {
	wait := time.Second
	for {
		runner := projections.NewRunner(js, store, cfg.Logger)
		err := runner.Add(projections.Projection{
			Name:           ViewsProjection,
			AggregateTypes: []string{cart.AggregateType},
			Model:          model,
			Consumer:       cfg.Consumer,
		})
		if err != nil {
			return err
		}
		// The control plane: `esnats projections status shop` shows this
		// worker, `esnats projections reset shop cart-views` replays it.
		rctx, stopServe := context.WithCancel(ctx)
		ctl, err := runner.Serve(rctx, js.Conn())
		if err != nil {
			stopServe()
			return fmt.Errorf("projection %s: serving its control plane: %w", ViewsProjection, err)
		}
		began := time.Now()
		err = runner.Run(ctx)
		stopServe()
		<-ctl.Done()
		if ctx.Err() != nil {
			return nil
		}
		if js.Conn().IsClosed() {
			return fmt.Errorf("projection %s: the NATS connection is closed: %w", ViewsProjection, err)
		}
		if time.Since(began) > time.Minute {
			wait = time.Second // it ran a while: start over quickly
		}
		log.Error("projection stopped; starting it again", "projection", ViewsProjection, "in", wait, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// queries answers from the read model.
type queries struct {
	cfg   Config
	model *projections.KV
}

func (q *queries) summary(ctx context.Context, data []byte) (any, error) {
	id, err := cartRef(q.cfg.subject("summary"), data)
	if err != nil {
		return nil, err
	}
	key, err := cartKey(id)
	if err != nil {
		return nil, err
	}
	raw, ok, err := q.model.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w %q: not in the read model (no events, or not applied yet)", errUnknownCart, id)
	}
	var s Summary
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("read model key %s: %w", key, err)
	}
	return s, nil
}

func (q *queries) sales(ctx context.Context, data []byte) (any, error) {
	if len(bytes.TrimSpace(data)) > 0 { // no parameters; an empty body or {} is fine
		var none struct{}
		if err := decode(q.cfg.subject("sales"), data, &none, "{}"); err != nil {
			return nil, err
		}
	}
	// The checkpoint first: the keys read next are at least that recent.
	pos, err := q.model.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	all, err := q.model.All(ctx)
	if err != nil {
		return nil, err
	}
	out := Sales{Units: map[string]int{}, Position: pos}
	for key, raw := range all {
		switch {
		case key == checkoutsKey:
			if out.Checkouts, err = strconv.Atoi(string(raw)); err != nil {
				return nil, fmt.Errorf("read model key %s: %w", key, err)
			}
		case strings.HasPrefix(key, soldKeyPrefix):
			sku, err := stream.DecodeID(strings.TrimPrefix(key, soldKeyPrefix))
			if err != nil {
				return nil, fmt.Errorf("read model key %s: %w", key, err)
			}
			if out.Units[sku], err = strconv.Atoi(string(raw)); err != nil {
				return nil, fmt.Errorf("read model key %s: %w", key, err)
			}
		}
	}
	return out, nil
}
