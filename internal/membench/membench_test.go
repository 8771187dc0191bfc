package membench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

// The parent process (the benchmark) starts the server and fills the
// store; each measured program runs as a child process (this test binary
// again, with childEnv set), so its peak RSS is its own.
const (
	childEnv = "ESNATS_MEMBENCH_CHILD"
	urlEnv   = "ESNATS_MEMBENCH_URL"
	lastEnv  = "ESNATS_MEMBENCH_LAST"
	cartsEnv = "ESNATS_MEMBENCH_CARTS"
	cacheEnv = "ESNATS_MEMBENCH_CACHE"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(child(mode))
	}
	os.Exit(m.Run())
}

// ItemAdded is the one event of the benchmark's carts.
type ItemAdded struct {
	SKU string `json:"sku"`
	Qty int    `json:"qty"`
}

func registry() *stream.Registry {
	reg := stream.NewRegistry()
	stream.MustRegister[ItemAdded](reg, "item-added")
	return reg
}

// item is event i of the fill: cart i mod carts, one of 7 SKUs.
func item(i int) ItemAdded { return ItemAdded{SKU: fmt.Sprintf("s%d", i%7), Qty: 1 + i%3} }

func cartID(c int) string { return fmt.Sprintf("c%07d", c) }

// Cart is the aggregate the repository children cache.
type Cart struct {
	aggregate.Root
	Items map[string]int `json:"items"`
}

func newCart(string) *Cart { return &Cart{Items: map[string]int{}} }

func (c *Cart) Apply(event any) {
	if e, ok := event.(ItemAdded); ok {
		c.Items[e.SKU] += e.Qty
	}
}

// report is what a child prints on its last line of output.
type report struct {
	Events      int64   `json:"events"`
	Seconds     float64 `json:"seconds"`
	PeakHeap    uint64  `json:"peak_heap"`    // largest HeapInuse sampled
	LiveHeap    uint64  `json:"live_heap"`    // HeapInuse after a GC at the end
	RSSProgress []int64 `json:"rss_progress"` // VmRSS at 25, 50, 75 and 100% of the work
	PeakRSS     int64   `json:"peak_rss"`     // VmHWM: the largest resident set of the process
}

func envInt(name string) int {
	n, _ := strconv.Atoi(os.Getenv(name))
	return n
}

// vmRSS reads the process's resident set size in bytes.
func vmRSS() int64 { return procStatus("VmRSS") }

