package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/aggregate/aggregatetest"
)

// newSwitch is the constructor the repository uses: the functional
// aggregate made of Initial and Evolve.
var newSwitch = aggregate.Functional(Initial, Evolve)

// do is the command function Repository.Update runs for cmd.
func do(cmd Command) func(*aggregate.State[Switch]) error {
	return aggregate.Decide(Decide, cmd)
}

func TestTurnOn(t *testing.T) {
	s := aggregatetest.For(t, aggregate.Functional(Initial, Evolve)).
		When(do(TurnOn{})).
		Then(TurnedOn{})
	assert.Equal(t, Switch{On: true, Flips: 1}, s.State)
	aggregatetest.For(t, newSwitch).
		Given(TurnedOn{}, TurnedOff{}).
		When(do(TurnOn{})).
		Then(TurnedOn{})
}

func TestTurnOnALitSwitch(t *testing.T) {
	aggregatetest.For(t, newSwitch).
		Given(TurnedOn{}).
		When(do(TurnOn{})).
		ThenError(ErrAlreadyOn)
	aggregatetest.For(t, newSwitch).
		Given(TurnedOn{}, TurnedOff{}, TurnedOn{}).
		When(do(TurnOn{})).
		ThenError(ErrAlreadyOn)
}

func TestTurnOff(t *testing.T) {
	s := aggregatetest.For(t, newSwitch).
		Given(TurnedOn{}).
		When(do(TurnOff{})).
		Then(TurnedOff{})
	assert.Equal(t, Switch{On: false, Flips: 2}, s.State)
}

func TestTurnOffADarkSwitch(t *testing.T) {
	aggregatetest.For(t, newSwitch).
		When(do(TurnOff{})).
		ThenError(ErrAlreadyOff)
	aggregatetest.For(t, newSwitch).
		Given(TurnedOn{}, TurnedOff{}).
		When(do(TurnOff{})).
		ThenError(ErrAlreadyOff)
}

// In the functional style the rules are pure functions: test them directly
// too.
func TestDecideAndEvolve(t *testing.T) {
	off, on := Switch{}, Switch{On: true, Flips: 1}
	for _, c := range []struct {
		name   string
		state  Switch
		cmd    Command
		events []any
		err    error
	}{
		{"turn on when off", off, TurnOn{}, []any{TurnedOn{}}, nil},
		{"turn on when on", on, TurnOn{}, nil, ErrAlreadyOn},
		{"turn off when on", on, TurnOff{}, []any{TurnedOff{}}, nil},
		{"turn off when off", off, TurnOff{}, nil, ErrAlreadyOff},
	} {
		t.Run(c.name, func(t *testing.T) {
			events, err := Decide(c.state, c.cmd)
			require.ErrorIs(t, err, c.err)
			assert.Equal(t, c.events, events)
		})
	}
	s := Initial("hall")
	assert.Equal(t, Switch{}, s, "a new switch is off")
	s = Evolve(s, TurnedOn{})
	assert.Equal(t, Switch{On: true, Flips: 1}, s)
	s = Evolve(s, TurnedOff{})
	assert.Equal(t, Switch{On: false, Flips: 2}, s)
	assert.Equal(t, s, Evolve(s, struct{}{}), "unknown events change nothing")
}

// A switch flipped command by command, as a repository would play it.
func TestFlipping(t *testing.T) {
	k := aggregatetest.NewKit(t, newSwitch)
	require.ErrorIs(t, k.Do(do(TurnOff{})), ErrAlreadyOff)
	k.MustDo(do(TurnOn{}))
	require.ErrorIs(t, k.Do(do(TurnOn{})), ErrAlreadyOn)
	k.MustDo(do(TurnOff{}))
	k.MustDo(do(TurnOn{}))

	assert.Equal(t, []any{TurnedOn{}, TurnedOff{}, TurnedOn{}}, k.Events(), "rejected commands recorded nothing")
	_, ok := aggregatetest.Next[TurnedOff](k)
	assert.True(t, ok)
	s := k.State()
	assert.Equal(t, Switch{On: true, Flips: 3}, s.State)
	assert.EqualValues(t, 3, s.Version())
}
