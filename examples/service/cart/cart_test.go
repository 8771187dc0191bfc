package cart_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate/aggregatetest"
	"github.com/esnats/esnats/examples/service/cart"
	"github.com/esnats/esnats/stream"
)

func add(sku string, qty int) func(*cart.Cart) error {
	return func(c *cart.Cart) error { return c.AddItem(sku, qty) }
}

func remove(sku string) func(*cart.Cart) error {
	return func(c *cart.Cart) error { return c.RemoveItem(sku) }
}

func checkout(c *cart.Cart) error { return c.Checkout() }

func TestAddItemSumsQuantitiesPerSKU(t *testing.T) {
	c := aggregatetest.For(t, cart.New).
		Given(cart.ItemAdded{SKU: "apple", Quantity: 2}, cart.ItemAdded{SKU: "pear", Quantity: 1}).
		When(add("apple", 3)).
		Then(cart.ItemAdded{SKU: "apple", Quantity: 3})
	assert.Equal(t, map[string]int{"apple": 5, "pear": 1}, c.Items)
	assert.Equal(t, 6, c.Quantity())
}

func TestAddItemRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  func(*cart.Cart) error
		want error
		msg  string
	}{
		{"zero quantity", add("apple", 0), cart.ErrInvalidQuantity, `quantity must be positive: got 0 for "apple"`},
		{"negative quantity", add("apple", -3), cart.ErrInvalidQuantity, "got -3"},
		{"empty sku", add("", 1), cart.ErrInvalidSKU, "invalid sku: empty"},
		{"sku too long", add(strings.Repeat("x", cart.MaxSKULength+1), 1), cart.ErrInvalidSKU, "129 bytes, at most 128"},
		{"line too large", add("apple", cart.MaxLineQuantity-1), cart.ErrLineTooLarge, `"apple" has 2, adding 999`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := aggregatetest.NewKit(t, cart.New, cart.ItemAdded{SKU: "apple", Quantity: 2})
			err := k.Do(tc.cmd)
			require.ErrorIs(t, err, tc.want)
			assert.Contains(t, err.Error(), tc.msg)
			assert.True(t, cart.Rejected(err))
			assert.Equal(t, []any{cart.ItemAdded{SKU: "apple", Quantity: 2}}, k.Events(), "a refused command records nothing")
			assert.EqualValues(t, 1, k.State().Version())
		})
	}
	// Exactly up to the limit is fine.
	aggregatetest.For(t, cart.New).
		Given(cart.ItemAdded{SKU: "apple", Quantity: 2}).
		When(add("apple", cart.MaxLineQuantity-2)).
		Then(cart.ItemAdded{SKU: "apple", Quantity: cart.MaxLineQuantity - 2})
}

func TestRemoveItem(t *testing.T) {
	c := aggregatetest.For(t, cart.New).
		Given(cart.ItemAdded{SKU: "apple", Quantity: 2}, cart.ItemAdded{SKU: "pear", Quantity: 1}, cart.ItemAdded{SKU: "apple", Quantity: 1}).
		When(remove("apple")).
		Then(cart.ItemRemoved{SKU: "apple", Quantity: 3})
	assert.Equal(t, map[string]int{"pear": 1}, c.Items)

	aggregatetest.For(t, cart.New).
		Given(cart.ItemAdded{SKU: "kiwi", Quantity: 1}, cart.ItemRemoved{SKU: "kiwi", Quantity: 1}).
		When(remove("kiwi")).
		ThenError(cart.ErrItemNotInCart)
}

func TestCheckoutCarriesTheLines(t *testing.T) {
	c := aggregatetest.For(t, cart.New).
		Given(cart.ItemAdded{SKU: "apple", Quantity: 2}, cart.ItemAdded{SKU: "pear", Quantity: 1}).
		When(checkout).
		Then(cart.CheckedOut{Items: map[string]int{"apple": 2, "pear": 1}, Quantity: 3})
	assert.True(t, c.CheckedOut)

	aggregatetest.For(t, cart.New).When(checkout).ThenError(cart.ErrEmptyCart)
	aggregatetest.For(t, cart.New).
		Given(cart.ItemAdded{SKU: "apple", Quantity: 1}, cart.ItemRemoved{SKU: "apple", Quantity: 1}).
		When(checkout).
		ThenError(cart.ErrEmptyCart)
}

// The event must not share its map with the cart: a later change to the
// cart (there is none after a checkout, but a reused instance could) must
// not rewrite a recorded fact.
func TestCheckoutEventOwnsItsLines(t *testing.T) {
	k := aggregatetest.NewKit(t, cart.New, cart.ItemAdded{SKU: "apple", Quantity: 2})
	k.MustDo(checkout)
	out, ok := aggregatetest.Next[cart.CheckedOut](k)
	require.True(t, ok)
	k.State().Items["apple"] = 99
	assert.Equal(t, map[string]int{"apple": 2}, out.Items)
}

func TestCheckedOutCartRefusesChanges(t *testing.T) {
	given := []any{cart.ItemAdded{SKU: "apple", Quantity: 1}, cart.CheckedOut{Items: map[string]int{"apple": 1}, Quantity: 1}}
	for name, cmd := range map[string]func(*cart.Cart) error{
		"add":            add("pear", 1),
		"remove":         remove("apple"),
		"checkout again": checkout,
	} {
		t.Run(name, func(t *testing.T) {
			aggregatetest.For(t, cart.New).Given(given...).When(cmd).ThenError(cart.ErrCheckedOut)
		})
	}
}

func TestRejected(t *testing.T) {
	assert.False(t, cart.Rejected(nil))
	assert.False(t, cart.Rejected(stream.ErrConflict), "a conflict is not a rule of the cart")
	assert.True(t, cart.Rejected(cart.ErrEmptyCart))
}

// The events are registered under stable names and survive a round trip
// through the store's codec (msgpack), maps included.
func TestRegister(t *testing.T) {
	reg := stream.NewRegistry()
	cart.Register(reg)
	for ev, name := range map[any]string{
		cart.ItemAdded{}:   "cart-item-added",
		cart.ItemRemoved{}: "cart-item-removed",
	} {
		got, err := reg.NameOf(ev)
		require.NoError(t, err)
		assert.Equal(t, name, got)
	}
	out := cart.CheckedOut{Items: map[string]int{"apple": 2, "Zürich cheese": 1}, Quantity: 3}
	name, schema, data, err := reg.Encode(out)
	require.NoError(t, err)
	assert.Equal(t, "cart-checked-out", name)
	back, err := reg.Decode(name, schema, reg.Codec().ContentType(), data)
	require.NoError(t, err)
	assert.Equal(t, out, back)
	assert.Panics(t, func() { cart.Register(reg) }, "registering twice is a programming error")
}
