package stream_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/internal/faultproxy"
	"github.com/esnats/esnats/stream"
)

type itemAdded struct {
	SKU string `json:"sku"`
	Qty int    `json:"qty"`
}

type checkedOut struct {
	At time.Time `json:"at"`
}

func testRegistry(t testing.TB) *stream.Registry {
	t.Helper()
	reg := stream.NewRegistry()
	require.NoError(t, stream.Register[itemAdded](reg, "ItemAdded"))
	require.NoError(t, stream.Register[checkedOut](reg, "CheckedOut"))
	return reg
}

func newJSStore(t *testing.T, js jetstream.JetStream, mod ...func(*stream.Config)) *stream.Store {
	t.Helper()
	cfg := stream.Config{Name: "carts", Registry: testRegistry(t)}
	for _, m := range mod {
		m(&cfg)
	}
	st, err := stream.NewStore(context.Background(), js, cfg)
	require.NoError(t, err)
	return st
}

func loadAll(t *testing.T, st stream.EventStore, agg stream.Aggregate, opts ...stream.ReadOption) []*stream.Event {
	t.Helper()
	var out []*stream.Event
	for ev, err := range st.Load(context.Background(), agg, opts...) {
		require.NoError(t, err)
		out = append(out, ev)
	}
	return out
}

func TestStoreSetupCreatesDurableStream(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	newJSStore(t, js)
	// Idempotent: again, and concurrently.
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			_, err := stream.NewStore(ctx, js, stream.Config{Name: "carts", Registry: testRegistry(t)})
			errs <- err
		}()
	}
	for range 4 {
		require.NoError(t, <-errs)
	}
	s, err := js.Stream(ctx, "carts")
	require.NoError(t, err)
	cfg := s.CachedInfo().Config
	assert.Equal(t, jetstream.FileStorage, cfg.Storage)
	assert.True(t, cfg.AllowDirect)
	assert.True(t, cfg.AllowAtomicPublish)
	assert.Equal(t, stream.DefaultDuplicates, cfg.Duplicates)
	assert.Equal(t, []string{"carts.>"}, cfg.Subjects)
	assert.Equal(t, jetstream.LimitsPolicy, cfg.Retention)
	assert.Zero(t, cfg.MaxAge, "an event store must not expire history by default")
	assert.EqualValues(t, stream.DefaultMaxEventSize, cfg.MaxMsgSize)
}

func TestStoreSetupRefusesIncompatibleStream(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	cases := []struct {
		name string
		sc   jetstream.StreamConfig
		want string
	}{
		{"workqueue", jetstream.StreamConfig{Name: "wq", Subjects: []string{"wq.>"}, Retention: jetstream.WorkQueuePolicy}, "retention"},
		{"memory", jetstream.StreamConfig{Name: "mem", Subjects: []string{"mem.>"}, Storage: jetstream.MemoryStorage}, "storage"},
		{"subjects", jetstream.StreamConfig{Name: "other", Subjects: []string{"elsewhere.>"}}, "subjects"},
		{"per-subject limit", jetstream.StreamConfig{Name: "capped", Subjects: []string{"capped.>"}, MaxMsgsPerSubject: 5}, "MaxMsgsPerSubject"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := js.CreateStream(ctx, c.sc)
			require.NoError(t, err)
			_, err = stream.NewStore(ctx, js, stream.Config{Name: c.sc.Name, Registry: testRegistry(t)})
			require.ErrorIs(t, err, stream.ErrStoreConfig)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

func TestStoreSetupUpgradesCompatibleStream(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "carts", Subjects: []string{"carts.>"}})
	require.NoError(t, err)
	_, err = stream.OpenStore(ctx, js, stream.Config{Name: "carts", Registry: testRegistry(t)})
	require.ErrorIs(t, err, stream.ErrStoreConfig, "OpenStore must not change the stream, and it lacks atomic publish")
	newJSStore(t, js)
	s, err := js.Stream(ctx, "carts")
	require.NoError(t, err)
	assert.True(t, s.CachedInfo().Config.AllowAtomicPublish)
	assert.True(t, s.CachedInfo().Config.AllowDirect)
	_, err = stream.OpenStore(ctx, js, stream.Config{Name: "carts", Registry: testRegistry(t)})
	require.NoError(t, err)
}

func TestOpenStoreMissingStream(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	_, err := stream.OpenStore(context.Background(), js, stream.Config{Name: "nope", Registry: testRegistry(t)})
	require.ErrorIs(t, err, stream.ErrNotFound)
	assert.Contains(t, err.Error(), `"nope"`)
}

func TestStoreMissingStreamAfterDelete(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	st := newJSStore(t, js)
	require.NoError(t, js.DeleteStream(ctx, "carts"))
	agg := stream.Aggregate{Type: "cart", ID: "1"}
	_, err := st.Append(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: itemAdded{SKU: "a", Qty: 1}}}, stream.WithMaxAttempts(2))
	require.ErrorIs(t, err, stream.ErrNotFound)
	assert.Contains(t, err.Error(), "carts.cart.1")
	for _, err := range st.Load(ctx, agg) {
		require.ErrorIs(t, err, stream.ErrNotFound)
	}
	_, err = st.LastRevision(ctx, agg)
	require.ErrorIs(t, err, stream.ErrNotFound)
}

