package aggregate

// State is an aggregate in the functional style: its state is a plain value
// S, evolved by a pure function, and commands are decide functions from the
// state and a command to events. It runs on the same Root and Repository as
// the embedded style:
//
//	repo, _ := aggregate.NewRepository(aggregate.Config[*aggregate.State[Switch]]{
//		Store: store, Type: "switch",
//		New:   aggregate.Functional(func(id string) Switch { return Switch{} }, evolve),
//	})
//	repo.Update(ctx, "hall", aggregate.Decide(decide, TurnOn{}))
type State[S any] struct {
	Root
	// State is the current state: the initial state with every applied
	// event evolved into it.
	State  S
	evolve func(S, any) S
}

// Apply evolves the state by one event.
func (s *State[S]) Apply(event any) { s.State = s.evolve(s.State, event) }

// Functional returns the constructor of functional aggregates: initial
// gives the state of an aggregate with no events, evolve applies one event.
func Functional[S any](initial func(id string) S, evolve func(S, any) S) func(id string) *State[S] {
	return func(id string) *State[S] {
		return &State[S]{State: initial(id), evolve: evolve}
	}
}

// Decide adapts a decide function and one command to the func(A) error
// that Repository.Update runs: the events decide returns are recorded; its
// error rejects the command and records nothing.
//
// When decide takes an interface of commands, Go infers C from cmd's
// dynamic type and fails; pass cmd as the interface type
// (Decide(decide, Command(TurnOn{}))) or give the type arguments.
func Decide[S, C any](decide func(S, C) ([]any, error), cmd C) func(*State[S]) error {
	return func(s *State[S]) error {
		events, err := decide(s.State, cmd)
		if err != nil {
			return err
		}
		s.Record(events...)
		return nil
	}
}