// procStatus reads a size in bytes from /proc/self/status ("VmRSS",
// "VmHWM").
func procStatus(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// sampler records the largest HeapInuse seen, every 50 ms.
type sampler struct {
	peak atomic.Uint64
	stop chan struct{}
	done chan struct{}
}

func startSampler() *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > s.peak.Load() {
				s.peak.Store(ms.HeapInuse)
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) finish() uint64 {
	close(s.stop)
	<-s.done
	return s.peak.Load()
}

// progress records VmRSS when done crosses each quarter of total.
type progress struct {
	total, done int64
	next        int
	rss         [4]int64
	mu          sync.Mutex
}

func (p *progress) add(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += int64(n)
	for p.next < 4 && p.done*4 >= p.total*int64(p.next+1) {
		p.rss[p.next] = vmRSS()
		p.next++
	}
}

func child(mode string) int {
	if err := runChild(mode); err != nil {
		fmt.Fprintln(os.Stderr, "membench child", mode+":", err)
		return 1
	}
	return 0
}

func runChild(mode string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	nc, err := nats.Connect(os.Getenv(urlEnv))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	gc := stream.GroupCommitAuto
	if os.Getenv("ESNATS_MEMBENCH_GC") == "pipeline" {
		gc = stream.GroupCommitPipeline
	}
	store, err := stream.OpenStore(ctx, js, stream.Config{Name: "shop", Registry: registry(), GroupCommit: gc})
	if err != nil {
		return err
	}
	samp := startSampler()
	start := time.Now()
	var rep report
	var prog *progress
	var keep any // kept alive until the live heap is measured
	switch mode {
	case "baseline":
		time.Sleep(300 * time.Millisecond)
	case "raw":
		prog = &progress{total: int64(envInt(lastEnv))}
		rep.Events, err = rawCatchUp(ctx, js, uint64(envInt(lastEnv)), prog)
	case "projection-exactly-once", "projection-ack-floor":
		prog = &progress{total: int64(envInt(lastEnv))}
		rep.Events, err = projectionCatchUp(ctx, js, store, uint64(envInt(lastEnv)), mode == "projection-exactly-once", prog)
	case "repository":
		prog = &progress{total: int64(envInt(cartsEnv))}
		rep.Events, keep, err = repositoryUpdates(ctx, store, envInt(cartsEnv), envInt(cacheEnv), prog)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		return err
	}
	rep.Seconds = time.Since(start).Seconds()
	rep.PeakHeap = samp.finish()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rep.LiveHeap = ms.HeapInuse
	runtime.KeepAlive(keep)
	rep.PeakRSS = procStatus("VmHWM")
	if prog != nil {
		rep.RSSProgress = prog.rss[:]
	}
	b, _ := json.Marshal(rep)
	fmt.Println(string(b))
	return nil
}

// rawCatchUp reads the whole stream through a durable consumer,
// acknowledging every 100th message (AckAll), without decoding.
func rawCatchUp(ctx context.Context, js jetstream.JetStream, last uint64, prog *progress) (int64, error) {
	cons, err := js.CreateConsumer(ctx, "shop", jetstream.ConsumerConfig{
		Durable: "membench-raw", AckPolicy: jetstream.AckAllPolicy, MaxAckPending: 10000})
	if err != nil {
		return 0, err
	}
	defer js.DeleteConsumer(context.Background(), "shop", "membench-raw")
	done := make(chan struct{})
	var n int64
	var once sync.Once
	cc, err := cons.Consume(func(m jetstream.Msg) {
		n++
		md, err := m.Metadata()
		if err != nil {
			return
		}
		if n%100 == 0 || md.Sequence.Stream >= last {
			_ = m.Ack()
			prog.add(100)
		}
		if md.Sequence.Stream >= last {
			once.Do(func() { close(done) })
		}
	})
	if err != nil {
		return 0, err
	}
	defer cc.Stop()
	select {
	case <-done:
		return n, nil
	case <-ctx.Done():
		return n, ctx.Err()
	}
}

// counter is an idempotent read model (ack-floor mode): the last quantity
// added per SKU, so applying an event again changes nothing.
type counter struct {
	mu      sync.Mutex
	last    map[string]int
	applied atomic.Int64
	target  uint64
	prog    *progress
	once    sync.Once
	done    chan struct{}
}

func (c *counter) Apply(_ context.Context, evs []*stream.Event) error {
	c.mu.Lock()
	for _, ev := range evs {
		c.last[ev.Data.(ItemAdded).SKU] = ev.Data.(ItemAdded).Qty
	}
	c.mu.Unlock()
	c.seen(evs)
	return nil
}

func (c *counter) seen(evs []*stream.Event) {
	c.applied.Add(int64(len(evs)))
	c.prog.add(len(evs))
	if len(evs) > 0 && evs[len(evs)-1].Sequence >= c.target {
		c.once.Do(func() { close(c.done) })
	}
}

// exactlyOnce wraps a Memory model (exactly-once mode: the quantity of
// each SKU across all carts).
type exactlyOnce struct {
	*projections.Memory[int]
	c *counter
}

func (m exactlyOnce) Apply(ctx context.Context, evs []*stream.Event) error {
	if err := m.Memory.Apply(ctx, evs); err != nil {
		return err
	}
	m.c.seen(evs)
	return nil
}

func projectionCatchUp(ctx context.Context, js jetstream.JetStream, store *stream.Store, last uint64, once bool, prog *progress) (int64, error) {
	c := &counter{last: map[string]int{}, target: last, prog: prog, done: make(chan struct{})}
	var model projections.ReadModel = c
	if once {
		model = exactlyOnce{Memory: projections.NewMemory(func(view map[string]int, ev *stream.Event) error {
			it := ev.Data.(ItemAdded)
			view[it.SKU] += it.Qty
			return nil
		}), c: c}
	}
	r := projections.NewRunner(js, store, nil)
	if err := r.Add(projections.Projection{Name: "membench", Model: model}); err != nil {
		return 0, err
	}
	rctx, cancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(rctx) }()
	defer js.DeleteConsumer(context.Background(), "shop", "membench")
	select {
	case <-c.done:
		cancel()
		if err := <-runErr; err != nil {
			return 0, err
		}
		return c.applied.Load(), nil
	case err := <-runErr:
		cancel()
		return 0, fmt.Errorf("runner stopped: %v", err)
	case <-ctx.Done():
		cancel()
		return 0, ctx.Err()
	}
}

