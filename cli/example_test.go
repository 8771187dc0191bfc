package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/cli"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

// Run one esnats command line against a server, as a script would, and
// read its JSON output.
func ExampleRun() {
	dir, _ := os.MkdirTemp("", "esnats-example-")
	defer os.RemoveAll(dir)
	os.Setenv("XDG_CONFIG_HOME", dir) // no nats CLI context of this machine's user
	srv, err := embedded.Start(embedded.Options{Dir: dir})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Shutdown()
	nc, _ := srv.Connect()
	defer nc.Close()
	js, _ := jetstream.New(nc)

	ctx := context.Background()
	store, err := stream.NewStore(ctx, js, stream.Config{Name: "shop", Registry: registry()})
	if err != nil {
		fmt.Println(err)
		return
	}
	_, err = store.Append(ctx, stream.Aggregate{Type: "cart", ID: "alice"}, stream.ExpectNone(),
		[]stream.EventData{{Data: ItemAdded{SKU: "apple", Quantity: 2}}})
	if err != nil {
		fmt.Println(err)
		return
	}

	var out bytes.Buffer
	code := cli.Run(ctx, cli.Options{Stdout: &out, Stderr: os.Stdout},
		[]string{"-s", srv.ClientURL(), "events", "shop", "--type", "cart", "--json"})
	var ev struct {
		Seq     uint64          `json:"seq"`
		ID      string          `json:"aggregate_id"`
		Version uint64          `json:"version"`
		Type    string          `json:"type"`
		Data    json.RawMessage `json:"data"`
	}
	_ = json.Unmarshal(out.Bytes(), &ev)
	fmt.Println("exit", code)
	fmt.Println(ev.Seq, ev.ID, ev.Version, ev.Type, string(ev.Data))

	var errOut bytes.Buffer
	code = cli.Run(ctx, cli.Options{Stdout: os.Stdout, Stderr: &errOut},
		[]string{"-s", srv.ClientURL(), "events", "nope"})
	fmt.Print(strings.ReplaceAll(errOut.String(), srv.ClientURL(), "nats://..."))
	fmt.Println("exit", code)
	// Output:
	// exit 0
	// 1 alice 1 ItemAdded {"quantity":2,"sku":"apple"}
	// esnats: no event store "nope" on nats://... (event stores there: shop)
	// exit 4
}
