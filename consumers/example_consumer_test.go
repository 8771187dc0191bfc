package consumers_test

import (
	"context"
	"fmt"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/consumers"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

type bookAcquired struct {
	Title string `json:"title"`
}

type bookBorrowed struct {
	Member string `json:"member"`
}

type bookReturned struct {
	Member string `json:"member"`
}

// A durable consumer delivers a library's events to typed handlers, in
// stream order. Events of a type with no handler (bookAcquired) are
// acknowledged without a call. The consumer's position, its
// acknowledgement floor, is kept by the server: run again, it would resume
// after event 4.
func ExampleConsumer() {
	dir, _ := os.MkdirTemp("", "esnats-example-")
	defer os.RemoveAll(dir)
	srv, err := embedded.Start(embedded.Options{Dir: dir})
	if err != nil {
		panic(err)
	}
	defer srv.Shutdown()
	nc, _ := srv.Connect()
	defer nc.Close()
	js, _ := jetstream.New(nc)

	reg := stream.NewRegistry()
	stream.MustRegister[bookAcquired](reg, "BookAcquired")
	stream.MustRegister[bookBorrowed](reg, "BookBorrowed")
	stream.MustRegister[bookReturned](reg, "BookReturned")
	store, err := stream.NewStore(context.Background(), js, stream.Config{Name: "library", Registry: reg})
	if err != nil {
		panic(err)
	}
	dune := stream.Aggregate{Type: "book", ID: "dune"}
	emma := stream.Aggregate{Type: "book", ID: "emma"}
	for _, a := range []struct {
		book stream.Aggregate
		data any
	}{
		{dune, bookAcquired{Title: "Dune"}},
		{dune, bookBorrowed{Member: "ann"}},
		{emma, bookBorrowed{Member: "bob"}},
		{dune, bookReturned{Member: "ann"}},
	} {
		if _, err := store.Append(context.Background(), a.book, stream.ExpectAny(), []stream.EventData{{Data: a.data}}); err != nil {
			panic(err)
		}
	}

	loans, err := consumers.New(js, store, consumers.Config{Name: "loans", AggregateTypes: []string{"book"}})
	if err != nil {
		panic(err)
	}
	// Stop after the three loan events: Run acknowledges the batch in hand
	// and returns nil.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	handled := 0
	seen := func() {
		if handled++; handled == 3 {
			cancel()
		}
	}
	err = consumers.On(loans, func(_ context.Context, ev *stream.Event, e bookBorrowed) error {
		fmt.Println(ev.Sequence, ev.Aggregate.ID, "borrowed by", e.Member)
		seen()
		return nil
	})
	if err != nil {
		panic(err)
	}
	err = consumers.On(loans, func(_ context.Context, ev *stream.Event, e bookReturned) error {
		fmt.Println(ev.Sequence, ev.Aggregate.ID, "returned by", e.Member)
		seen()
		return nil
	})
	if err != nil {
		panic(err)
	}
	if err := loans.Run(ctx); err != nil {
		panic(err)
	}

	st, err := loans.Status(context.Background())
	if err != nil {
		panic(err)
	}
	fmt.Println("position:", st.Position, "lag:", st.Lag, "handled:", st.Handled)
	// Output:
	// 2 dune borrowed by ann
	// 3 emma borrowed by bob
	// 4 dune returned by ann
	// position: 4 lag: 0 handled: 3
}
