package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/synadia-io/orbit.go/natscontext"

	"github.com/esnats/esnats/internal/natserr"
)

// connFlags are the connection flags, named as the nats CLI names them.
type connFlags struct {
	server, creds, nkey, user, password string
	tlsCert, tlsKey, tlsCA              string
	tlsFirst                            bool
	context, jsDomain, inboxPrefix      string
	timeout                             time.Duration

	// errs receives the connections' asynchronous errors (set by New).
	errs *asyncErrors
}

func (f *connFlags) flags(root *cobra.Command) {
	pf := root.PersistentFlags()
	pf.StringVarP(&f.server, "server", "s", "", "NATS server URLs, comma separated (default $NATS_URL, else the --context's, else nats://127.0.0.1:4222)")
	pf.StringVar(&f.creds, "creds", "", "user credentials file (JWT and NKey seed)")
	pf.StringVar(&f.nkey, "nkey", "", "user NKey seed file")
	pf.StringVar(&f.user, "user", "", "user name or token")
	pf.StringVar(&f.password, "password", "", "password")
	pf.StringVar(&f.tlsCert, "tlscert", "", "TLS client certificate file")
	pf.StringVar(&f.tlsKey, "tlskey", "", "TLS client private key file")
	pf.StringVar(&f.tlsCA, "tlsca", "", "TLS certificate authority file")
	pf.BoolVar(&f.tlsFirst, "tlsfirst", false, "perform the TLS handshake before the NATS INFO")
	pf.StringVar(&f.context, "context", "", "nats CLI context to use (default: the nats CLI's selected context, if any)")
	pf.StringVar(&f.jsDomain, "js-domain", "", "JetStream domain")
	pf.StringVar(&f.inboxPrefix, "inbox-prefix", "", "prefix of the reply inboxes (default: the context's inbox_prefix, else _INBOX), for users whose permissions allow only their own")
	pf.DurationVar(&f.timeout, "timeout", 5*time.Second, "time to wait for the server on each request")
}

// urls returns the servers to connect to and where they came from.
func (f *connFlags) urls() (string, string) {
	if f.server != "" {
		return f.server, "--server"
	}
	if u := os.Getenv("NATS_URL"); u != "" {
		return u, "NATS_URL"
	}
	return "", ""
}

// connection is an open connection with its JetStream context.
type connection struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	url     string
	api     string        // the JetStream API prefix: "$JS.API." or "$JS.<domain>.API."
	inbox   string        // the reply inboxes' prefix, with its final dot: "_INBOX."
	timeout time.Duration // --timeout
	errs    *asyncErrors
}

func (c *connection) Close() {
	if c != nil && c.nc != nil {
		c.nc.Close()
	}
}

// connect opens a connection as the flags say: a nats CLI context (named,
// or the selected one) gives defaults that explicit flags and NATS_URL
// override. Failures come back with ExitConnect and a message saying where
// it tried and what to do.
func (f *connFlags) connect(ctx context.Context, name string, follow bool) (*connection, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.Timeout(f.timeout),
		nats.ErrorHandler(f.errs.handler),
	}
	if follow {
		opts = append(opts, nats.MaxReconnects(-1))
	} else {
		opts = append(opts, nats.NoReconnect())
	}
	switch {
	case f.creds != "":
		opts = append(opts, nats.UserCredentials(f.creds))
	case f.nkey != "":
		o, err := nats.NkeyOptionFromSeed(f.nkey)
		if err != nil {
			return nil, withCode(ExitConnect, fmt.Errorf("reading --nkey %s: %w", f.nkey, err))
		}
		opts = append(opts, o)
	}
	if f.user != "" {
		if f.password == "" {
			opts = append(opts, nats.Token(f.user))
		} else {
			opts = append(opts, nats.UserInfo(f.user, f.password))
		}
	}
	if f.tlsCert != "" || f.tlsKey != "" {
		if f.tlsCert == "" || f.tlsKey == "" {
			return nil, usagef("--tlscert and --tlskey go together")
		}
		opts = append(opts, nats.ClientCert(f.tlsCert, f.tlsKey))
	}
	if f.tlsCA != "" {
		opts = append(opts, nats.RootCAs(f.tlsCA))
	}
	if f.tlsFirst {
		opts = append(opts, nats.TLSHandshakeFirst())
	}
	if f.inboxPrefix != "" {
		p := f.inboxPrefix
		if strings.ContainsAny(p, "*> \t") || strings.HasPrefix(p, ".") || strings.HasSuffix(p, ".") || strings.Contains(p, "..") {
			return nil, usagef("--inbox-prefix %q: want subject tokens without wildcards or a final dot (for example _INBOX_shop_ops)", p)
		}
		// After the context's options: it overrides the context's inbox_prefix.
		opts = append(opts, nats.CustomInboxPrefix(p))
	}
	urls, from := f.urls()
	if urls != "" {
		servers := strings.Split(urls, ",")
		for i := range servers {
			servers[i] = strings.TrimSpace(servers[i])
		}
		opts = append(opts, func(o *nats.Options) error {
			o.Servers = servers
			o.Url = ""
			return nil
		})
	}

	nc, settings, err := natscontext.Connect(f.context, opts...)
	if err != nil {
		return nil, f.connectError(err, urls, from)
	}
	domain := f.jsDomain
	if domain == "" {
		domain = settings.JSDomain
	}
	return withJetStream(ctx, nc, domain, f.timeout, f.errs)
}

