package aggregatetest_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/aggregate/aggregatetest"
)

type Opened struct{ Owner string }
type Deposited struct{ Amount int }
type Withdrawn struct{ Amount int }

var errInsufficient = errors.New("insufficient funds")

type Account struct {
	aggregate.Root
	Owner   string
	Balance int
}

func NewAccount(string) *Account { return &Account{} }

func (a *Account) Apply(e any) {
	switch e := e.(type) {
	case Opened:
		a.Owner = e.Owner
	case Deposited:
		a.Balance += e.Amount
	case Withdrawn:
		a.Balance -= e.Amount
	}
}

func (a *Account) Withdraw(n int) error {
	if n > a.Balance {
		return errInsufficient
	}
	a.Record(Withdrawn{Amount: n})
	return nil
}

func (a *Account) Deposit(n int) error {
	a.Record(Deposited{Amount: n})
	return nil
}

func TestScenario(t *testing.T) {
	aggregatetest.For(t, NewAccount).
		Given(Opened{Owner: "ann"}, Deposited{Amount: 10}).
		When(func(a *Account) error { return a.Withdraw(4) }).
		Then(Withdrawn{Amount: 4})

	aggregatetest.For(t, NewAccount).
		Given(Opened{Owner: "ann"}, Deposited{Amount: 10}).
		When(func(a *Account) error { return a.Withdraw(11) }).
		ThenError(errInsufficient)

	a := aggregatetest.For(t, NewAccount).
		Given(Deposited{Amount: 5}).
		When(func(a *Account) error { return a.Deposit(1) }).
		ThenState()
	assert.Equal(t, 6, a.Balance)
	assert.EqualValues(t, 2, a.Version())
}

// The kit's assertions fail when they should: run them against a recording
// testing.TB.
type recorder struct {
	testing.TB
	failed bool
	msg    string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = true
	r.msg = format
}
func (r *recorder) Fatal(args ...any) { r.failed = true }

func TestScenarioFailures(t *testing.T) {
	cases := []struct {
		name string
		run  func(tb testing.TB)
	}{
		{"wrong events", func(tb testing.TB) {
			aggregatetest.For(tb, NewAccount).Given(Deposited{Amount: 10}).
				When(func(a *Account) error { return a.Withdraw(4) }).Then(Withdrawn{Amount: 5})
		}},
		{"unexpected error", func(tb testing.TB) {
			aggregatetest.For(tb, NewAccount).When(func(a *Account) error { return a.Withdraw(4) }).Then(Withdrawn{Amount: 4})
		}},
		{"missing error", func(tb testing.TB) {
			aggregatetest.For(tb, NewAccount).Given(Deposited{Amount: 10}).
				When(func(a *Account) error { return a.Withdraw(4) }).ThenError(errInsufficient)
		}},
		{"events recorded before an error", func(tb testing.TB) {
			aggregatetest.For(tb, NewAccount).Given(Deposited{Amount: 10}).
				When(func(a *Account) error { _ = a.Withdraw(4); return a.Withdraw(100) }).ThenError(errInsufficient)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{TB: t}
			c.run(r)
			assert.True(t, r.failed, "the kit must report this as a failure")
		})
	}
}

func TestKit(t *testing.T) {
	k := aggregatetest.NewKit(t, NewAccount, Opened{Owner: "bo"})
	k.MustDo(func(a *Account) error { return a.Deposit(10) })
	assert.ErrorIs(t, k.Do(func(a *Account) error { _ = a.Deposit(50); return a.Withdraw(100) }), errInsufficient)
	assert.Equal(t, 10, k.State().Balance, "a failed command leaves no trace")
	k.MustDo(func(a *Account) error { return a.Withdraw(3) })
	assert.Equal(t, []any{Opened{Owner: "bo"}, Deposited{Amount: 10}, Withdrawn{Amount: 3}}, k.Events())
	d, ok := aggregatetest.Next[Deposited](k)
	assert.True(t, ok)
	assert.Equal(t, 10, d.Amount)
	w, ok := aggregatetest.Next[Withdrawn](k)
	assert.True(t, ok)
	assert.Equal(t, 3, w.Amount)
	_, ok = aggregatetest.Next[Deposited](k)
	assert.False(t, ok)
	assert.Equal(t, 7, k.State().Balance)
	assert.EqualValues(t, 3, k.State().Version())
}

// In a test function: given past events, when a command, then its events.
func ExampleFor() {
	_ = func(t *testing.T) {
		aggregatetest.For(t, NewAccount).
			Given(Deposited{Amount: 10}).
			When(func(a *Account) error { return a.Withdraw(4) }).
			Then(Withdrawn{Amount: 4})
	}
}

// The stateful kit: commands one after another.
func ExampleNewKit() {
	t := &recorder{} // in a test, the *testing.T you are given
	k := aggregatetest.NewKit(t, NewAccount, Opened{Owner: "bo"})
	k.MustDo(func(a *Account) error { return a.Deposit(10) })
	err := k.Do(func(a *Account) error { return a.Withdraw(50) })
	fmt.Println(err, k.State().Balance, len(k.Events()))
	// Output: insufficient funds 10 2
}
