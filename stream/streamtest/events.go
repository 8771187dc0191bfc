package streamtest

import "github.com/esnats/esnats/stream"

// Event types of the suite, registered by the registry it gives
// Harness.New. Their json tags name the fields in both built-in codecs.

// ItemAdded is registered as "item-added".
type ItemAdded struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"qty"`
}

// ItemRemoved is registered as "item-removed".
type ItemRemoved struct {
	SKU string `json:"sku"`
}

// OrderPlaced is registered as "order-placed".
type OrderPlaced struct {
	Total int `json:"total"`
}

// Counted is registered as "counted": the events of ConcurrentAppends.
type Counted struct {
	Writer int `json:"w"`
	N      int `json:"n"`
}

// CustomerRenamedV1 is schema version 1 of "customer-renamed" in Upcast.
type CustomerRenamedV1 struct {
	Name string `json:"name"`
}

// CustomerRenamed is schema version 2 of "customer-renamed" in Upcast: the
// name split in two.
type CustomerRenamed struct {
	First string `json:"first"`
	Last  string `json:"last"`
}

// Event type names.
const (
	TypeItemAdded       = "item-added"
	TypeItemRemoved     = "item-removed"
	TypeOrderPlaced     = "order-placed"
	TypeCounted         = "counted"
	TypeCustomerRenamed = "customer-renamed"
)

// newRegistry returns the registry most behaviours use.
func newRegistry() *stream.Registry {
	reg := stream.NewRegistry()
	stream.MustRegister[ItemAdded](reg, TypeItemAdded)
	stream.MustRegister[ItemRemoved](reg, TypeItemRemoved)
	stream.MustRegister[OrderPlaced](reg, TypeOrderPlaced)
	stream.MustRegister[Counted](reg, TypeCounted)
	return reg
}
