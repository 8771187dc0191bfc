// Package deploy_test keeps the deployment files honest: the NATS node
// configurations in deploy/nats are parsed by nats-server's own parser and
// a cluster is started from them, docker-compose.yml is checked against
// them, and the Dockerfile against the packages it builds.
package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"go/build"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/examples/service/app"
)

// The repository's root, relative to this package.
const root = ".."

// nodes are the compose cluster's NATS services, in order.
var nodes = []string{"n1", "n2", "n3"}

// nodeConfigs parses every deploy/nats/*.conf with nats-server's parser,
// by server name.
func nodeConfigs(t *testing.T) map[string]*server.Options {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, "deploy", "nats", "*.conf"))
	require.NoError(t, err)
	require.Len(t, files, len(nodes), "one config per node: %v", files)
	out := map[string]*server.Options{}
	for _, f := range files {
		o, err := server.ProcessConfigFile(f)
		require.NoError(t, err, "nats-server refuses %s", f)
		require.Equal(t, strings.TrimSuffix(filepath.Base(f), ".conf"), o.ServerName, "%s names its server after the file", f)
		require.NotContains(t, out, o.ServerName, "server names are distinct")
		out[o.ServerName] = o
	}
	return out
}

func TestNodeConfigs(t *testing.T) {
	cfgs := nodeConfigs(t)
	require.ElementsMatch(t, nodes, slices.Collect(maps.Keys(cfgs)))
	n1 := cfgs["n1"]
	for _, name := range nodes {
		o := cfgs[name]
		t.Run(name, func(t *testing.T) {
			assert.True(t, o.JetStream, "JetStream is on")
			assert.True(t, o.SyncAlways, "every write is synced (sync_interval: always)")
			assert.Equal(t, "/data", o.StoreDir, "the store is on the node's volume")
			assert.Equal(t, 4222, o.Port)
			assert.Equal(t, 8222, o.HTTPPort, "monitoring, for the healthcheck")
			assert.NotEmpty(t, o.Cluster.Name)
			assert.Equal(t, n1.Cluster.Name, o.Cluster.Name, "one cluster")
			assert.Equal(t, 6222, o.Cluster.Port)
			var routes []string
			for _, r := range o.Routes {
				assert.Equal(t, strconv.Itoa(o.Cluster.Port), r.Port(), "route %s", r)
				routes = append(routes, r.Hostname())
			}
			assert.ElementsMatch(t, nodes, routes, "routes to every node, by service name")
		})
	}
}

// compose is the part of docker-compose.yml the tests read.
type compose struct {
	Name     string
	Services map[string]struct {
		Image       string
		Build       string
		Command     []string
		Hostname    string
		Environment map[string]string
		Volumes     []string
		Ports       []string
		DependsOn   map[string]struct{ Condition string } `yaml:"depends_on"`
		Healthcheck struct{ Test []string }
	}
	Volumes map[string]any
}

func readCompose(t *testing.T) compose {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	require.NoError(t, err)
	var c compose
	require.NoError(t, yaml.Unmarshal(data, &c))
	return c
}