// repositoryUpdates runs one command on each of carts carts from 32
// goroutines through a repository whose cache holds cacheSize aggregates.
// It returns the repository, which the caller keeps alive while it measures
// the live heap (its cache is what is measured).
func repositoryUpdates(ctx context.Context, store *stream.Store, carts, cacheSize int, prog *progress) (int64, any, error) {
	repo, err := aggregate.NewRepository(aggregate.Config[*Cart]{Store: store, Type: "cart", New: newCart, CacheSize: cacheSize})
	if err != nil {
		return 0, 0, err
	}
	jobs := make(chan int)
	errs := make(chan error, 32)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for c := range jobs {
				err := repo.Update(ctx, cartID(c), func(cart *Cart) error {
					cart.Record(ItemAdded{SKU: "extra", Qty: 1})
					return nil
				})
				if err != nil {
					errs <- fmt.Errorf("cart %d: %w", c, err)
					for range jobs {
					}
					return
				}
				prog.add(1)
			}
		})
	}
	for c := range carts {
		jobs <- c
	}
	close(jobs)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	return int64(carts), repo, nil
}

// fill appends n events over n/10 carts in atomic batches of up to 1000
// carts (one event each), rounds of one event per cart.
func fill(b *testing.B, store *stream.Store, n int) {
	b.Helper()
	ctx := context.Background()
	carts := n / 10
	per := min(1000, carts)
	for carts%per != 0 {
		per--
	}
	revs := make([]stream.Revision, carts)
	start := time.Now()
	for round := range n / carts {
		var wg sync.WaitGroup
		var firstErr error
		var mu sync.Mutex
		jobs := make(chan int)
		for range 4 {
			wg.Go(func() {
				reqs := make([]stream.AppendRequest, per)
				for first := range jobs {
					for j := range reqs {
						c := first + j
						reqs[j] = stream.AppendRequest{Aggregate: stream.Aggregate{Type: "cart", ID: cartID(c)},
							Expect: stream.ExpectRevision(revs[c]), Events: []stream.EventData{{Data: item(round*carts + c)}}}
					}
					res, err := store.AppendBatch(ctx, reqs)
					if err != nil {
						mu.Lock()
						firstErr = errors.Join(firstErr, err)
						mu.Unlock()
						continue
					}
					for j, r := range res {
						revs[first+j] = r.Last
					}
				}
			})
		}
		for first := 0; first < carts; first += per {
			jobs <- first
		}
		close(jobs)
		wg.Wait()
		if firstErr != nil {
			b.Fatal(firstErr)
		}
	}
	b.Logf("fill: %d events over %d carts in %s", n, carts, time.Since(start).Round(time.Millisecond))
}

// measured is one child's report.
type measured struct{ report }

