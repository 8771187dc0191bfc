package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/spf13/cobra"

	"github.com/esnats/esnats/projections"
	"github.com/esnats/esnats/stream"
)

func (a *app) projectionsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "projections",
		Aliases: []string{"proj"},
		Short:   "Status, rebuild and reset of projections; run them as a worker",
		Long: `Projections are read models built by worker processes from a store's events.
Workers that serve the control plane (projections.Runner.Serve) answer on
$ESNATS.PROJ.<store>.>: "status" gathers every worker's view, "rebuild" and
"reset" ask the worker that runs the projection to do it.`,
	}
	cmd.AddCommand(a.projStatusCmd(), a.projRebuildCmd(), a.projResetCmd(), a.projRunCmd())
	return cmd
}

// statusRow is one projection in one worker, as "projections status" shows it.
type statusRow struct {
	Projection string  `json:"projection"`
	Instance   string  `json:"instance"`
	Host       string  `json:"host"`
	PID        int     `json:"pid"`
	Role       string  `json:"role"`
	Mode       string  `json:"mode"`
	Position   uint64  `json:"position"`
	Lag        uint64  `json:"lag"`
	Rate       float64 `json:"rate"`
	Parked     uint64  `json:"parked"`
	LastError  string  `json:"last_error,omitempty"`
}

// role names what an instance does with a projection.
func role(p projections.ProjectionStatus) string {
	switch {
	case p.Rebuilding:
		return "rebuilding"
	case p.Resetting:
		return "resetting"
	case p.Active:
		return "active"
	case p.Running && p.Pinned:
		return "standby"
	case p.Running:
		return "running"
	default:
		return "stopped"
	}
}