func TestCompose(t *testing.T) {
	c := readCompose(t)
	cfgs := nodeConfigs(t)
	require.ElementsMatch(t, append(slices.Clone(nodes), "cart-api", "cart-worker"), slices.Collect(maps.Keys(c.Services)))

	dataVolumes := map[string]bool{}
	for _, name := range nodes {
		s, o := c.Services[name], cfgs[name]
		t.Run(name, func(t *testing.T) {
			// The image: the official one, new enough for esnats.
			m := regexp.MustCompile(`^nats:(\d+)\.(\d+)[.-]`).FindStringSubmatch(s.Image)
			require.NotNil(t, m, "image %q", s.Image)
			minor, _ := strconv.Atoi(m[2])
			assert.True(t, m[1] == "2" && minor >= 14, "image %s: esnats needs nats-server 2.14 or newer", s.Image)
			assert.Equal(t, name, s.Hostname)

			// Its config is this node's file, at the path the command names.
			require.Len(t, s.Command, 2)
			assert.Equal(t, "--config", s.Command[0])
			conf := "./deploy/nats/" + name + ".conf:" + s.Command[1] + ":ro"
			assert.Contains(t, s.Volumes, conf)
			// Its store dir is on a named volume of its own.
			var data string
			for _, v := range s.Volumes {
				if src, dst, _ := strings.Cut(v, ":"); dst == o.StoreDir {
					data = src
				}
			}
			require.NotEmpty(t, data, "a volume at the store dir %s", o.StoreDir)
			assert.Contains(t, c.Volumes, data, "a named volume")
			assert.False(t, dataVolumes[data], "a volume of its own")
			dataVolumes[data] = true

			// The healthcheck asks the monitoring port of the config.
			assert.Contains(t, strings.Join(s.Healthcheck.Test, " "), "http://127.0.0.1:"+strconv.Itoa(o.HTTPPort)+"/healthz")
		})
	}
	assert.Contains(t, c.Services["n1"].Ports, "4222:4222", "n1's client port is on the host")
	assert.Contains(t, c.Services["n1"].Ports, "8222:8222", "n1's monitoring port is on the host")

	built := dockerBinaries(t)
	for _, name := range []string{"cart-api", "cart-worker"} {
		s := c.Services[name]
		t.Run(name, func(t *testing.T) {
			assert.Equal(t, ".", s.Build, "built from the Dockerfile at the root")
			require.Len(t, s.Command, 1)
			assert.Equal(t, "/usr/local/bin/"+name, s.Command[0])
			assert.Contains(t, built, name, "the Dockerfile builds %s", name)
			for _, n := range nodes {
				assert.Equal(t, "service_healthy", s.DependsOn[n].Condition, "waits for %s", n)
			}
			// The environment as the mains read it.
			url, cfg, err := app.FromEnv(func(k string) string { return s.Environment[k] })
			require.NoError(t, err)
			assert.Equal(t, 3, cfg.Replicas, "R3 on the 3-node cluster")
			var hosts []string
			for _, u := range strings.Split(url, ",") {
				pu, err := urlParse(u)
				require.NoError(t, err, "NATS_URL %q", u)
				assert.Equal(t, strconv.Itoa(cfgs[pu.Hostname()].Port), pu.Port(), "%s: the node's client port", u)
				hosts = append(hosts, pu.Hostname())
			}
			assert.ElementsMatch(t, nodes, hosts, "NATS_URL lists every node")
		})
	}
}

func urlParse(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err == nil && (u.Scheme != "nats" || u.Port() == "") {
		err = errors.New("want nats://<host>:<port>")
	}
	return u, err
}

// dockerBinaries checks the Dockerfile's build and returns the names of
// the binaries it puts in the image: the last element of each package
// path it builds, each of which must be a main package of this module.
func dockerBinaries(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	require.NoError(t, err)
	df := string(data)

	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	require.NoError(t, err)
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	require.NotNil(t, goVersion)
	assert.Contains(t, df, "FROM golang:"+string(goVersion[1])+" AS build", "the build stage has the go.mod's Go")
	assert.Contains(t, df, "ENV CGO_ENABLED=0", "static binaries for the distroless image")
	assert.Contains(t, df, "COPY --from=build /out/ /usr/local/bin/")

	// The go build instruction: its continuation lines up to the next
	// blank line.
	i := strings.Index(df, "go build ")
	require.GreaterOrEqual(t, i, 0, "the Dockerfile runs go build")
	cmd, _, _ := strings.Cut(df[i:], "\n\n")
	paths := regexp.MustCompile(`\./[\w/.-]+`).FindAllString(cmd, -1)
	require.NotEmpty(t, paths)
	var names []string
	for _, p := range paths {
		pkg, err := build.ImportDir(filepath.Join(root, p), 0)
		if assert.NoError(t, err, "the Dockerfile builds %s", p) {
			assert.Equal(t, "main", pkg.Name, "%s is a command", p)
		}
		names = append(names, filepath.Base(p))
	}
	assert.ElementsMatch(t, []string{"esnats", "cart-api", "cart-worker"}, names)
	return names
}

