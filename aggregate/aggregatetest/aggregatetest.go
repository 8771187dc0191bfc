// Package aggregatetest tests aggregates without a NATS server: given past
// events, when a command runs, then it records the expected events or fails
// with the expected error.
//
//	aggregatetest.For(t, NewCart).
//		Given(ItemAdded{SKU: "apple", Quantity: 1}).
//		When(func(c *Cart) error { return c.Checkout() }).
//		Then(CheckedOut{})
//
// Kit is the stateful variant: run commands one after another and look at
// the events so far, the next event of a type and the state.
package aggregatetest

import (
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/esnats/esnats/aggregate"
)

// DefaultID is the aggregate id used when none is given.
const DefaultID = "test-1"

// Scenario is one given/when/then case.
type Scenario[A aggregate.Aggregate] struct {
	tb     testing.TB
	newA   func(id string) A
	id     string
	given  []any
	when   func(A) error
	ran    bool
	result A
	err    error
}

// For starts a scenario for aggregates made by newA (the same constructor
// the repository uses), with id DefaultID.
func For[A aggregate.Aggregate](tb testing.TB, newA func(id string) A) *Scenario[A] {
	tb.Helper()
	return &Scenario[A]{tb: tb, newA: newA, id: DefaultID}
}

// WithID sets the aggregate id.
func (s *Scenario[A]) WithID(id string) *Scenario[A] { s.id = id; return s }

// Given sets the events that already happened, oldest first.
func (s *Scenario[A]) Given(events ...any) *Scenario[A] { s.given = events; return s }

// When sets the command.
func (s *Scenario[A]) When(cmd func(A) error) *Scenario[A] { s.when = cmd; return s }

func (s *Scenario[A]) run() {
	s.tb.Helper()
	if s.ran {
		return
	}
	s.ran = true
	if s.when == nil {
		s.tb.Fatal("aggregatetest: When was not called")
	}
	a := aggregate.Replay(aggregate.New(s.newA(s.id), s.id), s.given...)
	s.err = s.when(a)
	s.result = a
}

// Then asserts that the command succeeded and recorded exactly events, in
// order (compared with reflect.DeepEqual after dereferencing pointers).
// Then() with no events asserts that it succeeded and recorded nothing.
func (s *Scenario[A]) Then(events ...any) A {
	s.tb.Helper()
	s.run()
	if s.err != nil {
		s.tb.Fatalf("command failed: %v\nexpected events: %s", s.err, describe(events))
		return s.result
	}
	got := s.result.Uncommitted()
	if !equalEvents(got, events) {
		s.tb.Fatalf("recorded events differ\n got: %s\nwant: %s", describe(got), describe(events))
	}
	return s.result
}

// ThenError asserts that the command failed with an error matching target
// (errors.Is, or equal messages when target is not comparable) and recorded
// nothing.
func (s *Scenario[A]) ThenError(target error) {
	s.tb.Helper()
	s.run()
	if s.err == nil {
		s.tb.Fatalf("command succeeded, expected error %v; recorded: %s", target, describe(s.result.Uncommitted()))
		return
	}
	if !errors.Is(s.err, target) && s.err.Error() != target.Error() {
		s.tb.Fatalf("command failed with %q, expected %q", s.err, target)
	}
	// A rejected command records nothing: events recorded before the error
	// would be applied to state that is then thrown away, and are a bug.
	if n := len(s.result.Uncommitted()); n > 0 {
		s.tb.Fatalf("command failed with %q but recorded %d events first: %s", s.err, n, describe(s.result.Uncommitted()))
	}
}

// ThenState runs the command, asserts it succeeded, and returns the
// aggregate for assertions on its state.
func (s *Scenario[A]) ThenState() A {
	s.tb.Helper()
	s.run()
	if s.err != nil {
		s.tb.Fatalf("command failed: %v", s.err)
	}
	return s.result
}

// Kit runs commands on one aggregate one after another, as a repository
// would (each command's events are kept), without a store.
type Kit[A aggregate.Aggregate] struct {
	tb     testing.TB
	newA   func(id string) A
	a      A
	events []any
	cursor int
}

// NewKit returns a kit for a new aggregate made by newA with id DefaultID,
// after the given past events.
func NewKit[A aggregate.Aggregate](tb testing.TB, newA func(id string) A, given ...any) *Kit[A] {
	a := aggregate.Replay(aggregate.New(newA(DefaultID), DefaultID), given...)
	return &Kit[A]{tb: tb, newA: newA, a: a, events: append([]any(nil), given...), cursor: len(given)}
}

// Do runs a command. On success its events are kept; on error nothing is
// (and the aggregate is rebuilt from the events so far, as a repository
// would reload it).
func (k *Kit[A]) Do(cmd func(A) error) error {
	err := cmd(k.a)
	if err != nil {
		id := k.a.ID()
		fresh := aggregate.New(k.newA(id), id)
		k.a = aggregate.Replay(fresh, k.events...)
		return err
	}
	k.events = append(k.events, k.a.Uncommitted()...)
	aggregate.MarkSaved(k.a)
	return nil
}

// MustDo runs a command and fails the test if it returns an error.
func (k *Kit[A]) MustDo(cmd func(A) error) {
	k.tb.Helper()
	if err := k.Do(cmd); err != nil {
		k.tb.Fatalf("command failed: %v", err)
	}
}

// State returns the aggregate as it is now.
func (k *Kit[A]) State() A { return k.a }

// Events returns every event so far, given ones included, oldest first.
func (k *Kit[A]) Events() []any { return append([]any(nil), k.events...) }

// Next returns the next event of type E recorded after the previous call to
// Next (or after the given events), skipping events of other types. ok is
// false when there is none.
func Next[E any, A aggregate.Aggregate](k *Kit[A]) (E, bool) {
	for k.cursor < len(k.events) {
		e := k.events[k.cursor]
		k.cursor++
		if v, ok := e.(E); ok {
			return v, true
		}
	}
	var zero E
	return zero, false
}

func equalEvents(got, want []any) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if !reflect.DeepEqual(deref(got[i]), deref(want[i])) {
			return false
		}
	}
	return true
}

func deref(e any) any {
	if v := reflect.ValueOf(e); v.Kind() == reflect.Pointer && !v.IsNil() {
		return v.Elem().Interface()
	}
	return e
}

func describe(events []any) string {
	if len(events) == 0 {
		return "(none)"
	}
	s := ""
	for i, e := range events {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%T%+v", deref(e), deref(e))
	}
	return s
}
