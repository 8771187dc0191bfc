package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/stream"
)

// AggregateType is the aggregate type name of carts: the subject token of
// their events (<store>.cart.<id>) and the key prefix of their snapshots.
const AggregateType = "cart"

// Events: facts that happened to a cart, named in the past tense. Their
// json tags name the fields in msgpack too.

// ItemAdded says Quantity units of SKU were put in the cart.
type ItemAdded struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

// ItemRemoved says the line of SKU was taken out of the cart, all of its
// Quantity units.
type ItemRemoved struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

// CheckedOut says the cart was checked out with these lines; it cannot
// change any more.
type CheckedOut struct {
	Lines    int `json:"lines"`
	Quantity int `json:"quantity"`
}

// Register registers the cart's events under explicit, stable names: the
// names stored with each event, independent of the Go type names. It panics
// if a name or type is already registered on reg (a programming error).
func Register(reg *stream.Registry) {
	stream.MustRegister[ItemAdded](reg, "cart-item-added")
	stream.MustRegister[ItemRemoved](reg, "cart-item-removed")
	stream.MustRegister[CheckedOut](reg, "cart-checked-out")
}

// Errors of the cart's commands. A rejected command records no event.
var (
	ErrCheckedOut      = errors.New("cart is checked out")
	ErrInvalidQuantity = errors.New("quantity must be positive")
	ErrItemNotInCart   = errors.New("item not in cart")
	ErrEmptyCart       = errors.New("cart is empty")
)

// Cart is a shopping cart: lines of SKUs with their summed quantities.
//
// Its exported fields are its state, and also what a snapshot stores.
type Cart struct {
	aggregate.Root
	Items      map[string]int `json:"items"` // SKU -> quantity, only SKUs with quantity > 0
	CheckedOut bool           `json:"checked_out"`
}

// NewCart returns an empty cart: the constructor the repository and the
// tests use.
func NewCart(id string) *Cart { return &Cart{Items: map[string]int{}} }

// Apply changes the state by one event; it never fails.
func (c *Cart) Apply(event any) {
	switch e := event.(type) {
	case ItemAdded:
		c.Items[e.SKU] += e.Quantity
	case ItemRemoved:
		delete(c.Items, e.SKU)
	case CheckedOut:
		c.CheckedOut = true
	}
}

// AddItem puts quantity units of sku in the cart; a SKU already in it gets
// its quantity raised. Errors: ErrCheckedOut, ErrInvalidQuantity.
func (c *Cart) AddItem(sku string, quantity int) error {
	if c.CheckedOut {
		return ErrCheckedOut
	}
	if quantity <= 0 {
		return fmt.Errorf("%w: %d %s", ErrInvalidQuantity, quantity, sku)
	}
	c.Record(ItemAdded{SKU: sku, Quantity: quantity})
	return nil
}

// RemoveItem takes the whole line of sku out of the cart. Errors:
// ErrCheckedOut, ErrItemNotInCart.
func (c *Cart) RemoveItem(sku string) error {
	if c.CheckedOut {
		return ErrCheckedOut
	}
	qty, ok := c.Items[sku]
	if !ok {
		return fmt.Errorf("%w: %s", ErrItemNotInCart, sku)
	}
	c.Record(ItemRemoved{SKU: sku, Quantity: qty})
	return nil
}

// Checkout closes the cart. Errors: ErrCheckedOut (already checked out),
// ErrEmptyCart.
func (c *Cart) Checkout() error {
	if c.CheckedOut {
		return ErrCheckedOut
	}
	if len(c.Items) == 0 {
		return ErrEmptyCart
	}
	c.Record(CheckedOut{Lines: len(c.Items), Quantity: c.Quantity()})
	return nil
}

// Quantity returns the number of units in the cart.
func (c *Cart) Quantity() int {
	n := 0
	for _, q := range c.Items {
		n += q
	}
	return n
}

// String describes the cart's state, lines sorted by SKU.
func (c *Cart) String() string {
	s := "items {"
	for i, sku := range slices.Sorted(maps.Keys(c.Items)) {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s: %d", sku, c.Items[sku])
	}
	s += "}"
	if c.CheckedOut {
		s += ", checked out"
	}
	return fmt.Sprintf("%s, version %d", s, c.Version())
}