// A cluster started in process from the node configs themselves, with only
// what cannot be the same on one machine replaced (listen ports: random;
// routes: to those ports on loopback; store dirs: temporary; monitoring:
// off), runs the service as compose runs it: R3, fsync always.
func TestClusterFromConfigs(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts a 3-node cluster (a few seconds)")
	}
	cfgs := nodeConfigs(t)
	c := embedded.RunCluster(t, func(co *embedded.ClusterOptions) {
		co.Name = cfgs["n1"].Cluster.Name
		co.Configure = func(i int, o *server.Options) {
			set := *o // embedded's network and storage choices
			*o = *cfgs[nodes[i]]
			o.Host, o.Port = set.Host, set.Port
			o.HTTPHost, o.HTTPPort = "", 0
			o.StoreDir = set.StoreDir
			o.Cluster.Host, o.Cluster.Port = set.Cluster.Host, set.Cluster.Port
			o.Routes = set.Routes
			o.NoLog, o.NoSigs = set.NoLog, set.NoSigs
		}
	})
	for i, n := range c.Nodes() {
		ns := n.NATS()
		assert.Equal(t, nodes[i], ns.Name())
		assert.Equal(t, cfgs["n1"].Cluster.Name, ns.ClusterName())
		assert.True(t, ns.JetStreamConfig().SyncAlways, "%s syncs every write", ns.Name())
	}

	env := readCompose(t).Services["cart-api"].Environment
	_, cfg, err := app.FromEnv(func(k string) string { return env[k] })
	require.NoError(t, err)
	run := func(name string, fn func(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) error) {
		nc, js := embedded.MustJetStream(t, c)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- fn(ctx, nc, js) }()
		t.Cleanup(func() {
			cancel()
			assert.NoError(t, <-done, "%s", name)
		})
	}
	run("Serve", func(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) error {
		return app.Serve(ctx, nc, js, cfg)
	})
	run("RunWorker", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
		return app.RunWorker(ctx, js, cfg)
	})

	nc := embedded.MustConnect(t, c)
	request := func(subject, data string) (*nats.Msg, error) {
		for deadline := time.Now().Add(20 * time.Second); ; {
			msg, err := nc.Request(subject, []byte(data), 10*time.Second)
			if !errors.Is(err, nats.ErrNoResponders) || time.Now().After(deadline) {
				return msg, err
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	msg, err := request("cart.add", `{"cart":"alice","sku":"apple","quantity":2}`)
	require.NoError(t, err)
	require.Empty(t, msg.Header.Get(micro.ErrorCodeHeader), "%s", msg.Data)
	var st app.CartState
	require.NoError(t, json.Unmarshal(msg.Data, &st))
	assert.Equal(t, app.CartState{Cart: "alice", Version: 1, Items: map[string]int{"apple": 2}, Quantity: 2}, st)

	// The worker's read model follows.
	var sum app.Summary
	deadline := time.Now().Add(15 * time.Second)
	for sum.Version < 1 {
		require.True(t, time.Now().Before(deadline), "the read model shows alice's cart; last reply %s", msg.Data)
		time.Sleep(20 * time.Millisecond)
		msg, err = request("cart.summary", `{"cart":"alice"}`)
		require.NoError(t, err)
		if msg.Header.Get(micro.ErrorCodeHeader) == "" {
			require.NoError(t, json.Unmarshal(msg.Data, &sum))
		}
	}
	assert.Equal(t, map[string]int{"apple": 2}, sum.Items)

	// Everything esnats made is replicated on the three nodes (checked
	// after the worker answered: it creates the read model's bucket).
	_, js := embedded.MustJetStream(t, c)
	for _, name := range []string{"shop", "KV_shop_snapshots", "KV_shop_cart_views"} {
		s, err := js.Stream(t.Context(), name)
		require.NoError(t, err, name)
		assert.Equal(t, 3, s.CachedInfo().Config.Replicas, "%s is R3", name)
	}
}
