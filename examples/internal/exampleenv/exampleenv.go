// Package exampleenv connects the examples to NATS: the server at $NATS_URL
// when it is set, else an embedded server with JetStream (fsync always) in a
// temporary directory, removed afterwards.
package exampleenv

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/embedded"
)

// Connect connects as described in the package comment and says where on
// w. With $NATS_URL it also returns a per-run suffix for aggregate ids, so
// that a demo can run again on the same server. cleanup closes the
// connection and stops and removes the embedded server; it may be called
// more than once.
func Connect(w io.Writer, name string) (js jetstream.JetStream, suffix string, cleanup func(), err error) {
	var nc *nats.Conn
	var once sync.Once
	if url := os.Getenv("NATS_URL"); url != "" {
		if nc, err = nats.Connect(url); err != nil {
			return nil, "", nil, fmt.Errorf("connecting to %s: %w", url, err)
		}
		fmt.Fprintf(w, "NATS server at %s\n", url)
		suffix = "-" + strconv.FormatInt(time.Now().UnixMilli(), 36) // new ids every run
		cleanup = func() { once.Do(nc.Close) }
	} else {
		dir, err := os.MkdirTemp("", "esnats-"+name+"-")
		if err != nil {
			return nil, "", nil, err
		}
		srv, err := embedded.Start(embedded.Options{Dir: dir})
		if err != nil {
			os.RemoveAll(dir)
			return nil, "", nil, err
		}
		fmt.Fprintf(w, "embedded NATS server with JetStream at %s (data in %s)\n", srv.ClientURL(), dir)
		if nc, err = srv.Connect(); err != nil {
			srv.Shutdown()
			os.RemoveAll(dir)
			return nil, "", nil, err
		}
		cleanup = func() { once.Do(func() { nc.Close(); srv.Shutdown(); os.RemoveAll(dir) }) }
	}
	if js, err = jetstream.New(nc); err != nil {
		cleanup()
		return nil, "", nil, err
	}
	return js, suffix, cleanup, nil
}
