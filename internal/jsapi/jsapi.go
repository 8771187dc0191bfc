// Package jsapi holds plumbing shared by esnats packages for JetStream API
// calls.
package jsapi

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
)

// MaxAttempts bounds how many timed-out attempts Retry makes: an API
// request that is never answered (a missing permission looks the same as
// a lost reply) must not hold a caller without a deadline for ever.
const MaxAttempts = 5

// Retry runs call with a per-attempt timeout of attempt (the JetStream
// context's DefaultTimeout, 5s when zero) and runs it again while the
// attempt timed out, ctx is still alive and fewer than MaxAttempts were
// made. It returns call's last error.
//
// Only idempotent JetStream API requests may be retried: stream and bucket
// create-or-update with the same configuration, info lookups. A request the
// server accepted but whose reply was lost (a meta leader that changed in
// between, a reply dropped under load) would otherwise hold the caller until
// its own deadline, which for a setup call is often long or absent.
func Retry(ctx context.Context, attempt time.Duration, call func(ctx context.Context) error) error {
	if attempt <= 0 {
		attempt = 5 * time.Second
	}
	backoff := 50 * time.Millisecond
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, attempt)
		err := call(actx)
		timedOut := actx.Err() != nil
		cancel()
		if err == nil || ctx.Err() != nil || !timedOut || !isTimeout(err) || n >= MaxAttempts {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)
}
