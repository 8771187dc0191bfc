package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// The items-per-product projection: how many units of each product are in
// carts, across all carts (checked out or not), kept in a JetStream KV
// bucket.
//
// Why KV and not SQL: the read model then lives on the NATS server beside
// the event store and the projection's durable consumer, so the three share
// one lifetime and need nothing else to run; any NATS client, in any
// language, reads it (nats kv get). And a per-product counter is exactly the
// case in which the KV read model is exactly-once without transactions:
// each key's new value depends only on the event and on that key's own
// value. A SQL model (projections.NewSQL) suits joins, ad hoc queries and
// large tables, at the price of a database to run, whose lifetime must then
// follow the consumer's.
const (
	// ItemsPerProduct names the projection and its durable consumer.
	ItemsPerProduct = "items-per-product"
	// ItemsPerProductBucket is the KV bucket of its read model: one key per
	// product (the SKU escaped with stream.EncodeID), whose data is the
	// quantity in decimal ASCII.
	ItemsPerProductBucket = "shoppingcart_items_per_product"
)

// NewItemsPerProduct creates the read model's bucket (cfg.Bucket, default
// ItemsPerProductBucket), or opens it, and returns the projection, ready for
// a projections.Runner, with its read model. reg must hold the cart's
// events (see Register). consumer tunes the delivery (batch size, retries,
// fail-over); its zero value means the defaults.
func NewItemsPerProduct(ctx context.Context, js jetstream.JetStream, reg *stream.Registry, cfg projections.KVConfig, consumer consumers.Config) (projections.Projection, *projections.KV, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = ItemsPerProductBucket
	}
	if cfg.Description == "" {
		cfg.Description = "esnats shoppingcart: units per product across all carts"
	}
	var types []string
	for _, e := range []any{ItemAdded{}, ItemRemoved{}} {
		name, err := reg.NameOf(e)
		if err != nil {
			return projections.Projection{}, nil, err
		}
		types = append(types, name)
	}
	model, err := projections.NewKV(ctx, js, cfg, applyItemsPerProduct)
	if err != nil {
		return projections.Projection{}, nil, err
	}
	return projections.Projection{
		Name:           ItemsPerProduct,
		AggregateTypes: []string{AggregateType}, // filtered by the server
		EventTypes:     types,                   // the others are acknowledged without a call
		Model:          model,
		Consumer:       consumer,
	}, model, nil
}

// applyItemsPerProduct adds an ItemAdded's quantity to its product and
// takes an ItemRemoved's off. A product whose quantity comes back to 0 is
// deleted.
func applyItemsPerProduct(_ context.Context, tx *projections.KVBatch, ev *stream.Event) error {
	var sku string
	var delta int
	switch e := ev.Data.(type) {
	case ItemAdded:
		sku, delta = e.SKU, e.Quantity
	case ItemRemoved:
		sku, delta = e.SKU, -e.Quantity
	default:
		return nil
	}
	key, err := stream.EncodeID(sku) // SKUs are user input: escape them into a valid key
	if err != nil {
		return err
	}
	old, ok, err := tx.Get(key)
	if err != nil {
		return err
	}
	n := 0
	if ok {
		if n, err = strconv.Atoi(string(old)); err != nil {
			return fmt.Errorf("quantity of %q: %w", sku, err)
		}
	}
	if n += delta; n == 0 {
		tx.Delete(key)
	} else {
		tx.Put(key, []byte(strconv.Itoa(n)))
	}
	return nil
}

// ProductQuantity is one row of the read model.
type ProductQuantity struct {
	Product  string
	Quantity int
}

// Products reads the whole read model, ordered by product. A reader that
// wants one product gets its key, the SKU escaped with stream.EncodeID.
func Products(ctx context.Context, model *projections.KV) ([]ProductQuantity, error) {
	all, err := model.All(ctx)
	if err != nil {
		return nil, err
	}
	rows := make([]ProductQuantity, 0, len(all))
	for key, data := range all {
		sku, err := stream.DecodeID(key)
		if err != nil {
			return nil, fmt.Errorf("read model key %q: %w", key, err)
		}
		n, err := strconv.Atoi(string(data))
		if err != nil {
			return nil, fmt.Errorf("quantity of %q: %w", sku, err)
		}
		rows = append(rows, ProductQuantity{Product: sku, Quantity: n})
	}
	slices.SortFunc(rows, func(a, b ProductQuantity) int { return strings.Compare(a.Product, b.Product) })
	return rows, nil
}
