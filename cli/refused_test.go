package cli

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"

	"github.com/esnats/esnats/internal/natserr"
)

// The error handler prints each distinct error once per run, with the
// subscription's subject when there is one, holds those a request claims
// (printing them only if the request does not report them), and prints
// nothing once the run is over.
func TestAsyncErrorsOncePerRun(t *testing.T) {
	var buf bytes.Buffer
	e := newAsyncErrors("esnats", &syncWriter{w: &buf})
	slow := nats.ErrSlowConsumer
	sub := &nats.Subscription{Subject: "shop.>"}
	for range 3 {
		e.handler(nil, sub, slow)
	}
	e.handler(nil, nil, errors.New("something else"))
	refused := func(subject string) error {
		return fmt.Errorf("%w: Permissions Violation for Publish to %q", nats.ErrPermissionViolation, subject)
	}
	e.handler(nil, nil, refused("a.b"))
	e.handler(nil, nil, refused("a.b"))

	c1 := e.claim(func(v natserr.Violation) bool { return v.Subject == "c.d" })
	c2 := e.claim(func(v natserr.Violation) bool { return v.Subject == "e.f" })
	e.handler(nil, nil, refused("c.d"))
	e.handler(nil, nil, refused("e.f"))
	e.handler(nil, nil, refused("c.d"))
	v, ok := e.violation(c1)
	assert.True(t, ok)
	assert.Equal(t, "c.d", v.Subject)
	assert.Equal(t, "c.d", (<-c1.hit).Subject)
	e.release(c1, true)  // reported by the request: not printed
	e.release(c2, false) // not reported: printed now
	e.close()
	e.handler(nil, nil, errors.New("nats: too late"))

	assert.Equal(t, `esnats: nats: slow consumer, messages dropped (subscription on "shop.>")
esnats: nats: something else
esnats: nats: permissions violation: Permissions Violation for Publish to "a.b"
esnats: nats: permissions violation: Permissions Violation for Publish to "e.f"
`, buf.String())
}