func TestStoreAppendLoadRoundTrip(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	st := newJSStore(t, js)
	agg := stream.Aggregate{Type: "cart", ID: "alice@example.com"}
	res, err := st.Append(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: itemAdded{SKU: "a", Qty: 1}}})
	require.NoError(t, err)
	assert.Equal(t, stream.Revision{Version: 1, Sequence: 1}, res.Last)
	res, err = st.Append(ctx, agg, stream.ExpectRevision(res.Last), []stream.EventData{
		{Data: itemAdded{SKU: "b", Qty: 2}}, {Data: &checkedOut{At: time.Unix(1700000000, 0).UTC()}},
	})
	require.NoError(t, err)
	assert.Equal(t, stream.Revision{Version: 2, Sequence: 2}, res.First)
	assert.Equal(t, stream.Revision{Version: 3, Sequence: 3}, res.Last)
	evs := loadAll(t, st, agg)
	require.Len(t, evs, 3)
	assert.Equal(t, itemAdded{SKU: "b", Qty: 2}, evs[1].Data)
	assert.True(t, time.Unix(1700000000, 0).Equal(evs[2].Data.(checkedOut).At))
	assert.Equal(t, "carts.cart.alice=40example=2Ecom", evs[2].Subject)
	rev, err := st.LastRevision(ctx, agg)
	require.NoError(t, err)
	assert.Equal(t, res.Last, rev)

	// What the nats CLI would see: the raw message and its headers.
	raw, err := js.Stream(ctx, "carts")
	require.NoError(t, err)
	m, err := raw.GetMsg(ctx, 3)
	require.NoError(t, err)
	assert.Equal(t, "3", m.Header.Get(stream.HeaderVersion))
	assert.Equal(t, "CheckedOut", m.Header.Get(stream.HeaderEventType))
	assert.Equal(t, "application/msgpack", m.Header.Get(stream.HeaderContentType))
	assert.Equal(t, evs[2].ID, m.Header.Get(jetstream.MsgIDHeader))
}

// A retried append whose first attempt landed but whose acknowledgement was
// lost (the connection dropped after the server stored it) is reported as
// landed, and stored once: one event (plain publish) and three (atomic batch).
func TestStoreRetryAfterLostAck(t *testing.T) {
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d events", n), func(t *testing.T) {
			srv := embedded.RunServer(t)
			testLostAck(t, srv.ClientURL(), n, 1, "carts")
		})
	}
}

// The same on an R3 stream in a 3-node cluster, where a resend within the
// duplicate window is answered with a duplicate ack.
func TestStoreRetryAfterLostAckR3(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster: skipped with -short")
	}
	c := embedded.RunCluster(t)
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d events", n), func(t *testing.T) {
			testLostAck(t, c.ClientURLs()[n%3], n, 3, fmt.Sprintf("carts%d", n))
		})
	}
}

