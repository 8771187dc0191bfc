package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/examples/service/app"
)

// client sends requests to the services as any NATS client would.
type client struct {
	t       *testing.T
	nc      *nats.Conn
	timeout time.Duration // per request
}

func newClient(t *testing.T, nc *nats.Conn) *client {
	return &client{t: t, nc: nc, timeout: 15 * time.Second}
}

// reply is what came back: the body, and for an error reply its code and
// description (from the micro service headers).
type reply struct {
	data []byte
	code int
	desc string
}

// call sends req (a string is sent as is, anything else as JSON) to
// subject and returns the reply; any failure to get one fails the test.
func (c *client) call(subject string, req any) reply {
	c.t.Helper()
	r, err := c.try(subject, req)
	require.NoError(c.t, err)
	return r
}

// try is call without failing the test: for use in conditions that are
// polled. A request that no service could receive (no responders: the
// service is starting, or reconnecting after its node stopped) is sent
// again, for up to 20s; any other failure is returned, since a command
// may then have run.
func (c *client) try(subject string, req any) (reply, error) {
	var data []byte
	switch r := req.(type) {
	case string:
		data = []byte(r)
	default:
		var err error
		if data, err = json.Marshal(req); err != nil {
			return reply{}, err
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		msg, err := c.nc.Request(subject, data, c.timeout)
		if errors.Is(err, nats.ErrNoResponders) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if err != nil {
			return reply{}, fmt.Errorf("request to %s %s: %w", subject, data, err)
		}
		r := reply{data: msg.Data}
		if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
			if r.code, err = strconv.Atoi(code); err != nil {
				return reply{}, fmt.Errorf("error code header %q: %w", code, err)
			}
			r.desc = msg.Header.Get(micro.ErrorHeader)
		}
		return r, nil
	}
}

// ok sends req to subject, requires a successful reply and decodes it.
func ok[T any](c *client, subject string, req any) T {
	c.t.Helper()
	r := c.call(subject, req)
	require.Zero(c.t, r.code, "%s %v: error reply %d: %s", subject, req, r.code, r.desc)
	var out T
	require.NoError(c.t, json.Unmarshal(r.data, &out), "reply %s", r.data)
	return out
}

// fails sends req to subject and requires an error reply with code whose
// description contains each of msgs; the body must say the same.
func (c *client) fails(subject string, req any, code int, msgs ...string) {
	c.t.Helper()
	r := c.call(subject, req)
	require.Equal(c.t, code, r.code, "%s %v: reply %s", subject, req, r.data)
	for _, m := range msgs {
		assert.Contains(c.t, r.desc, m, "%s %v", subject, req)
	}
	var body app.ErrorBody
	require.NoError(c.t, json.Unmarshal(r.data, &body), "error body %s", r.data)
	assert.Equal(c.t, code, body.Code)
	assert.Equal(c.t, r.desc, body.Error)
}

// running runs fn (Serve or RunWorker) in a goroutine until the test ends,
// then stops it and requires that it returned nil.
func running(t *testing.T, name string, fn func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err, "%s returned", name)
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not return within 30s of its context's end", name)
		}
	})
}

// serve runs Serve and RunWorker on their own connections from connect,
// and returns these connections.
func serve(t *testing.T, connect func() (*nats.Conn, jetstream.JetStream), cfg app.Config) (api, worker *nats.Conn) {
	t.Helper()
	anc, ajs := connect()
	running(t, "Serve", func(ctx context.Context) error { return app.Serve(ctx, anc, ajs, cfg) })
	wnc, wjs := connect()
	running(t, "RunWorker", func(ctx context.Context) error { return app.RunWorker(ctx, wjs, cfg) })
	return anc, wnc
}

// poll calls check every 20ms until it returns true or within has passed;
// then the test fails with what check last said.
func (c *client) poll(within time.Duration, what string, check func() (bool, string)) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		done, status := check()
		if done {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("after %s: %s; last: %s", within, what, status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// summaryAt waits until the read model shows cart at version (or later)
// and returns it.
func (c *client) summaryAt(cart string, version uint64, within time.Duration) app.Summary {
	c.t.Helper()
	var s app.Summary
	c.poll(within, fmt.Sprintf("the read model shows cart %s at version %d", cart, version), func() (bool, string) {
		r, err := c.try("cart.summary", app.CartRef{Cart: cart})
		if err != nil {
			return false, err.Error()
		}
		if r.code != 0 {
			return false, fmt.Sprintf("error %d %s", r.code, r.desc)
		}
		s = app.Summary{}
		if err := json.Unmarshal(r.data, &s); err != nil {
			return false, err.Error()
		}
		return s.Version >= version, string(r.data)
	})
	return s
}

// salesAt waits until the read model has applied the events up to
// position and returns the sales.
func (c *client) salesAt(position uint64, within time.Duration) app.Sales {
	c.t.Helper()
	var s app.Sales
	c.poll(within, fmt.Sprintf("the read model reaches position %d", position), func() (bool, string) {
		r, err := c.try("cart.sales", ``)
		if err != nil {
			return false, err.Error()
		}
		if r.code != 0 {
			return false, fmt.Sprintf("error %d %s", r.code, r.desc)
		}
		s = app.Sales{}
		if err := json.Unmarshal(r.data, &s); err != nil {
			return false, err.Error()
		}
		return s.Position >= position, string(r.data)
	})
	return s
}

// waitForService pings the micro service name (a request that is safe to
// repeat) until an instance answers.
func (c *client) waitForService(name string, within time.Duration) {
	c.t.Helper()
	subject, err := micro.ControlSubject(micro.PingVerb, name, "")
	require.NoError(c.t, err)
	c.poll(within, "service "+name+" answers a ping", func() (bool, string) {
		_, err := c.nc.Request(subject, nil, 500*time.Millisecond)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}
