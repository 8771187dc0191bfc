package securitytest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/cli"
	"github.com/esnats/esnats/embedded"
	"github.com/esnats/esnats/stream"
)

// docTLSDir is where the TLS blocks of docs/security.md keep their files;
// the tests put their own files in a temporary directory instead.
const docTLSDir = "/etc/nats/tls/"

// pki is a certificate authority with a server certificate (for 127.0.0.1
// and localhost) and a client certificate, in PEM files.
type pki struct {
	dir                   string
	ca                    string // the CA certificate
	serverCert, serverKey string
	clientCert, clientKey string
	otherCA               string // a CA that signed nothing here
}

// newPKI generates the certificates (ECDSA P-256) in a temporary directory,
// with the file names docs/security.md uses.
func newPKI(t testing.TB) pki {
	t.Helper()
	dir := t.TempDir()
	p := pki{
		dir:        dir,
		ca:         filepath.Join(dir, "ca.pem"),
		serverCert: filepath.Join(dir, "server-cert.pem"),
		serverKey:  filepath.Join(dir, "server-key.pem"),
		clientCert: filepath.Join(dir, "client-cert.pem"),
		clientKey:  filepath.Join(dir, "client-key.pem"),
		otherCA:    filepath.Join(dir, "other-ca.pem"),
	}
	now := time.Now()
	serial := int64(1)
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return k
	}
	template := func(cn string) *x509.Certificate {
		serial++
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn, Organization: []string{"esnats tests"}},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
		}
	}
	writePEM := func(path, typ string, der []byte) {
		require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
	}
	newCA := func(cn, path string) (*x509.Certificate, *ecdsa.PrivateKey) {
		key := newKey()
		tmpl := template(cn)
		tmpl.IsCA = true
		tmpl.BasicConstraintsValid = true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		require.NoError(t, err)
		cert, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		writePEM(path, "CERTIFICATE", der)
		return cert, key
	}
	issue := func(ca *x509.Certificate, caKey *ecdsa.PrivateKey, tmpl *x509.Certificate, certPath, keyPath string) {
		key := newKey()
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		require.NoError(t, err)
		writePEM(certPath, "CERTIFICATE", der)
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		require.NoError(t, err)
		writePEM(keyPath, "PRIVATE KEY", kder)
	}
	ca, caKey := newCA("esnats test CA", p.ca)
	newCA("another CA", p.otherCA)

	srv := template("nats server")
	srv.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	srv.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	srv.DNSNames = []string{"localhost"}
	issue(ca, caKey, srv, p.serverCert, p.serverKey)

	clt := template("shop-app")
	clt.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	issue(ca, caKey, clt, p.clientCert, p.clientKey)
	return p
}

// tlsServer runs a server configured by one TLS file of docs/security.md,
// its certificate paths pointed at p.
func tlsServer(t testing.TB, p pki, file string) *embedded.Server {
	t.Helper()
	conf := confFile(t, file)
	require.Contains(t, conf, docTLSDir)
	srv := runServer(t, strings.ReplaceAll(conf, docTLSDir, p.dir+string(filepath.Separator)))
	require.True(t, strings.HasPrefix(srv.ClientURL(), "tls://"), srv.ClientURL())
	return srv
}

// useStore appends to and loads an aggregate on js.
func useStore(t testing.TB, js jetstream.JetStream) {
	t.Helper()
	ctx := context.Background()
	store, err := stream.NewStore(ctx, js, stream.Config{Name: storeName, Registry: registry()})
	require.NoError(t, err)
	agg := stream.Aggregate{Type: "cart", ID: "alice@example.com"}
	_, err = store.Append(ctx, agg, stream.ExpectAny(), []stream.EventData{{Data: ItemAdded{SKU: "apple", Quantity: 1}}, {Data: CheckedOut{Lines: 1}}})
	require.NoError(t, err)
	n := 0
	for ev, err := range store.Load(ctx, agg) {
		require.NoError(t, err)
		n++
		assert.Equal(t, uint64(n), ev.Version)
	}
	assert.GreaterOrEqual(t, n, 2)
}