func testLostAck(t *testing.T, url string, n, replicas int, name string) {
	t.Helper()
	ctx := context.Background()
	px, err := faultproxy.New(strings.TrimPrefix(url, "nats://"))
	require.NoError(t, err)
	t.Cleanup(px.Close)
	nc, err := nats.Connect(px.URL(), nats.ReconnectWait(20*time.Millisecond), nats.MaxReconnects(-1), nats.IgnoreDiscoveredServers())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	setupJS, err := jetstream.New(nc)
	require.NoError(t, err)
	newJSStore(t, setupJS, func(c *stream.Config) { c.Replicas = replicas; c.Name = name })
	// Short attempts, so that the append resends while replies are lost.
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(500*time.Millisecond))
	require.NoError(t, err)
	st, err := stream.OpenStore(ctx, js, stream.Config{Name: name, Registry: testRegistry(t)})
	require.NoError(t, err)
	agg := stream.Aggregate{Type: "cart", ID: "lost-ack"}
	first, err := st.Append(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: itemAdded{SKU: "x", Qty: 1}}})
	require.NoError(t, err)

	// An observer on its own connection.
	obs, err := nats.Connect(url)
	require.NoError(t, err)
	t.Cleanup(obs.Close)
	ojs, err := jetstream.New(obs)
	require.NoError(t, err)
	ost, err := ojs.Stream(ctx, name)
	require.NoError(t, err)

	events := make([]stream.EventData, n)
	for i := range events {
		events[i] = stream.EventData{Data: itemAdded{SKU: "y", Qty: i + 1}}
	}
	px.SwallowReplies(true)
	type result struct {
		res stream.AppendResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		actx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		res, err := st.Append(actx, agg, stream.ExpectRevision(first.Last), events, stream.WithMaxAttempts(50))
		done <- result{res, err}
	}()
	// Wait until the server has stored the events, then drop the connection
	// that would have carried the ack.
	require.Eventually(t, func() bool {
		info, err := ost.Info(ctx)
		return err == nil && info.State.Msgs == uint64(1+n)
	}, 10*time.Second, 5*time.Millisecond)
	time.Sleep(600 * time.Millisecond) // let the first attempt time out
	px.SwallowReplies(false)
	px.Cut()
	r := <-done
	require.NoError(t, r.err, "a retry of an append that landed must report success")
	assert.True(t, r.res.Duplicate, "the resend found the events already stored")
	assert.Equal(t, stream.Revision{Version: 2, Sequence: 2}, r.res.First)
	assert.Equal(t, stream.Revision{Version: uint64(1 + n), Sequence: uint64(1 + n)}, r.res.Last)
	evs := loadAll(t, st, agg)
	require.Len(t, evs, 1+n, "stored once")
	for i, ev := range evs {
		assert.EqualValues(t, i+1, ev.Version)
	}
	info, err := ost.Info(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 1+n, info.State.Msgs)
}

func TestStoreSurvivesServerRestart(t *testing.T) {
	srv := embedded.RunServer(t)
	ctx := context.Background()
	agg := stream.Aggregate{Type: "cart", ID: "durable"}
	func() {
		nc, err := srv.Connect()
		require.NoError(t, err)
		defer nc.Close()
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		st := newJSStore(t, js)
		rev := stream.Revision{}
		for i := range 10 {
			res, err := st.Append(ctx, agg, stream.ExpectRevision(rev), []stream.EventData{{Data: itemAdded{SKU: "s", Qty: i}}})
			require.NoError(t, err)
			rev = res.Last
		}
	}()
	require.NoError(t, srv.Restart())
	_, js := embedded.MustJetStream(t, srv)
	st := newJSStore(t, js)
	evs := loadAll(t, st, agg)
	require.Len(t, evs, 10)
	for i, ev := range evs {
		assert.Equal(t, itemAdded{SKU: "s", Qty: i}, ev.Data)
		assert.EqualValues(t, i+1, ev.Version)
	}
}

// A server older than 2.12 (no atomic batch publish) is refused before any
// JetStream request. The "server" here only speaks the NATS handshake and
// announces version 2.10.0.
func TestStoreRefusesOldServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "INFO {\"server_id\":\"old\",\"version\":\"2.10.0\",\"proto\":1,\"headers\":true,\"max_payload\":1048576}\r\n")
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if strings.HasPrefix(line, "PING") {
						fmt.Fprintf(c, "PONG\r\n")
					}
				}
			}()
		}
	}()
	nc, err := nats.Connect("nats://" + ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = stream.NewStore(context.Background(), js, stream.Config{Name: "carts", Registry: testRegistry(t)})
	require.ErrorIs(t, err, stream.ErrStoreConfig)
	assert.Contains(t, err.Error(), "2.10.0")
	assert.Contains(t, err.Error(), "2.12.0")
}

func TestStoreRejectsRepeatedEventIDs(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	st := newJSStore(t, js)
	ctx := context.Background()
	ev := stream.EventData{ID: "same", Data: itemAdded{SKU: "a", Qty: 1}}
	_, err := st.Append(ctx, stream.Aggregate{Type: "cart", ID: "1"}, stream.ExpectNone(), []stream.EventData{ev, ev})
	require.ErrorIs(t, err, stream.ErrInvalidEventID)
	_, err = st.AppendBatch(ctx, []stream.AppendRequest{
		{Aggregate: stream.Aggregate{Type: "cart", ID: "1"}, Expect: stream.ExpectNone(), Events: []stream.EventData{ev}},
		{Aggregate: stream.Aggregate{Type: "cart", ID: "2"}, Expect: stream.ExpectNone(), Events: []stream.EventData{ev}},
	})
	require.ErrorIs(t, err, stream.ErrInvalidEventID)
	assert.Contains(t, err.Error(), `"same"`)
}

