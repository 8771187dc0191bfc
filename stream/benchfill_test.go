package stream_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

// benchFillEvents is the default size of BenchmarkLoad's store: bulk events,
// 10 per aggregate. ESNATS_BENCH_EVENTS overrides it; -short makes it
// 100,000.
const benchFillEvents = 1_000_000

// benchHotEvents are the sizes of the aggregates BenchmarkLoad loads.
var benchHotEvents = []int{10, 1000, 10_000}

// benchFilled is BenchmarkLoad's store.
type benchFilled struct {
	env      *benchEnv
	bulkAggs int                // aggregates of 10 events: bulkAgg(0 .. bulkAggs-1)
	hot      []stream.Aggregate // one per benchHotEvents
	took     time.Duration      // how long the fill took
}

func (f *benchFilled) bulkAgg(i int) stream.Aggregate {
	return stream.Aggregate{Type: "cart", ID: fmt.Sprintf("c%07d", i)}
}

func benchFillSize(b *testing.B) int {
	n := benchFillEvents
	if testing.Short() {
		n = 100_000
	}
	if s := os.Getenv("ESNATS_BENCH_EVENTS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 10 {
			b.Fatalf("ESNATS_BENCH_EVENTS=%q: want a number of events >= 10", s)
		}
		n = v
	}
	return n / 10 * 10
}

// benchFillStore starts a server (fsync: server default) and fills a store
// for the life of b: bulk events over bulk/10 aggregates of 10 events, plus
// one aggregate for each of benchHotEvents. Events are written with raw
// pipelined publishes (PublishMsgAsync, no expected-sequence check) in the
// store's wire format, interleaved as a busy store would hold them: round
// after round over all bulk aggregates (so an aggregate's 10 events lie
// bulk/10 events apart), and each hot aggregate's events spread evenly over
// the whole fill. It checks the message and subject counts.
func benchFillStore(b *testing.B) *benchFilled {
	b.Helper()
	bulk := benchFillSize(b)
	srv := embedded.RunServer(b, func(o *embedded.Options) { o.Sync = embedded.SyncServerDefault })
	nc, js := embedded.MustJetStream(b, srv)
	f := &benchFilled{env: newBenchEnv(b, js, nil), bulkAggs: bulk / 10}
	for _, n := range benchHotEvents {
		f.hot = append(f.hot, stream.Aggregate{Type: "cart", ID: fmt.Sprintf("hot-%d", n)})
	}

	var failed atomic.Int64
	var firstErr atomic.Value
	fjs, err := jetstream.New(nc, jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
		if failed.Add(1) == 1 {
			firstErr.Store(fmt.Errorf("%s: %w", m.Subject, err))
		}
	}))
	if err != nil {
		b.Fatal(err)
	}
	e := f.env
	bulkSubj := make([]string, f.bulkAggs)
	for i := range bulkSubj {
		bulkSubj[i] = e.subject(b, f.bulkAgg(i))
	}
	hotSubj := make([]string, len(f.hot))
	hotNext := make([]int, len(f.hot)) // events of each hot aggregate published so far
	for i, a := range f.hot {
		hotSubj[i] = e.subject(b, a)
	}
	publish := func(subj string, version uint64) {
		m := e.rawMsg(subj, version, benchNow())
		if _, err := fjs.PublishMsgAsync(m, jetstream.WithStallWait(time.Minute)); err != nil {
			b.Fatalf("fill: %s: %v", subj, err)
		}
	}

	start := time.Now()
	for i := range bulk {
		for h, n := range benchHotEvents {
			for hotNext[h] < n && i >= hotNext[h]*bulk/n {
				hotNext[h]++
				publish(hotSubj[h], uint64(hotNext[h]))
			}
		}
		publish(bulkSubj[i%f.bulkAggs], uint64(i/f.bulkAggs+1))
	}
	for h, n := range benchHotEvents {
		for hotNext[h] < n {
			hotNext[h]++
			publish(hotSubj[h], uint64(hotNext[h]))
		}
	}
	select {
	case <-fjs.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		b.Fatal("fill: acks still pending after 5 minutes")
	}
	f.took = time.Since(start)
	if n := failed.Load(); n > 0 {
		b.Fatalf("fill: %d publishes failed, first: %v", n, firstErr.Load())
	}

	want := uint64(bulk)
	for _, n := range benchHotEvents {
		want += uint64(n)
	}
	s, err := js.Stream(context.Background(), e.st.Name())
	if err != nil {
		b.Fatal(err)
	}
	st := s.CachedInfo().State
	if st.Msgs != want || st.NumSubjects != uint64(f.bulkAggs+len(f.hot)) {
		b.Fatalf("fill: stream holds %d events on %d subjects, want %d on %d", st.Msgs, st.NumSubjects, want, f.bulkAggs+len(f.hot))
	}
	b.Logf("fill: %d events over %d aggregates (+%v events in 3 aggregates) in %s: %.0f events/s, %d MiB stored",
		bulk, f.bulkAggs, benchHotEvents, f.took.Round(time.Millisecond), float64(want)/f.took.Seconds(), st.Bytes>>20)
	return f
}