func runChildProcess(b *testing.B, mode string, env ...string) measured {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), childEnv+"="+mode), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("%s: %v\n%s", mode, err, stderr.String())
	}
	var m measured
	var lastLine string
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		lastLine = sc.Text()
	}
	if err := json.Unmarshal([]byte(lastLine), &m.report); err != nil {
		b.Fatalf("%s: output %q: %v", mode, stdout.String(), err)
	}
	if m.PeakRSS == 0 {
		b.Skip("no /proc/self/status on this platform")
	}
	return m
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// BenchmarkMemory measures the peak resident memory of the programs esnats
// users run, each in its own process, against a server holding
// ESNATS_BENCH_EVENTS events (default 1,000,000) over a tenth as many carts:
//
//   - baseline: a process that connects and opens the store;
//   - raw: a durable consumer reading every event, acking every 100th;
//   - projection-ack-floor / projection-exactly-once: a projections.Runner
//     catching up the whole store into an idempotent model / a Memory
//     model (7 keys);
//   - repository-cache-N: a command on every cart through a Repository
//     whose cache holds N aggregates (the default 1024, and all of them).
//
// Each reports its peak RSS (VmHWM, read by the child before it exits: the
// kernel's rusage of a child counts the parent's pages it was forked from),
// its peak and final live Go heap, and
// its RSS at each quarter of the work: flat figures mean memory does not
// grow with the length of the store.
func BenchmarkMemory(b *testing.B) {
	n := 1_000_000
	if testing.Short() {
		n = 100_000
	}
	if s := os.Getenv("ESNATS_BENCH_EVENTS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 100 {
			b.Fatalf("ESNATS_BENCH_EVENTS=%q: want a number >= 100", s)
		}
		n = v - v%10
	}
	srv := embedded.RunServer(b, func(o *embedded.Options) { o.Sync = embedded.SyncServerDefault })
	_, js := embedded.MustJetStream(b, srv)
	ctx := context.Background()
	store, err := stream.NewStore(ctx, js, stream.Config{Name: "shop", Registry: registry(), GroupCommit: stream.GroupCommitOff})
	if err != nil {
		b.Fatal(err)
	}
	fill(b, store, n)
	s, err := js.Stream(ctx, "shop")
	if err != nil {
		b.Fatal(err)
	}
	last := s.CachedInfo().State.LastSeq
	carts := n / 10
	env := []string{urlEnv + "=" + srv.ClientURL(), lastEnv + "=" + strconv.FormatUint(last, 10), cartsEnv + "=" + strconv.Itoa(carts)}

	for b.Loop() {
		type row struct {
			name string
			m    measured
		}
		var rows []row
		run := func(name, mode string, extra ...string) measured {
			m := runChildProcess(b, mode, append(append([]string{}, env...), extra...)...)
			rows = append(rows, row{name, m})
			return m
		}
		base := run("baseline", "baseline")
		raw := run("raw", "raw")
		ackFloor := run("projection-ack-floor", "projection-ack-floor")
		once := run("projection-exactly-once", "projection-exactly-once")
		def := run(fmt.Sprintf("repository-cache-%d", aggregate.DefaultCacheSize), "repository", cacheEnv+"="+strconv.Itoa(aggregate.DefaultCacheSize))
		all := run(fmt.Sprintf("repository-cache-%d", carts), "repository", cacheEnv+"="+strconv.Itoa(carts))
		for _, m := range []measured{raw, ackFloor, once} {
			if m.Events < int64(n) {
				b.Fatalf("a catch-up saw %d events, want %d", m.Events, n)
			}
		}
		b.ReportMetric(mib(base.PeakRSS), "MiB-baseline")
		b.ReportMetric(mib(raw.PeakRSS), "MiB-raw")
		b.ReportMetric(mib(ackFloor.PeakRSS), "MiB-ack-floor")
		b.ReportMetric(mib(once.PeakRSS), "MiB-exactly-once")
		b.ReportMetric(mib(def.PeakRSS), "MiB-cache-default")
		b.ReportMetric(mib(all.PeakRSS), "MiB-cache-all")
		perAgg := float64(int64(all.LiveHeap)-int64(def.LiveHeap)) / float64(carts-aggregate.DefaultCacheSize)
		b.ReportMetric(perAgg, "B/cached-aggregate")
		var out strings.Builder
		fmt.Fprintf(&out, "%d events, %d carts\n%-28s %9s %9s %9s %9s %s\n", n, carts, "program", "peak RSS", "peak heap", "live heap", "seconds", "RSS at 25/50/75/100% (MiB)")
		for _, r := range rows {
			q := make([]string, len(r.m.RSSProgress))
			for i, v := range r.m.RSSProgress {
				q[i] = fmt.Sprintf("%.0f", mib(v))
			}
			fmt.Fprintf(&out, "%-28s %7.0f M %7.0f M %7.1f M %9.1f %s\n", r.name, mib(r.m.PeakRSS), mib(int64(r.m.PeakHeap)), mib(int64(r.m.LiveHeap)), r.m.Seconds, strings.Join(q, " "))
		}
		fmt.Fprintf(&out, "live heap per cached aggregate: %.0f bytes", perAgg)
		b.Log(out.String())
	}
}