// An expectation ahead of the aggregate (for example a revision from another
// store) is a conflict naming the actual revision, not a retry loop.
func TestStoreExpectationAheadOfAggregate(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	st := newJSStore(t, js)
	ctx := context.Background()
	agg := stream.Aggregate{Type: "cart", ID: "behind"}
	res, err := st.Append(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: itemAdded{SKU: "a", Qty: 1}}})
	require.NoError(t, err)
	_, err = st.Append(ctx, agg, stream.ExpectRevision(stream.Revision{Version: 5, Sequence: 50}), []stream.EventData{{Data: itemAdded{SKU: "b", Qty: 1}}})
	var ce *stream.ConflictError
	require.ErrorAs(t, err, &ce)
	assert.True(t, ce.ActualKnown)
	assert.Equal(t, res.Last, ce.Actual)
	assert.Len(t, loadAll(t, st, agg), 1)
}

func TestStorePurgeOneAggregate(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	st := newJSStore(t, js)
	ctx := context.Background()
	gone, kept := stream.Aggregate{Type: "cart", ID: "gone"}, stream.Aggregate{Type: "cart", ID: "kept"}
	for _, agg := range []stream.Aggregate{gone, kept} {
		_, err := st.Append(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: itemAdded{SKU: "a", Qty: 1}}, {Data: itemAdded{SKU: "b", Qty: 1}}})
		require.NoError(t, err)
	}
	require.NoError(t, st.Purge(ctx, gone))
	assert.Empty(t, loadAll(t, st, gone))
	rev, err := st.LastRevision(ctx, gone)
	require.NoError(t, err)
	assert.True(t, rev.IsZero())
	assert.Len(t, loadAll(t, st, kept), 2)
	require.ErrorIs(t, st.Purge(ctx, stream.Aggregate{Type: "cart", ID: ""}), stream.ErrInvalidID)
}

// unlistened is a JetStream whose publishes meet no responders until a
// time, as while an R3 stream elects a new leader: nothing is stored.
type unlistened struct {
	jetstream.JetStream
	until time.Time
	sent  atomic.Int64
}

func (u *unlistened) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	u.sent.Add(1)
	if time.Now().Before(u.until) {
		return nil, jetstream.ErrNoStreamResponse
	}
	return u.JetStream.PublishMsg(ctx, m, opts...)
}

// An append whose stream has no leader for longer than five quick resends
// take keeps resending until the stream takes it, within the time its
// attempts would take to time out; a context that ends first ends it with
// an error that names both.
func TestStoreAppendRidesOutNoResponders(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	newJSStore(t, js) // creates the stream
	u := &unlistened{JetStream: js, until: time.Now().Add(1500 * time.Millisecond)}
	st, err := stream.OpenStore(context.Background(), u, stream.Config{Name: "carts", Registry: testRegistry(t), GroupCommit: stream.GroupCommitOff})
	require.NoError(t, err)
	agg := stream.Aggregate{Type: "cart", ID: "1"}
	ev := []stream.EventData{{Data: itemAdded{SKU: "a", Qty: 1}}}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = st.Append(ctx, agg, stream.ExpectNone(), ev)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, "no response from stream", "the error says what the attempts met")
	require.NotErrorIs(t, err, stream.ErrIndeterminate, "nothing was stored")

	start := time.Now()
	res, err := st.Append(context.Background(), agg, stream.ExpectNone(), ev)
	require.NoError(t, err)
	assert.Greater(t, u.sent.Load(), int64(6), "more sends than the five attempts")
	assert.WithinDuration(t, u.until, time.Now(), 1500*time.Millisecond)
	assert.Greater(t, time.Since(start), 500*time.Millisecond)
	assert.Equal(t, stream.Revision{Version: 1, Sequence: 1}, res.Last)
	require.Len(t, loadAll(t, st, agg), 1)
}

