package main

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate/aggregatetest"
)

var lines = []Line{{SKU: "book", Quantity: 2}, {SKU: "pen", Quantity: 1}}

var created = OrderCreated{Customer: "alice", Lines: lines}

func create(customer string, lines ...Line) func(*Order) error {
	return func(o *Order) error { return o.Create(customer, lines...) }
}

func changeStatus(to Status) func(*Order) error {
	return func(o *Order) error { return o.ChangeStatus(to) }
}

// given returns the events of an order created and moved to status.
func given(status Status) []any {
	events := []any{created}
	for from := StatusNew; from != status; {
		to, ok := from.next()
		if !ok {
			panic("no status " + status)
		}
		events = append(events, StatusChanged{From: from, To: to})
		from = to
	}
	return events
}

func TestCreate(t *testing.T) {
	o := aggregatetest.For(t, NewOrder).
		When(create("alice", lines...)).
		Then(created)
	assert.True(t, o.Created)
	assert.Equal(t, "alice", o.Customer)
	assert.Equal(t, lines, o.Lines)
	assert.Equal(t, StatusNew, o.Status)
}

func TestCreateInvalidOrder(t *testing.T) {
	for name, cmd := range map[string]func(*Order) error{
		"no customer":       create(" ", lines...),
		"no lines":          create("alice"),
		"line without SKU":  create("alice", Line{Quantity: 1}),
		"zero quantity":     create("alice", Line{SKU: "book", Quantity: 0}),
		"negative quantity": create("alice", Line{SKU: "book", Quantity: 1}, Line{SKU: "pen", Quantity: -1}),
	} {
		t.Run(name, func(t *testing.T) {
			aggregatetest.For(t, NewOrder).When(cmd).ThenError(ErrInvalidOrder)
		})
	}
}

func TestCreateTwice(t *testing.T) {
	aggregatetest.For(t, NewOrder).
		Given(created).
		When(create("bob", lines...)).
		ThenError(ErrAlreadyCreated)
}

func TestCommandsOnOrderNotCreated(t *testing.T) {
	for name, cmd := range map[string]func(*Order) error{
		"pay":                         (*Order).Pay,
		"confirm":                     (*Order).Confirm,
		"ship":                        (*Order).Ship,
		"change to new":               changeStatus(StatusNew),
		"change to an invalid status": changeStatus("lost"),
	} {
		t.Run(name, func(t *testing.T) {
			aggregatetest.For(t, NewOrder).When(cmd).ThenError(ErrNotCreated)
		})
	}
}

func TestStatusMovesForward(t *testing.T) {
	for _, c := range []struct {
		from, to Status
		cmd      func(*Order) error
	}{
		{StatusNew, StatusPaid, (*Order).Pay},
		{StatusPaid, StatusConfirmed, (*Order).Confirm},
		{StatusConfirmed, StatusShipped, (*Order).Ship},
		{StatusNew, StatusPaid, changeStatus(StatusPaid)},
		{StatusPaid, StatusConfirmed, changeStatus(StatusConfirmed)},
		{StatusConfirmed, StatusShipped, changeStatus(StatusShipped)},
	} {
		o := aggregatetest.For(t, NewOrder).
			Given(given(c.from)...).
			When(c.cmd).
			Then(StatusChanged{From: c.from, To: c.to})
		assert.Equal(t, c.to, o.Status)
	}
}

// Every change that is not the next step forward (skipping, staying, going
// back) is refused with a *TransitionError naming both statuses.
func TestInvalidTransitions(t *testing.T) {
	for _, from := range lifecycle {
		next, _ := from.next()
		for _, to := range lifecycle {
			if to == next {
				continue
			}
			t.Run(fmt.Sprintf("%s to %s", from, to), func(t *testing.T) {
				aggregatetest.For(t, NewOrder).
					Given(given(from)...).
					When(func(o *Order) error {
						err := o.ChangeStatus(to)
						var te *TransitionError
						if assert.ErrorAs(t, err, &te) {
							assert.Equal(t, TransitionError{From: from, To: to}, *te)
							assert.Contains(t, err.Error(), string(from)+" -> "+string(to))
						}
						return err
					}).
					ThenError(ErrInvalidTransition)
			})
		}
	}
}

func TestInvalidStatus(t *testing.T) {
	for _, s := range []Status{"", "lost", "Paid", "delivered"} {
		aggregatetest.For(t, NewOrder).
			Given(created).
			When(changeStatus(s)).
			ThenError(ErrInvalidStatus)
	}
}

// An order's life, command by command, as a repository would play it.
func TestOrderLife(t *testing.T) {
	k := aggregatetest.NewKit(t, NewOrder)
	require.ErrorIs(t, k.Do((*Order).Pay), ErrNotCreated)
	k.MustDo(create("alice", lines...))
	require.ErrorIs(t, k.Do(create("alice", lines...)), ErrAlreadyCreated)
	require.ErrorIs(t, k.Do((*Order).Ship), ErrInvalidTransition)
	k.MustDo((*Order).Pay)
	require.ErrorIs(t, k.Do(changeStatus("lost")), ErrInvalidStatus)
	k.MustDo((*Order).Confirm)
	require.ErrorIs(t, k.Do((*Order).Pay), ErrInvalidTransition)
	k.MustDo((*Order).Ship)

	c, ok := aggregatetest.Next[OrderCreated](k)
	require.True(t, ok)
	assert.Equal(t, created, c)
	var path []Status
	for {
		ch, ok := aggregatetest.Next[StatusChanged](k)
		if !ok {
			break
		}
		path = append(path, ch.To)
	}
	assert.Equal(t, []Status{StatusPaid, StatusConfirmed, StatusShipped}, path)
	assert.Len(t, k.Events(), 4, "rejected commands recorded nothing")

	o := k.State()
	assert.Equal(t, StatusShipped, o.Status)
	assert.EqualValues(t, 4, o.Version())
}
