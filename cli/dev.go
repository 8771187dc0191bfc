package cli

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/spf13/cobra"

	"github.com/esnats/esnats/embedded"
)

// defaultDevDir is where "dev" keeps its data unless --dir says otherwise:
// $XDG_DATA_HOME/esnats/dev or ~/.local/share/esnats/dev, so events survive
// restarts of the dev server.
func defaultDevDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "esnats", "dev")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "esnats", "dev")
	}
	return filepath.Join(os.TempDir(), "esnats-dev")
}

// parseSync reads --sync: "always", "default" or a duration.
func parseSync(s string) (embedded.SyncPolicy, error) {
	switch strings.ToLower(s) {
	case "always", "":
		return embedded.SyncAlways, nil
	case "default":
		return embedded.SyncServerDefault, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, usagef("--sync %q: want always, default (the server's 2m) or a positive duration such as 1s", s)
	}
	return embedded.SyncEvery(d), nil
}

func (a *app) devCmd() *cobra.Command {
	var (
		dir, host, syncFlag, name string
		metricsAddr               string
		port, monitor             int
		reset, verbose            bool
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a NATS server with JetStream for development (fsync always)",
		Long: `Run an embedded NATS server with JetStream in this process until interrupted:
the zero-install server for development. Its data directory survives restarts
(--reset empties it first). Writes are fsynced before they are acknowledged
(--sync always), as an event store wants. It prints the URL to use as NATS_URL.

--metrics-addr serves the server's figures in the Prometheus format at
/metrics: connections and traffic, and JetStream's streams, messages, bytes and
consumers, per stream and per consumer (pending, acknowledgement floor),
read in process at each scrape (docs/observability.md). --monitor serves the
NATS server's own monitoring endpoints (/varz, /jsz, ...) as JSON.`,
		Example: `  esnats dev
  esnats dev --port -1 --dir ./data      # a random port, data in ./data
  esnats dev --metrics-addr 127.0.0.1:9464  # Prometheus metrics at http://127.0.0.1:9464/metrics
  NATS_URL=nats://127.0.0.1:4222 go run ./examples/shoppingcart`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			policy, err := parseSync(syncFlag)
			if err != nil {
				return err
			}
			if dir == "" {
				dir = defaultDevDir()
			}
			if reset {
				if err := os.RemoveAll(dir); err != nil {
					return fmt.Errorf("--reset: removing %s: %w", dir, err)
				}
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return fmt.Errorf("creating the data directory %s: %w", dir, err)
			}
			if port > 0 && portBusy(host, port) {
				return fmt.Errorf("port %d on %s is in use: is another server (esnats dev, nats-server) running? --port -1 picks a free port", port, host)
			}
			opts := embedded.Options{Name: name, Dir: dir, Host: host, Port: port, Sync: policy, Logging: verbose}
			if monitor != 0 {
				opts.Configure = func(o *server.Options) { o.HTTPHost, o.HTTPPort = host, monitor }
			}
			s, err := embedded.Start(opts)
			if err != nil {
				return err
			}
			defer s.Shutdown()
			var metrics *metricsEndpoint
			if metricsAddr != "" {
				if metrics, err = startMetrics(metricsAddr, a.opts.Name+"-dev"); err != nil {
					return err
				}
				defer metrics.close()
				if err := serverMetrics(metrics.mp, s.NATS()); err != nil {
					return fmt.Errorf("--metrics-addr: %w", err)
				}
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "NATS server %q with JetStream listening on %s\n", s.Name(), s.ClientURL())
			fmt.Fprintf(w, "  data:  %s (fsync %s)\n", dir, policy)
			if monitor != 0 {
				fmt.Fprintf(w, "  monitoring: http://%s\n", net.JoinHostPort(host, strconv.Itoa(s.NATS().MonitorAddr().Port)))
			}
			if metrics != nil {
				fmt.Fprintf(w, "  metrics: %s\n", metrics.URL())
			}
			fmt.Fprintf(w, "  use it: export NATS_URL=%s\n", s.ClientURL())
			fmt.Fprintln(w, "stop with Ctrl-C")
			<-cmd.Context().Done()
			fmt.Fprintln(w, "stopping")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "data directory (default "+defaultDevDir()+")")
	f.StringVar(&host, "host", embedded.DefaultHost, "listen address")
	f.IntVarP(&port, "port", "p", 4222, "client port (-1: a random free port)")
	f.IntVar(&monitor, "monitor", 0, "HTTP monitoring port (0: off, -1: random)")
	f.StringVar(&metricsAddr, "metrics-addr", "", metricsFlagUsage)
	f.StringVar(&syncFlag, "sync", "always", "fsync policy: always, default (the server's 2m) or an interval such as 1s")
	f.StringVar(&name, "name", "esnats-dev", "server name")
	f.BoolVar(&reset, "reset", false, "delete the data directory's contents first")
	f.BoolVarP(&verbose, "verbose", "v", false, "print the server's log")
	return cmd
}

// portBusy reports whether something listens on host:port.
func portBusy(host string, port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		var oe *net.OpError
		return errors.As(err, &oe)
	}
	l.Close()
	return false
}
