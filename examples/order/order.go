package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/stream"
)

// AggregateType is the aggregate type name of orders.
const AggregateType = "order"

// Status is where an order stands. It moves forward one step at a time:
// new -> paid -> confirmed -> shipped.
type Status string

// The statuses, in the only order an order goes through them.
const (
	StatusNew       Status = "new"
	StatusPaid      Status = "paid"
	StatusConfirmed Status = "confirmed"
	StatusShipped   Status = "shipped"
)

// lifecycle lists the statuses in order.
var lifecycle = []Status{StatusNew, StatusPaid, StatusConfirmed, StatusShipped}

// Valid reports whether s is one of the statuses.
func (s Status) Valid() bool { return slices.Contains(lifecycle, s) }

// next returns the status after s; ok is false for the last one.
func (s Status) next() (Status, bool) {
	i := slices.Index(lifecycle, s)
	if i < 0 || i == len(lifecycle)-1 {
		return "", false
	}
	return lifecycle[i+1], true
}

// Line is one line of an order.
type Line struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

func (l Line) String() string { return fmt.Sprintf("%d x %s", l.Quantity, l.SKU) }

// Events: facts, named in the past tense.

// OrderCreated says the customer placed the order with these lines. Its
// status is then StatusNew.
type OrderCreated struct {
	Customer string `json:"customer"`
	Lines    []Line `json:"lines"`
}

// StatusChanged says the order moved from one status to the next.
type StatusChanged struct {
	From Status `json:"from"`
	To   Status `json:"to"`
}

// Register registers the order's events under explicit, stable names. It
// panics if a name or type is already registered on reg.
func Register(reg *stream.Registry) {
	stream.MustRegister[OrderCreated](reg, "order-created")
	stream.MustRegister[StatusChanged](reg, "order-status-changed")
}

// Errors of the order's commands. A rejected command records no event.
var (
	// ErrNotCreated rejects a command on an order that was never created.
	ErrNotCreated = errors.New("order not created")
	// ErrAlreadyCreated rejects Create on an order that exists. (Through
	// Repository.Create, the repository refuses first: aggregate.ErrExists.)
	ErrAlreadyCreated = errors.New("order already created")
	// ErrInvalidOrder rejects an order without customer or lines, or with
	// a line whose SKU is empty or quantity not positive.
	ErrInvalidOrder = errors.New("invalid order")
	// ErrInvalidStatus rejects a status that is not one of the statuses.
	ErrInvalidStatus = errors.New("invalid status")
	// ErrInvalidTransition rejects a status change that is not the next
	// step forward. The error is a *TransitionError naming both statuses.
	ErrInvalidTransition = errors.New("invalid status transition")
)

// TransitionError is the error of a status change that is not the next step
// forward. It matches ErrInvalidTransition.
type TransitionError struct {
	From, To Status
}

func (e *TransitionError) Error() string {
	msg := fmt.Sprintf("%v: %s -> %s", ErrInvalidTransition, e.From, e.To)
	if next, ok := e.From.next(); ok {
		return msg + " (the next status is " + string(next) + ")"
	}
	return msg + " (" + string(e.From) + " is the last status)"
}

// Is makes errors.Is(err, ErrInvalidTransition) true.
func (e *TransitionError) Is(target error) bool { return target == ErrInvalidTransition }

// Order is an order: created once, then moved through its statuses.
type Order struct {
	aggregate.Root
	Created  bool   `json:"created"`
	Customer string `json:"customer"`
	Lines    []Line `json:"lines"`
	Status   Status `json:"status"`
}

// NewOrder returns an order that was not created yet.
func NewOrder(id string) *Order { return &Order{} }

// Apply changes the state by one event.
func (o *Order) Apply(event any) {
	switch e := event.(type) {
	case OrderCreated:
		o.Created = true
		o.Customer = e.Customer
		o.Lines = e.Lines
		o.Status = StatusNew
	case StatusChanged:
		o.Status = e.To
	}
}

// Create places the order. Errors: ErrAlreadyCreated, ErrInvalidOrder.
func (o *Order) Create(customer string, lines ...Line) error {
	if o.Created {
		return ErrAlreadyCreated
	}
	if strings.TrimSpace(customer) == "" {
		return fmt.Errorf("%w: no customer", ErrInvalidOrder)
	}
	if len(lines) == 0 {
		return fmt.Errorf("%w: no lines", ErrInvalidOrder)
	}
	for i, l := range lines {
		if l.SKU == "" || l.Quantity <= 0 {
			return fmt.Errorf("%w: line %d (%v) needs a SKU and a positive quantity", ErrInvalidOrder, i+1, l)
		}
	}
	o.Record(OrderCreated{Customer: customer, Lines: slices.Clone(lines)})
	return nil
}

// ChangeStatus moves the order to status to, which must be the next one.
// Errors: ErrNotCreated, ErrInvalidStatus, ErrInvalidTransition (a
// *TransitionError).
func (o *Order) ChangeStatus(to Status) error {
	if !o.Created {
		return ErrNotCreated
	}
	if !to.Valid() {
		return fmt.Errorf("%w: %q (valid: %v)", ErrInvalidStatus, to, lifecycle)
	}
	if next, ok := o.Status.next(); !ok || to != next {
		return &TransitionError{From: o.Status, To: to}
	}
	o.Record(StatusChanged{From: o.Status, To: to})
	return nil
}

// Pay is ChangeStatus(StatusPaid).
func (o *Order) Pay() error { return o.ChangeStatus(StatusPaid) }

// Confirm is ChangeStatus(StatusConfirmed).
func (o *Order) Confirm() error { return o.ChangeStatus(StatusConfirmed) }

// Ship is ChangeStatus(StatusShipped).
func (o *Order) Ship() error { return o.ChangeStatus(StatusShipped) }

// String describes the order's state.
func (o *Order) String() string {
	if !o.Created {
		return fmt.Sprintf("not created, version %d", o.Version())
	}
	return fmt.Sprintf("customer %s, lines %v, status %s, version %d", o.Customer, o.Lines, o.Status, o.Version())
}
