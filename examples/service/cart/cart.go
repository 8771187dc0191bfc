// Package cart is the domain of the service example: a shopping cart
// aggregate, its events and its rules, in plain Go. It knows nothing of
// NATS; package app puts it behind a NATS micro service and keeps a read
// model of it.
package cart

import (
	"errors"
	"fmt"
	"maps"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/stream"
)

// AggregateType is the aggregate type name of carts: the subject token of
// their events (<store>.cart.<id>) and the key prefix of their snapshots.
const AggregateType = "cart"

// Limits of a cart line, checked before anything is recorded.
const (
	// MaxLineQuantity is the most units one line (one SKU) may hold.
	MaxLineQuantity = 1000
	// MaxSKULength is the longest SKU accepted, in bytes.
	MaxSKULength = 128
)

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

// CheckedOut says the cart was checked out with these lines (SKU ->
// units), Quantity units in all; it cannot change any more. It carries the
// lines so that a reader needs no other event to know what was bought.
type CheckedOut struct {
	Items    map[string]int `json:"items"`
	Quantity int            `json:"quantity"`
}

// Register registers the cart's events under explicit, stable names: the
// names stored with each event, independent of the Go type names. It panics
// if a name or type is already registered on reg (a programming error).
func Register(reg *stream.Registry) {
	stream.MustRegister[ItemAdded](reg, "cart-item-added")
	stream.MustRegister[ItemRemoved](reg, "cart-item-removed")
	stream.MustRegister[CheckedOut](reg, "cart-checked-out")
}

// Errors of the cart's commands: the cart's rules refusing a command. A
// refused command records no event. Rejected tells them from other errors.
var (
	ErrCheckedOut      = errors.New("cart is checked out")
	ErrInvalidQuantity = errors.New("quantity must be positive")
	ErrLineTooLarge    = fmt.Errorf("a line holds at most %d units", MaxLineQuantity)
	ErrInvalidSKU      = errors.New("invalid sku")
	ErrItemNotInCart   = errors.New("item not in cart")
	ErrEmptyCart       = errors.New("cart is empty")
)

// Rejected reports whether err is (or wraps) one of the cart's rules
// refusing a command, as opposed to a failure to run it.
func Rejected(err error) bool {
	for _, rule := range []error{ErrCheckedOut, ErrInvalidQuantity, ErrLineTooLarge, ErrInvalidSKU, ErrItemNotInCart, ErrEmptyCart} {
		if errors.Is(err, rule) {
			return true
		}
	}
	return false
}

// Cart is a shopping cart: lines of SKUs with their summed quantities.
//
// Its exported fields are its state, and also what a snapshot stores.
type Cart struct {
	aggregate.Root
	Items      map[string]int `json:"items"` // SKU -> quantity, only SKUs with quantity > 0
	CheckedOut bool           `json:"checked_out"`
}

// New returns an empty cart: the constructor the repository and the tests
// use.
func New(id string) *Cart { return &Cart{Items: map[string]int{}} }

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
// its quantity raised. Errors: ErrCheckedOut, ErrInvalidSKU (empty or
// longer than MaxSKULength), ErrInvalidQuantity (not positive),
// ErrLineTooLarge (the line would exceed MaxLineQuantity).
func (c *Cart) AddItem(sku string, quantity int) error {
	if c.CheckedOut {
		return ErrCheckedOut
	}
	if err := validSKU(sku); err != nil {
		return err
	}
	if quantity <= 0 {
		return fmt.Errorf("%w: got %d for %q", ErrInvalidQuantity, quantity, sku)
	}
	if have := c.Items[sku]; quantity > MaxLineQuantity-have {
		return fmt.Errorf("%w: %q has %d, adding %d", ErrLineTooLarge, sku, have, quantity)
	}
	c.Record(ItemAdded{SKU: sku, Quantity: quantity})
	return nil
}

func validSKU(sku string) error {
	switch {
	case sku == "":
		return fmt.Errorf("%w: empty", ErrInvalidSKU)
	case len(sku) > MaxSKULength:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidSKU, len(sku), MaxSKULength)
	}
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
		return fmt.Errorf("%w: %q", ErrItemNotInCart, sku)
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
	c.Record(CheckedOut{Items: maps.Clone(c.Items), Quantity: c.Quantity()})
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
