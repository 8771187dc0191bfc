package securitytest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/cli"
	"github.com/esnats/esnats/embedded"
)

// securityDoc is the page whose configuration blocks the tests run.
const securityDoc = "../../docs/security.md"

// confFiles returns the ```conf blocks of docs/security.md grouped by the
// file they belong to: each block starts with a comment "# <name>.conf: ...",
// and the blocks of one file are concatenated in the order of the page.
func confFiles(t testing.TB) map[string]string {
	t.Helper()
	data, err := os.ReadFile(securityDoc)
	require.NoError(t, err)
	files := map[string]string{}
	var block []string
	in := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !in && strings.TrimSpace(line) == "```conf":
			in, block = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			require.NotEmpty(t, block, "empty conf block in %s", securityDoc)
			name, _, ok := strings.Cut(strings.TrimPrefix(block[0], "# "), ":")
			require.True(t, ok && strings.HasPrefix(block[0], "# ") && strings.HasSuffix(name, ".conf"),
				"a conf block of %s must start with \"# <file>.conf: ...\", got %q", securityDoc, block[0])
			files[name] += strings.Join(block, "\n") + "\n"
		case in:
			block = append(block, line)
		}
	}
	require.NoError(t, sc.Err())
	require.False(t, in, "unterminated conf block in %s", securityDoc)
	return files
}

// confFile returns one file of confFiles, failing the test if it is missing.
func confFile(t testing.TB, name string) string {
	t.Helper()
	f, ok := confFiles(t)[name]
	require.True(t, ok, "%s has no %s blocks", securityDoc, name)
	return f
}

// withVars prepends variable definitions (the passwords the page takes
// from the environment) to a configuration: those it refers to (the server
// refuses a variable that is not used).
func withVars(conf string, vars map[string]string) string {
	keys := make([]string, 0, len(vars))
	for k := range vars {
		if strings.Contains(conf, "$"+k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %q\n", k, vars[k])
	}
	return b.String() + conf
}

// runServer starts an embedded server with JetStream configured by conf
// (nats-server configuration syntax), which must parse.
func runServer(t testing.TB, conf string) *embedded.Server {
	t.Helper()
	// Parse once here, so that an error fails the test with the reason.
	var probe server.Options
	require.NoError(t, probe.ProcessConfigString(conf), "configuration:\n%s", conf)
	return embedded.RunServer(t, func(o *embedded.Options) {
		o.Configure = func(so *server.Options) {
			if err := so.ProcessConfigString(conf); err != nil {
				panic(err) // parsed above
			}
		}
	})
}

// violations records the permission violations the server reports to one
// connection (asynchronously, see nats.ErrorHandler).
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrPermissionViolation) {
		v.mu.Lock()
		v.errs = append(v.errs, err.Error())
		v.mu.Unlock()
	}
}

// list returns the violations seen so far, sorted and without repeats.
func (v *violations) list() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, e := range v.errs {
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	sort.Strings(out)
	return out
}

// waitFor waits until one of the violations mentions subject, and returns
// it.
func (v *violations) waitFor(t testing.TB, subject string) string {
	t.Helper()
	var found string
	require.Eventually(t, func() bool {
		for _, e := range v.list() {
			if strings.Contains(e, `"`+subject+`"`) {
				found = e
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond, "no permission violation for %q; seen: %v", subject, v.list())
	return found
}

// user is one role's login: a user name and password, or an NKey (the
// file holding its seed).
type user struct {
	name, password, inbox string
	nkeySeed              string
}

// login returns the nats options that authenticate u.
func (u user) login(t testing.TB) nats.Option {
	t.Helper()
	if u.nkeySeed != "" {
		o, err := nats.NkeyOptionFromSeed(u.nkeySeed)
		require.NoError(t, err)
		return o
	}
	return nats.UserInfo(u.name, u.password)
}

// cliLogin returns the esnats command's flags that authenticate u.
func (u user) cliLogin() []string {
	if u.nkeySeed != "" {
		return []string{"--nkey", u.nkeySeed}
	}
	return []string{"--user", u.name, "--password", u.password}
}

// client is a connection of one user, with what the server told it.
type client struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	vio *violations
}

// connect connects u to srv with its inbox prefix; timeout is the
// JetStream API timeout (short for operations expected to be refused).
func connect(t testing.TB, srv *embedded.Server, u user, timeout time.Duration, opts ...nats.Option) *client {
	t.Helper()
	vio := &violations{}
	all := append([]nats.Option{
		u.login(t),
		nats.CustomInboxPrefix(u.inbox),
		nats.ErrorHandler(vio.handler),
		nats.Name(u.name),
	}, opts...)
	nc := embedded.MustConnect(t, srv, all...)
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(timeout))
	require.NoError(t, err)
	return &client{nc: nc, js: js, vio: vio}
}

// noViolations checks that the server refused nothing this client did.
func (c *client) noViolations(t testing.TB) {
	t.Helper()
	// Violations arrive asynchronously: a round trip makes sure those of
	// everything done so far are in.
	require.NoError(t, c.nc.Flush())
	time.Sleep(20 * time.Millisecond)
	require.Empty(t, c.vio.list(), "the server refused some of %s's operations", c.nc.Opts.Name)
}

// cannotSubscribe checks that the server refuses c a subscription to
// subject (another role's inbox, say).
func (c *client) cannotSubscribe(t testing.TB, subject string) {
	t.Helper()
	sub, err := c.nc.SubscribeSync(subject)
	require.NoError(t, err) // refused asynchronously
	c.vio.waitFor(t, subject)
	_ = sub.Unsubscribe()
}

// cliResult is the outcome of one esnats command.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLI runs the esnats command with args, for at most 30s.
func runCLI(t testing.TB, args ...string) cliResult {
	t.Helper()
	return runCLIWithin(t, 30*time.Second, args...)
}

// runCLIWithin runs the esnats command with args, interrupting it after d.
func runCLIWithin(t testing.TB, d time.Duration, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var out, errOut bytes.Buffer
	code := cli.Run(ctx, cli.Options{Stdout: &out, Stderr: &errOut}, args)
	return cliResult{code: code, stdout: out.String(), stderr: errOut.String()}
}

// natsContext writes a nats CLI context file holding only an inbox prefix
// and returns its absolute path, for the esnats CLI's --context flag (which,
// like the nats CLI, takes the inbox prefix from the context). Passing a
// file also keeps the machine user's selected context out of the test.
func natsContext(t testing.TB, inboxPrefix string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctx.json")
	require.NoError(t, os.WriteFile(path, []byte(fmt.Sprintf(`{"inbox_prefix": %q}`, inboxPrefix)), 0o600))
	return path
}

var tokenRe = regexp.MustCompile(`\s+`)

// fields splits a line of CLI table output.
func fields(s string) []string { return tokenRe.Split(strings.TrimSpace(s), -1) }
