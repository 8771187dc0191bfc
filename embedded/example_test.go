package embedded_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/embedded"
)

// Start a server on a temporary store directory, create a file stream,
// publish to it, and restart the server: the message survives.
func Example() {
	dir, err := os.MkdirTemp("", "embedded-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	srv, err := embedded.Start(embedded.Options{Dir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()

	nc, err := srv.Connect()
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     "ORDERS",
		Subjects: []string{"orders.>"},
		Storage:  jetstream.FileStorage,
	}); err != nil {
		log.Fatal(err)
	}
	ack, err := js.Publish(ctx, "orders.42", []byte("created"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("stream:", ack.Stream, "sequence:", ack.Sequence)
	fmt.Println("fsync every write:", srv.NATS().JetStreamConfig().SyncAlways)

	if err := srv.Restart(); err != nil {
		log.Fatal(err)
	}
	nc2, err := srv.Connect()
	if err != nil {
		log.Fatal(err)
	}
	defer nc2.Close()
	js2, err := jetstream.New(nc2)
	if err != nil {
		log.Fatal(err)
	}
	stream, err := js2.Stream(ctx, "ORDERS")
	if err != nil {
		log.Fatal(err)
	}
	msg, err := stream.GetMsg(ctx, 1)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("after restart: %s %q\n", msg.Subject, msg.Data)

	// Output:
	// stream: ORDERS sequence: 1
	// fsync every write: true
	// after restart: orders.42 "created"
}

// An in-process server has no network listener at all: clients connect
// through Connect (or nats.InProcessServer(srv)).
func ExampleOptions_inProcessOnly() {
	dir, err := os.MkdirTemp("", "embedded-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	srv, err := embedded.Start(embedded.Options{Dir: dir, InProcessOnly: true})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown()

	nc, err := srv.Connect()
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	fmt.Printf("client URL: %q, connected: %v\n", srv.ClientURL(), nc.IsConnected())

	// Output:
	// client URL: "", connected: true
}

// Sync policies: the zero value fsyncs every write.
func ExampleSyncPolicy() {
	var zero embedded.SyncPolicy
	fmt.Println(zero)
	fmt.Println(embedded.SyncEvery(time.Second))
	fmt.Println(embedded.SyncServerDefault, embedded.SyncServerDefault.Interval())

	// Output:
	// always
	// every 1s
	// server-default 2m0s
}
