package hostiletest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

// Events of the tests.

type ItemAdded struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

type CheckedOut struct {
	Lines int `json:"lines"`
}

func registry() *stream.Registry {
	reg := stream.NewRegistry()
	stream.MustRegister[ItemAdded](reg, "ItemAdded")
	stream.MustRegister[CheckedOut](reg, "CheckedOut")
	return reg
}

// Thing is the aggregate of every type in the tests: it counts items.
type Thing struct {
	aggregate.Root
	Items int `json:"items"`
}

func newThing(string) *Thing { return &Thing{} }

func (c *Thing) Apply(e any) {
	if e, ok := e.(ItemAdded); ok {
		c.Items += e.Quantity
	}
}

// storeName is the store of the tests; maxEventSize its MaxEventSize.
const (
	storeName    = "shop"
	maxEventSize = 32 << 10
)

// fixture is a server with an empty store.
type fixture struct {
	srv   *embedded.Server
	nc    *nats.Conn
	js    jetstream.JetStream
	store *stream.Store
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	srv := embedded.RunServer(t)
	nc, js := embedded.MustJetStream(t, srv)
	store, err := stream.NewStore(context.Background(), js, stream.Config{Name: storeName, Registry: registry(), MaxEventSize: maxEventSize})
	require.NoError(t, err)
	return &fixture{srv: srv, nc: nc, js: js, store: store}
}

// repo returns a repository of aggregate type typ on the store.
func (f *fixture) repo(t testing.TB, typ string) *aggregate.Repository[*Thing] {
	t.Helper()
	r, err := aggregate.NewRepository(aggregate.Config[*Thing]{Store: f.store, Type: typ, New: newThing, CacheSize: -1})
	require.NoError(t, err)
	return r
}

// lastSeq returns the store's last sequence.
func (f *fixture) lastSeq(t testing.TB) uint64 {
	t.Helper()
	st, err := f.js.Stream(context.Background(), storeName)
	require.NoError(t, err)
	return st.CachedInfo().State.LastSeq
}

// subjectCount returns how many messages the store holds on subject.
func (f *fixture) subjectCount(t testing.TB, subject string) uint64 {
	t.Helper()
	st, err := f.js.Stream(context.Background(), storeName)
	require.NoError(t, err)
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	require.NoError(t, err)
	return info.State.Subjects[subject]
}

// testCtx is a context that ends with the test or after d: nothing the
// tests call may hang.
func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
