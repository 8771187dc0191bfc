package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/internal/benchkit"
	"github.com/esnats/esnats/stream"
)

func (a *app) benchCmd() *cobra.Command {
	var (
		opts            benchkit.Options
		asJSON, quiet   bool
		syncFlag, dir   string
		groupCommit     string
		list, useServer bool
	)
	cmd := &cobra.Command{
		Use:   "bench [WORKLOAD...]",
		Short: "Benchmark esnats beside raw JetStream, with ratios",
		Long: `Run benchmark workloads, each as a pair: the raw JetStream operation and the
esnats operation built on it, in the same process on the same server, taking
turns in rounds so that machine noise hits both. The ESNATS/RAW column is the
throughput ratio (1.00: as fast as raw JetStream). In load-snapshotted the
"raw" side is esnats too: the same snapshotted load of a 100-event aggregate,
beside the 10,000-event one.

Workloads (all by default; --list describes them): ` + strings.Join(benchkit.Names(), ", ") + `.

By default the benchmark runs on an embedded server in a temporary directory
(fsync always, as esnats dev). With -s, NATS_URL or --context (or --server-only)
it runs on that server instead: it creates its own streams and KV buckets,
named esnats_bench_<workload>_<random>..., and deletes them afterwards.`,
		Example: `  esnats bench
  esnats bench append load --ops 2000
  esnats bench append-concurrent --concurrency 64 --duration 10s
  esnats bench append-async --group-commit pipeline --sync default
  esnats bench -s nats://prod-like:4222 --replicas 3 --json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			w := cmd.OutOrStdout()
			if list {
				t := newTable(w, "WORKLOAD", "RAW", "ESNATS", "DESCRIPTION")
				for _, wl := range benchkit.Workloads() {
					t.row(wl.Name, wl.Raw, wl.Esnats, wl.Description)
				}
				return t.flush()
			}
			var workloads []benchkit.Workload
			for _, name := range args {
				wl, ok := benchkit.Lookup(name)
				if !ok {
					return usagef("unknown workload %q (workloads: %s)", name, strings.Join(benchkit.Names(), ", "))
				}
				workloads = append(workloads, wl)
			}
			if len(workloads) == 0 {
				workloads = benchkit.Workloads()
			}
			gc, err := stream.ParseGroupCommit(groupCommit)
			if err != nil {
				return withCode(ExitUsage, fmt.Errorf("--group-commit %q: want auto, batch, pipeline or off", groupCommit))
			}
			opts.GroupCommit = gc
			if err := opts.Validate(); err != nil {
				return withCode(ExitUsage, err)
			}

			where := ""
			var c *connection
			if urls, _ := a.conn.urls(); urls == "" && a.conn.context == "" && !useServer {
				policy, err := parseSync(syncFlag)
				if err != nil {
					return err
				}
				if dir == "" {
					tmp, err := os.MkdirTemp("", "esnats-bench-")
					if err != nil {
						return err
					}
					defer os.RemoveAll(tmp)
					dir = tmp
				}
				s, err := embedded.Start(embedded.Options{Dir: dir, Port: -1, Sync: policy})
				if err != nil {
					return err
				}
				defer s.Shutdown()
				where = fmt.Sprintf("embedded server %s (fsync %s, data in %s)", s.ClientURL(), policy, dir)
				// A plain connection: a selected nats context's credentials,
				// TLS or domain are for another server.
				nc, err := s.Connect(nats.Name("esnats bench"), nats.ErrorHandler(a.errs.handler))
				if err != nil {
					return err
				}
				if c, err = withJetStream(ctx, nc, "", a.conn.timeout, a.errs); err != nil {
					return err
				}
			} else if c, err = a.conn.connect(ctx, "esnats bench", false); err != nil {
				return err
			}
			defer c.Close()
			if where == "" {
				where = "server " + c.url
			}
			if !asJSON {
				fmt.Fprintf(w, "benchmarks on %s, %d replica(s)\n", where, max(opts.Replicas, 1))
			}
			var results []benchkit.Result
			for _, wl := range workloads {
				p := newProgress(cmd.ErrOrStderr(), wl.Name, 0, quiet || asJSON && !isTerminal(cmd.ErrOrStderr()))
				o := opts
				o.Progress = func(done, total int) { p.set(int64(done), int64(total)) }
				res, err := benchkit.Run(ctx, c.js, wl, o)
				p.finish()
				if err != nil {
					return fmt.Errorf("workload %s: %w", wl.Name, err)
				}
				results = append(results, res)
				if !asJSON {
					// Print as results come: a full run takes a while.
					fmt.Fprintf(w, "%-20s esnats/raw %.2f (median of %d rounds %.2f)\n", wl.Name, res.Ratio, res.Rounds, res.RatioMedian)
				}
			}
			if asJSON {
				return writeJSON(w, results)
			}
			fmt.Fprintln(w)
			return benchkit.WriteTable(w, results...)
		},
	}
	f := cmd.Flags()
	f.IntVar(&opts.Ops, "ops", 0, "operations per side (default: the workload's own)")
	f.DurationVar(&opts.Duration, "duration", 0, "run each side this long instead of --ops")
	f.IntVar(&opts.Rounds, "rounds", 0, "rounds in which the sides take turns (default 10; 3 for projection-catchup and projection-kv)")
	f.IntVar(&opts.Concurrency, "concurrency", 0, fmt.Sprintf("writers of append-concurrent (default %d)", benchkit.DefaultConcurrency))
	f.IntVar(&opts.Replicas, "replicas", 0, "replicas of the benchmark streams (default 1)")
	f.StringVar(&groupCommit, "group-commit", "auto", "group-commit mode of the benchmark stores (auto, batch, pipeline, off): how append-concurrent and append-async send their appends")
	f.BoolVar(&opts.Keep, "keep", false, "keep the benchmark streams for inspection")
	f.BoolVar(&asJSON, "json", false, "print the results as JSON")
	f.BoolVarP(&quiet, "quiet", "q", false, "no progress")
	f.BoolVar(&list, "list", false, "describe the workloads and exit")
	f.BoolVar(&useServer, "server-only", false, "use the server of the connection flags (nats://127.0.0.1:4222 by default) instead of an embedded one")
	f.StringVar(&syncFlag, "sync", "always", "fsync policy of the embedded server: always, default or an interval")
	f.StringVar(&dir, "dir", "", "data directory of the embedded server (default: a temporary one)")
	return cmd
}