// withJetStream checks that JetStream answers on nc (in domain, if set) and
// returns the connection; on error nc is closed. errs is nc's error
// handler's.
func withJetStream(ctx context.Context, nc *nats.Conn, domain string, timeout time.Duration, errs *asyncErrors) (*connection, error) {
	var (
		js  jetstream.JetStream
		err error
	)
	jsOpts := []jetstream.JetStreamOpt{jetstream.WithDefaultTimeout(timeout)}
	if domain != "" {
		js, err = jetstream.NewWithDomain(nc, domain, jsOpts...)
	} else {
		js, err = jetstream.New(nc, jsOpts...)
	}
	if err != nil {
		nc.Close()
		return nil, withCode(ExitConnect, err)
	}
	c := &connection{nc: nc, js: js, url: nc.ConnectedUrlRedacted(), api: "$JS.API.", timeout: timeout, errs: errs}
	if domain != "" {
		c.api = "$JS." + domain + ".API."
	}
	if in := nc.NewInbox(); strings.LastIndexByte(in, '.') > 0 {
		c.inbox = in[:strings.LastIndexByte(in, '.')+1]
	}
	// One round trip tells whether JetStream is there, before a command
	// misreads its absence as "not found".
	err = c.do(ctx, call{subjects: []string{c.api + "INFO"}, why: "every esnats command asks for the account's JetStream information first"}, func(ctx context.Context) error {
		_, err := js.AccountInfo(ctx)
		return err
	})
	if err != nil {
		c.Close()
		var re *refusedError
		switch {
		case errors.As(err, &re) && re.v.Op == natserr.Subscribe:
			return nil, withCode(ExitConnect, explain(re, "connected to %s, but the server refuses this user a subscription to its reply inbox %q (permission denied), so no answer can reach it: pass the inbox prefix its permissions allow with --inbox-prefix (or inbox_prefix in the nats context)", c.url, re.v.Subject))
		case re != nil:
			return nil, withCode(ExitConnect, fmt.Errorf("connected to %s, but JetStream did not answer: %w", c.url, err))
		}
		switch {
		case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount), errors.Is(err, nats.ErrNoResponders):
			return nil, withCode(ExitConnect, fmt.Errorf("connected to %s, but JetStream is not enabled there for this account (%v); esnats needs a server run with JetStream (nats-server -js, or %s)", c.url, err, "esnats dev"))
		default:
			return nil, withCode(ExitConnect, fmt.Errorf("connected to %s, but JetStream did not answer: %w", c.url, err))
		}
	}
	return c, nil
}

// connectError explains a failed connection.
func (f *connFlags) connectError(err error, urls, from string) error {
	where := urls
	switch {
	case where != "":
		where += " (from " + from + ")"
	case f.context != "":
		where = "the URL of nats context " + f.context
	case selectedContext() != "":
		where = "the URL of nats context " + selectedContext() + " (selected with nats context select)"
	default:
		where = nats.DefaultURL + " (the default; set -s, NATS_URL or --context)"
	}
	if f.context != "" && strings.Contains(err.Error(), "context") && !strings.Contains(err.Error(), "deadline") {
		return withCode(ExitConnect, fmt.Errorf("nats context %q: %w (list them with: nats context ls)", f.context, err))
	}
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked),
		strings.Contains(strings.ToLower(err.Error()), "authorization violation"), strings.Contains(strings.ToLower(err.Error()), "authentication"):
		return withCode(ExitConnect, fmt.Errorf("the server at %s refused the credentials (check --user/--password, --creds, --nkey or the context): %w", where, err))
	case errors.Is(err, nats.ErrNoServers), errors.Is(err, nats.ErrTimeout):
		return withCode(ExitConnect, fmt.Errorf("no NATS server answered at %s: %w\nstart one for development with: esnats dev", where, err))
	case strings.Contains(err.Error(), "tls") || strings.Contains(err.Error(), "x509") || errors.Is(err, nats.ErrSecureConnRequired) || errors.Is(err, nats.ErrSecureConnWanted):
		return withCode(ExitConnect, fmt.Errorf("TLS with %s failed (check --tlscert, --tlskey, --tlsca): %w", where, err))
	default:
		return withCode(ExitConnect, fmt.Errorf("cannot connect to %s: %w", where, err))
	}
}

// selectedContext returns the name of the nats CLI's selected context, ""
// if none: the file the nats CLI keeps it in, as natscontext reads it.
func selectedContext() string {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		dir = filepath.Join(home, ".config")
	}
	b, err := os.ReadFile(filepath.Join(dir, "nats", "context.txt"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