func (a *app) projStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status STORE",
		Short: "Every worker's projections: position, lag, rate, active or standby",
		Long: `Ask every worker process of the store for its projections: position (last
event applied), lag (matching events not applied yet), rate, parked events,
last error, and the process's role: active (it holds the consumer's pin and
applies the events), standby, rebuilding, resetting or stopped. When no
worker answers, the projections' durable consumers are shown instead, as the
server knows them.`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := a.conn.connect(ctx, "esnats projections status", false)
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := a.lookupStore(ctx, c, args[0]); err != nil {
				return err
			}
			cl, err := projections.NewControlClient(c.nc, args[0], projections.WithControlTimeout(a.conn.timeout))
			if err != nil {
				return withCode(ExitUsage, err)
			}
			var instances []projections.InstanceStatus
			err = c.quietly(controlCall(args[0]), func() (err error) {
				instances, err = cl.Status(ctx)
				return err
			})
			w := cmd.OutOrStdout()
			if errors.Is(err, projections.ErrNoWorker) {
				rows, cerr := storeConsumers(ctx, c, args[0])
				if cerr != nil {
					return cerr
				}
				if asJSON {
					return writeJSON(w, map[string]any{"workers": []any{}, "consumers": rows})
				}
				fmt.Fprintf(w, "no worker process answers for store %s (workers serve the control plane with projections.Runner.Serve)\n", args[0])
				if len(rows) == 0 {
					fmt.Fprintln(w, "and the store has no durable consumers")
					return nil
				}
				fmt.Fprintln(w, "its durable consumers, as the server knows them:")
				t := newTable(w, "CONSUMER", "POSITION", "LAG", "STATE", "LAST ACTIVE")
				for _, r := range rows {
					t.row(r.Name, r.Position, r.Lag, r.State, shortTime(r.LastActive))
				}
				return t.flush()
			}
			if err != nil {
				return err
			}
			var rows []statusRow
			for _, in := range instances {
				for _, p := range in.Projections {
					last := p.LastError
					if p.Error != "" {
						last = p.Error
					}
					rows = append(rows, statusRow{
						Projection: p.Name, Instance: in.Instance, Host: in.Host, PID: in.PID, Role: role(p), Mode: p.Mode,
						Position: p.Position, Lag: p.Lag, Rate: p.Rate, Parked: p.Parked, LastError: last,
					})
				}
			}
			if asJSON {
				return writeJSON(w, map[string]any{"workers": instances, "projections": rows})
			}
			fmt.Fprintf(w, "%d worker process(es) for store %s\n", len(instances), args[0])
			if len(rows) == 0 {
				fmt.Fprintln(w, "they run no projections")
				return nil
			}
			t := newTable(w, "PROJECTION", "WORKER", "ROLE", "MODE", "POSITION", "LAG", "RATE/S", "PARKED", "LAST ERROR")
			for _, r := range rows {
				last := r.LastError
				if last == "" {
					last = "-"
				}
				t.row(r.Projection, fmt.Sprintf("%s/%d (%s)", r.Host, r.PID, shortID(r.Instance)), r.Role, r.Mode, r.Position, r.Lag, fmt.Sprintf("%.1f", r.Rate), r.Parked, truncate(last, 60))
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// shortID keeps the end of a long instance id, enough to tell them apart.
func shortID(id string) string {
	if len(id) > 8 {
		return id[len(id)-8:]
	}
	return id
}

func (a *app) projRebuildCmd() *cobra.Command {
	var (
		instance     string
		quiet, force bool
	)
	cmd := &cobra.Command{
		Use:   "rebuild STORE PROJECTION",
		Short: "Rebuild a projection in its worker, with progress",
		Long: `Ask the worker that runs the projection to rebuild it: replay the store from
the start into a fresh read model (the projection's Fresh), then switch over
to it. The old model keeps serving until the switch. Progress is shown while
it runs; the command returns when the rebuild is done or failed. If the
command is interrupted, the rebuild goes on in the worker.

Only the worker that rebuilds goes on with the new consumer: other processes
running the projection stop with an error at the switch-over and must be
restarted. The command refuses when it sees several, unless --force.`,
		Args: args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := a.conn.connect(ctx, "esnats projections rebuild", true) // a rebuild may outlast a reconnect
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := a.lookupStore(ctx, c, args[0]); err != nil {
				return err
			}
			opts := []projections.ControlOption{projections.WithControlTimeout(a.conn.timeout)}
			if instance != "" {
				opts = append(opts, projections.WithInstance(instance))
			}
			cl, err := projections.NewControlClient(c.nc, args[0], opts...)
			if err != nil {
				return withCode(ExitUsage, err)
			}
			if !force {
				var n int
				err := c.quietly(controlCall(args[0]), func() (err error) {
					n, err = runningIn(ctx, cl, args[1])
					return err
				})
				if errors.Is(err, projections.ErrPermissionDenied) {
					return err
				}
				if err == nil && n > 1 {
					return withCode(ExitUsage, fmt.Errorf("projection %s runs in %d worker processes: a rebuild switches it to a new consumer, and the others then stop with an error (restart them afterwards); run it again with --force to go ahead", args[1], n))
				}
			}
			p := newProgress(cmd.ErrOrStderr(), "rebuilding "+args[1], 0, quiet)
			var last projections.Progress
			err = c.quietly(controlCall(args[0]), func() error {
				return cl.Rebuild(ctx, args[1], func(pr projections.Progress) {
					last = pr
					p.set(int64(pr.Position), int64(pr.Target))
				})
			})
			p.finish()
			if err != nil {
				return projError(args[0], args[1], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "projection %s of store %s rebuilt: %d events applied, position %d; it now runs on the new model\n", args[1], args[0], last.Applied, last.Position)
			return nil
		},
	}
	cmd.Flags().StringVar(&instance, "instance", "", "the worker instance to ask (default: the one running the projection)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress")
	cmd.Flags().BoolVar(&force, "force", false, "rebuild even when other worker processes run the projection")
	return cmd
}

// runningIn counts the worker processes that run the projection.
func runningIn(ctx context.Context, cl *projections.ControlClient, name string) (int, error) {
	instances, err := cl.Status(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, in := range instances {
		if ps, ok := in.Projection(name); ok && ps.Running {
			n++
		}
	}
	return n, nil
}

func (a *app) projResetCmd() *cobra.Command {
	var (
		instance    string
		to          uint64
		wait, quiet bool
	)
	cmd := &cobra.Command{
		Use:   "reset STORE PROJECTION",
		Short: "Move a projection back to a position (events from there are applied again)",
		Long: `Ask the worker that runs the projection to move it back to stream sequence
--to (default 1: the start). Events from there on are delivered again. An
exactly-once model (one that keeps its own checkpoint) can only go back to the
start, and its data is dropped first; other models keep their data and must
take the events again idempotently. --to beyond the projection's position
skips the events in between. Only one worker process may run the projection
during a reset: stop the others first.`,
		Args: args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := a.conn.connect(ctx, "esnats projections reset", wait)
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := a.lookupStore(ctx, c, args[0]); err != nil {
				return err
			}
			// The worker gives a reset up to a minute (it stops the batch in
			// hand and empties an exactly-once model first).
			opts := []projections.ControlOption{projections.WithControlTimeout(max(a.conn.timeout, resetTimeout))}
			if instance != "" {
				opts = append(opts, projections.WithInstance(instance))
			}
			cl, err := projections.NewControlClient(c.nc, args[0], opts...)
			if err != nil {
				return withCode(ExitUsage, err)
			}
			if err := c.quietly(controlCall(args[0]), func() error { return cl.Reset(ctx, args[1], to) }); err != nil {
				return projError(args[0], args[1], err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "projection %s of store %s reset to sequence %d; its worker applies the events from there again\n", args[1], args[0], max(to, 1))
			if !wait {
				return nil
			}
			var st projections.ProjectionStatus
			err = c.quietly(controlCall(args[0]), func() (err error) {
				st, err = waitCaughtUp(ctx, cl, args[1], newProgress(cmd.ErrOrStderr(), "replaying "+args[1], 0, quiet), a.conn.timeout)
				return err
			})
			if err != nil {
				return projError(args[0], args[1], err)
			}
			fmt.Fprintf(w, "caught up: position %d, lag 0\n", st.Position)
			return nil
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the replay has caught up, with progress")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress (with --wait)")
	cmd.Flags().Uint64Var(&to, "to", 1, "stream sequence to go back to (1: the start)")
	cmd.Flags().StringVar(&instance, "instance", "", "the worker instance to ask (default: the one running the projection)")
	return cmd
}

// controlCall is what the control plane's requests publish to.
func controlCall(store string) call {
	ping, _ := micro.ControlSubject(micro.PingVerb, projections.ControlServiceName, "")
	return call{subjects: []string{ping, projections.ControlSubjectPrefix + "." + store + ".>"}}
}

// projError explains a control-plane failure, with its exit code.
func projError(store, name string, err error) error {
	switch {
	case errors.Is(err, projections.ErrNoWorker):
		return withCode(ExitNotFound, fmt.Errorf("no worker process answers for store %s: start the worker that runs projection %s (it must call projections.Runner.Serve): %w", store, name, err))
	case errors.Is(err, projections.ErrUnknownProjection):
		return withCode(ExitNotFound, fmt.Errorf("no worker of store %s has a projection %s (see: esnats projections status %s): %w", store, name, store, err))
	}
	return err
}

func (a *app) projRunCmd() *cobra.Command {
	var metricsAddr string
	cmd := &cobra.Command{
		Use:   "run STORE",
		Short: "Run the projections of a store as a worker (in binaries built with your projections)",
		Long: `Run the store's projections in this process until interrupted, with the
control plane that "projections status|rebuild|reset" talk to. Run as many
worker processes as you like: for each projection one is active, the others
stand by and take over when it stops.

--metrics-addr serves the worker's metrics in the Prometheus format at
/metrics: each projection's lag, position and events applied, its consumer's
events processed and parked, retries, batch durations, whether this process is
the active one, a rebuild's progress, and the Go runtime's and process's own
(docs/observability.md). Traces go to the global OpenTelemetry tracer provider,
if the worker's main sets one.

The stock esnats binary has no projections compiled in: build your worker's own
command with the cli package (cli.Main(cli.Options{Projections: ...}), see
docs/cli.md).`,
		Example: `  shop-worker projections run shop
  shop-worker projections run shop --metrics-addr 127.0.0.1:9464   # scrape http://127.0.0.1:9464/metrics`,
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.opts.Projections == nil {
				return withCode(ExitUsage, fmt.Errorf("%s has no projections compiled in: build your worker's command with the esnats cli package and Options.Projections (see docs/cli.md), or call projections.Runner from your own main", a.opts.Name))
			}
			ctx := cmd.Context()
			var metrics *metricsEndpoint
			if metricsAddr != "" {
				var err error
				if metrics, err = startMetrics(metricsAddr, a.opts.Name); err != nil {
					return err
				}
				defer metrics.close()
			}
			c, err := a.conn.connect(ctx, a.opts.Name+" projections run", true)
			if err != nil {
				return err
			}
			defer c.Close()
			return a.runWorker(ctx, cmd.ErrOrStderr(), c, args[0], metrics)
		},
	}
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", metricsFlagUsage)
	return cmd
}

// runWorker runs the application's projections of store until ctx ends.
// With metrics, the runner's (and its consumers') metrics go to it.
func (a *app) runWorker(ctx context.Context, logw io.Writer, c *connection, storeName string, metrics *metricsEndpoint) error {
	reg := a.opts.Registry
	if reg == nil {
		return withCode(ExitUsage, errors.New("Options.Registry is required to run projections (events are decoded with it)"))
	}
	store, err := stream.OpenStore(ctx, c.js, stream.Config{Name: storeName, Registry: reg})
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(logw, nil)).With("store", storeName)
	projs, err := a.opts.Projections(ctx, c.js, store)
	if err != nil {
		return fmt.Errorf("setting up the projections: %w", err)
	}
	if len(projs) == 0 {
		return fmt.Errorf("no projections of store %s to run", storeName)
	}
	var opts []projections.RunnerOption
	if metrics != nil {
		opts = append(opts, projections.WithMeterProvider(metrics.mp))
	}
	runner := projections.NewRunner(c.js, store, log, opts...)
	names := make([]string, 0, len(projs))
	for _, p := range projs {
		if err := runner.Add(p); err != nil {
			return err
		}
		names = append(names, p.Name)
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	svc, err := runner.Serve(sctx, c.nc)
	if err != nil {
		return fmt.Errorf("serving the control plane: %w", err)
	}
	started := []any{"projections", strings.Join(names, ","), "instance", svc.ID(), "server", c.url}
	if metrics != nil {
		started = append(started, "metrics", metrics.URL())
	}
	log.Info("worker started", started...)
	err = runner.Run(ctx)
	stop()
	<-svc.Done()
	log.Info("worker stopped")
	return err
}

// resetTimeout bounds the wait for a RESET reply: the worker allows itself a
// minute.
const resetTimeout = 75 * time.Second

// waitCaughtUp polls the workers' status until the process running the
// projection (the active one, or the only one) reports no lag, showing the
// replay's progress. When no process qualifies for longer than timeout (at
// least 15s), it gives up with an error.
func waitCaughtUp(ctx context.Context, cl *projections.ControlClient, name string, p *progress, timeout time.Duration) (projections.ProjectionStatus, error) {
	defer p.finish()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	patience := max(timeout, 15*time.Second)
	lastSeen := time.Now()
	var lastErr error
	for {
		instances, err := cl.Status(ctx)
		if errors.Is(err, projections.ErrPermissionDenied) {
			return projections.ProjectionStatus{}, err
		}
		lastErr = err
		var runs []projections.ProjectionStatus
		for _, in := range instances {
			if ps, ok := in.Projection(name); ok && ps.Running && !ps.Resetting && ps.Error == "" {
				runs = append(runs, ps)
			}
		}
		for _, ps := range runs {
			if !ps.Active && len(runs) > 1 {
				continue // a standby: its view is not the replay's
			}
			lastSeen = time.Now()
			p.set(int64(ps.Position), int64(ps.Position+ps.Lag))
			if ps.Lag == 0 && (ps.Active || len(runs) == 1) {
				return ps, nil
			}
		}
		if time.Since(lastSeen) > patience {
			if lastErr == nil {
				lastErr = fmt.Errorf("no worker process reports running projection %s for %s", name, patience)
			}
			return projections.ProjectionStatus{}, lastErr
		}
		select {
		case <-ctx.Done():
			return projections.ProjectionStatus{}, ctx.Err()
		case <-tick.C:
		}
	}
}
