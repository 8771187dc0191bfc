package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate/aggregatetest"
)

func add(sku string, qty int) func(*Cart) error {
	return func(c *Cart) error { return c.AddItem(sku, qty) }
}

func remove(sku string) func(*Cart) error {
	return func(c *Cart) error { return c.RemoveItem(sku) }
}

func checkout(c *Cart) error { return c.Checkout() }

func TestAddItem(t *testing.T) {
	c := aggregatetest.For(t, NewCart).
		When(add("apple", 2)).
		Then(ItemAdded{SKU: "apple", Quantity: 2})
	assert.Equal(t, map[string]int{"apple": 2}, c.Items)
}

func TestAddItemSumsQuantitiesPerSKU(t *testing.T) {
	c := aggregatetest.For(t, NewCart).
		Given(ItemAdded{SKU: "apple", Quantity: 2}, ItemAdded{SKU: "pear", Quantity: 1}).
		When(add("apple", 3)).
		Then(ItemAdded{SKU: "apple", Quantity: 3})
	assert.Equal(t, map[string]int{"apple": 5, "pear": 1}, c.Items)
	assert.Equal(t, 6, c.Quantity())
}

func TestAddItemQuantityMustBePositive(t *testing.T) {
	for _, qty := range []int{0, -1, -100} {
		aggregatetest.For(t, NewCart).
			Given(ItemAdded{SKU: "apple", Quantity: 2}).
			When(add("apple", qty)).
			ThenError(ErrInvalidQuantity)
	}
}

func TestRemoveItem(t *testing.T) {
	c := aggregatetest.For(t, NewCart).
		Given(ItemAdded{SKU: "apple", Quantity: 2}, ItemAdded{SKU: "pear", Quantity: 1}, ItemAdded{SKU: "apple", Quantity: 1}).
		When(remove("apple")).
		Then(ItemRemoved{SKU: "apple", Quantity: 3})
	assert.Equal(t, map[string]int{"pear": 1}, c.Items)
}

func TestRemoveItemNotInCart(t *testing.T) {
	aggregatetest.For(t, NewCart).
		When(remove("kiwi")).
		ThenError(ErrItemNotInCart)
	aggregatetest.For(t, NewCart).
		Given(ItemAdded{SKU: "kiwi", Quantity: 1}, ItemRemoved{SKU: "kiwi", Quantity: 1}).
		When(remove("kiwi")).
		ThenError(ErrItemNotInCart)
}

func TestCheckout(t *testing.T) {
	c := aggregatetest.For(t, NewCart).
		Given(ItemAdded{SKU: "apple", Quantity: 2}, ItemAdded{SKU: "pear", Quantity: 1}).
		When(checkout).
		Then(CheckedOut{Lines: 2, Quantity: 3})
	assert.True(t, c.CheckedOut)
}

func TestCheckoutOfEmptyCart(t *testing.T) {
	aggregatetest.For(t, NewCart).
		When(checkout).
		ThenError(ErrEmptyCart)
	aggregatetest.For(t, NewCart).
		Given(ItemAdded{SKU: "apple", Quantity: 1}, ItemRemoved{SKU: "apple", Quantity: 1}).
		When(checkout).
		ThenError(ErrEmptyCart)
}

func TestCheckedOutCartRejectsChanges(t *testing.T) {
	given := []any{ItemAdded{SKU: "apple", Quantity: 1}, CheckedOut{Lines: 1, Quantity: 1}}
	for name, cmd := range map[string]func(*Cart) error{
		"add":                  add("pear", 1),
		"add an existing item": add("apple", 1),
		"remove":               remove("apple"),
		"checkout again":       checkout,
	} {
		t.Run(name, func(t *testing.T) {
			aggregatetest.For(t, NewCart).Given(given...).When(cmd).ThenError(ErrCheckedOut)
		})
	}
}

// A shopping trip played command by command, as a repository would.
func TestShoppingTrip(t *testing.T) {
	k := aggregatetest.NewKit(t, NewCart)
	k.MustDo(add("apple", 2))
	k.MustDo(add("pear", 1))
	k.MustDo(add("apple", 3))
	require.ErrorIs(t, k.Do(add("plum", 0)), ErrInvalidQuantity)
	k.MustDo(remove("pear"))
	require.ErrorIs(t, k.Do(remove("pear")), ErrItemNotInCart)
	k.MustDo(checkout)
	require.ErrorIs(t, k.Do(add("fig", 1)), ErrCheckedOut)

	assert.Equal(t, []any{
		ItemAdded{SKU: "apple", Quantity: 2},
		ItemAdded{SKU: "pear", Quantity: 1},
		ItemAdded{SKU: "apple", Quantity: 3},
		ItemRemoved{SKU: "pear", Quantity: 1},
		CheckedOut{Lines: 1, Quantity: 5},
	}, k.Events(), "rejected commands recorded nothing")
	removed, ok := aggregatetest.Next[ItemRemoved](k)
	require.True(t, ok)
	assert.Equal(t, "pear", removed.SKU)
	out, ok := aggregatetest.Next[CheckedOut](k)
	require.True(t, ok)
	assert.Equal(t, 5, out.Quantity)

	c := k.State()
	assert.Equal(t, map[string]int{"apple": 5}, c.Items)
	assert.True(t, c.CheckedOut)
	assert.EqualValues(t, 5, c.Version())
}
