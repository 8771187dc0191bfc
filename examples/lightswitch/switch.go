package main

import (
	"errors"
	"fmt"

	"github.com/esnats/esnats/stream"
)

// The light switch is written in the functional style: its state is a plain
// value (Switch), events evolve it (Evolve, a pure function), and commands
// are decided from the state (Decide, a pure function returning events).
// aggregate.Functional and aggregate.Decide run these on the same
// Repository as an aggregate that embeds aggregate.Root.

// AggregateType is the aggregate type name of switches.
const AggregateType = "switch"

// Switch is a light switch's state.
type Switch struct {
	On    bool `json:"on"`
	Flips int  `json:"flips"` // how many times it was turned on or off
}

func (s Switch) String() string {
	if s.On {
		return fmt.Sprintf("on, flipped %d times", s.Flips)
	}
	return fmt.Sprintf("off, flipped %d times", s.Flips)
}

// Events: facts, named in the past tense.

// TurnedOn says the switch was turned on.
type TurnedOn struct{}

// TurnedOff says the switch was turned off.
type TurnedOff struct{}

// Register registers the switch's events under explicit, stable names. It
// panics if a name or type is already registered on reg.
func Register(reg *stream.Registry) {
	stream.MustRegister[TurnedOn](reg, "switch-turned-on")
	stream.MustRegister[TurnedOff](reg, "switch-turned-off")
}

// Commands: what someone asks the switch to do. Decide accepts or rejects
// them.

// Command is TurnOn or TurnOff.
type Command interface{ command() }

// TurnOn asks to turn the switch on.
type TurnOn struct{}

// TurnOff asks to turn the switch off.
type TurnOff struct{}

func (TurnOn) command()  {}
func (TurnOff) command() {}

// Errors of the commands. A rejected command records no event.
var (
	ErrAlreadyOn  = errors.New("switch is already on")
	ErrAlreadyOff = errors.New("switch is already off")
)

// Initial is the state of a switch with no events: off.
func Initial(id string) Switch { return Switch{} }

// Evolve returns the state after one event. It is pure and never fails.
func Evolve(s Switch, event any) Switch {
	switch event.(type) {
	case TurnedOn:
		s.On = true
		s.Flips++
	case TurnedOff:
		s.On = false
		s.Flips++
	}
	return s
}

// Decide returns the events a command causes in state s, or the error that
// rejects it: ErrAlreadyOn, ErrAlreadyOff. It is pure.
func Decide(s Switch, cmd Command) ([]any, error) {
	switch cmd.(type) {
	case TurnOn:
		if s.On {
			return nil, ErrAlreadyOn
		}
		return []any{TurnedOn{}}, nil
	case TurnOff:
		if !s.On {
			return nil, ErrAlreadyOff
		}
		return []any{TurnedOff{}}, nil
	}
	return nil, fmt.Errorf("unknown command %T", cmd)
}