// A stream that no longer covers the store's subjects fails an append at
// once with ErrNotFound (no responders, then one look at the stream).
func TestStoreAppendStreamNotListening(t *testing.T) {
	srv := embedded.RunServer(t)
	_, js := embedded.MustJetStream(t, srv)
	ctx := context.Background()
	st := newJSStore(t, js, func(c *stream.Config) { c.GroupCommit = stream.GroupCommitOff })
	raw, err := js.Stream(ctx, "carts")
	require.NoError(t, err)
	cfg := raw.CachedInfo().Config
	cfg.Subjects = []string{"elsewhere.>"}
	_, err = js.UpdateStream(ctx, cfg)
	require.NoError(t, err)
	start := time.Now()
	_, err = st.Append(ctx, stream.Aggregate{Type: "cart", ID: "1"}, stream.ExpectNone(), []stream.EventData{{Data: itemAdded{SKU: "a", Qty: 1}}})
	require.ErrorIs(t, err, stream.ErrNotFound)
	require.ErrorContains(t, err, `stream "carts" does not exist or does not listen on this subject`)
	assert.Less(t, time.Since(start), 3*time.Second, "no resends until the 25s budget")
}

// When an R3 stream's leader stops, a request sent as the leadership moves
// is dropped by the server without an answer. The store follows the
// stream's leader elections and resends such a request at once, instead
// of after the JetStream timeout (5s here): an append of one event, of
// two events (an atomic batch), a pipelined AppendAsync, and a leader read,
// each in its own failover. The events are stored once.
func TestStoreLeaderChangeResendsAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster: skipped with -short")
	}
	c := embedded.RunCluster(t)
	ctx := context.Background()
	_, js := embedded.MustJetStream(t, c)
	agg := stream.Aggregate{Type: "cart", ID: "1"}
	st := newJSStore(t, js, func(cfg *stream.Config) { cfg.Replicas = 3 })
	last, err := st.Append(ctx, agg, stream.ExpectNone(), []stream.EventData{{Data: itemAdded{SKU: "a", Qty: 1}}})
	require.NoError(t, err)
	version := uint64(1)

	for _, op := range []string{"append", "append-batch", "append-async", "last-revision"} {
		require.NoError(t, c.WaitForStreamCurrent(ctx, "", "carts"))
		leader, err := c.StreamLeader("", "carts")
		require.NoError(t, err)
		victim := slices.Index(c.Nodes(), leader)
		// A store on a connection to another node, timeout 5s: without
		// the leader watch a dropped request costs 5s.
		nc := embedded.MustConnect(t, c.Node((victim+1)%3))
		cjs, err := jetstream.New(nc, jetstream.WithDefaultTimeout(5*time.Second))
		require.NoError(t, err)
		cst, err := stream.OpenStore(ctx, cjs, stream.Config{Name: "carts", Registry: testRegistry(t), GroupCommit: stream.GroupCommitPipeline})
		require.NoError(t, err)

		// The test sees the election as the store does: an election that
		// takes seconds (no handover) is not what this test is about.
		var start time.Time
		elected := make(chan time.Duration, 1)
		adv, err := nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.carts", func(*nats.Msg) {
			select {
			case elected <- time.Since(start):
			default:
			}
		})
		require.NoError(t, err)
		require.NoError(t, nc.Flush())
		start = time.Now()
		c.StopNode(victim)
		switch op {
		case "append", "append-batch":
			evs := []stream.EventData{{Data: itemAdded{SKU: op, Qty: 1}}}
			if op == "append-batch" {
				evs = append(evs, stream.EventData{Data: itemAdded{SKU: op, Qty: 2}})
			}
			res, err := cst.Append(ctx, agg, stream.ExpectRevision(last.Last), evs)
			require.NoError(t, err, op)
			version += uint64(len(evs))
			require.Equal(t, version, res.Last.Version, op)
			last = res
		case "append-async": // pipelined: PublishMsgAsync and the store's collector
			res, err := cst.AppendAsync(ctx, agg, stream.ExpectRevision(last.Last), []stream.EventData{{Data: itemAdded{SKU: op, Qty: 1}}}).Wait(ctx)
			require.NoError(t, err, op)
			version++
			require.Equal(t, version, res.Last.Version, op)
			last = res
		case "last-revision":
			rev, err := cst.LastRevision(ctx, agg)
			require.NoError(t, err, op)
			require.Equal(t, last.Last, rev, op)
		}
		took := time.Since(start)
		var election time.Duration
		select {
		case election = <-elected:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no new leader announced", op)
		}
		require.NoError(t, adv.Unsubscribe())
		t.Logf("%s right after the leader stopped took %v, the election %v", op, took, election)
		assert.Less(t, took-election, 2*time.Second, "%s waited for the timeout instead of following the new leader", op)
		require.NoError(t, c.RestartNode(victim))
	}
	evs := loadAll(t, st, agg)
	require.Len(t, evs, int(version), "every event stored once")
	for i, ev := range evs {
		require.Equal(t, uint64(i+1), ev.Version)
	}
}