// TestTLS: a server that requires TLS (tls.conf), used by the library and
// the esnats command with the CA, and refused without it.
func TestTLS(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	srv := tlsServer(t, p, "tls.conf")
	url := srv.ClientURL()

	t.Run("library", func(t *testing.T) {
		nc, err := nats.Connect(url, nats.RootCAs(p.ca))
		require.NoError(t, err)
		defer nc.Close()
		assert.True(t, nc.TLSRequired())
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		useStore(t, js)

		// A plain nats:// URL is upgraded to TLS: the CA is still needed.
		plain := strings.Replace(url, "tls://", "nats://", 1)
		nc2, err := nats.Connect(plain, nats.RootCAs(p.ca))
		require.NoError(t, err)
		nc2.Close()

		_, err = nats.Connect(url)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "x509: certificate signed by unknown authority")
		_, err = nats.Connect(url, nats.RootCAs(p.otherCA))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "x509: certificate signed by unknown authority")
	})

	t.Run("cli", func(t *testing.T) {
		ctxFile := natsContext(t, "_INBOX")
		r := runCLI(t, "--context", ctxFile, "-s", url, "--tlsca", p.ca, "stores")
		require.Equal(t, cli.ExitOK, r.code, r.stderr)
		assert.Contains(t, r.stdout, storeName)

		r = runCLI(t, "--context", ctxFile, "-s", url, "stores")
		assert.Equal(t, cli.ExitConnect, r.code)
		assert.Equal(t, "esnats: TLS with "+url+" (from --server) failed (check --tlscert, --tlskey, --tlsca): nats: tls error: tls: failed to verify certificate: x509: certificate signed by unknown authority\n", r.stderr)
	})
}

// TestMutualTLS: a server that also requires client certificates signed by
// its CA (mtls.conf, verify: true).
func TestMutualTLS(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	srv := tlsServer(t, p, "mtls.conf")
	url := srv.ClientURL()

	t.Run("library", func(t *testing.T) {
		nc, err := nats.Connect(url, nats.RootCAs(p.ca), nats.ClientCert(p.clientCert, p.clientKey))
		require.NoError(t, err)
		defer nc.Close()
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		useStore(t, js)

		// Without a client certificate the server ends the handshake;
		// TLS 1.3 may report it as the connection closing after it.
		_, err = nats.Connect(url, nats.RootCAs(p.ca))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "tls")
	})

	t.Run("cli", func(t *testing.T) {
		ctxFile := natsContext(t, "_INBOX")
		r := runCLI(t, "--context", ctxFile, "-s", url, "--tlsca", p.ca, "--tlscert", p.clientCert, "--tlskey", p.clientKey, "stores")
		require.Equal(t, cli.ExitOK, r.code, r.stderr)
		assert.Contains(t, r.stdout, storeName)

		r = runCLI(t, "--context", ctxFile, "-s", url, "--tlsca", p.ca, "stores")
		assert.Equal(t, cli.ExitConnect, r.code)
		assert.True(t, strings.HasPrefix(r.stderr, "esnats: TLS with "+url+" (from --server) failed (check --tlscert, --tlskey, --tlsca): "), r.stderr)

		r = runCLI(t, "--context", ctxFile, "-s", url, "--tlscert", p.clientCert, "--tlskey", p.clientKey, "stores")
		assert.Equal(t, cli.ExitConnect, r.code)
		assert.Contains(t, r.stderr, "TLS with "+url+" (from --server) failed")

		r = runCLI(t, "--context", ctxFile, "-s", url, "--tlsca", p.ca, "--tlscert", p.clientCert, "stores")
		assert.Equal(t, cli.ExitUsage, r.code)
		assert.Contains(t, r.stderr, "--tlscert and --tlskey go together")
	})
}
