package stream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esnats/esnats/embedded"
)

func TestServerAtLeast(t *testing.T) {
	cases := []struct {
		have string
		ok   bool
	}{
		{"2.12.0", true}, {"2.15.2", true}, {"v2.12.1", true}, {"3.0.0", true},
		{"2.11.9", false}, {"2.10.22", false}, {"1.4.0", false}, {"2.12.0-beta.1", true},
	}
	for _, c := range cases {
		if got := serverAtLeast(c.have, MinServerVersion); got != c.ok {
			t.Errorf("serverAtLeast(%q) = %v, want %v", c.have, got, c.ok)
		}
	}
}

// classify sorts each publish error by what it says about the outcome:
// the resend decisions of send and of group commit rest on it.
func TestClassifyPublishErrors(t *testing.T) {
	api := func(code int, errCode jetstream.ErrorCode) error {
		return fmt.Errorf("nats: %w", &jetstream.APIError{Code: code, ErrorCode: errCode})
	}
	for _, c := range []struct {
		name string
		err  error
		want errClass
	}{
		{"wrong last sequence", api(400, jetstream.JSErrCodeStreamWrongLastSequence), classConflict},
		{"batch duplicate id", api(400, codeBatchDuplicateID), classConflict},
		{"message too large", api(400, jetstream.JSErrCodeStreamMessageExceedsMaximum), classTooLarge},
		{"stream not found", api(404, jetstream.JSErrCodeStreamNotFound), classNoStream},
		{"batch incomplete: nothing stored", api(400, codeBatchIncomplete), classUnavailable},
		{"too many batches in flight", api(429, 10210), classUnavailable},
		{"no leader", api(503, 0), classUnavailable},
		{"duplicate in process", api(400, codeDuplicateInProcess), classAmbiguous},
		{"no responders", nats.ErrNoResponders, classUnavailable},
		{"no stream response", jetstream.ErrNoStreamResponse, classUnavailable},
		{"timeout", context.DeadlineExceeded, classAmbiguous},
		{"connection closed", nats.ErrConnectionClosed, classAmbiguous},
		{"max payload", nats.ErrMaxPayload, classTooLarge},
		{"other API error", api(400, 10052), classOther},
	} {
		assert.Equal(t, c.want, classify(c.err), c.name)
	}
}

// The leader watch subscribes once per connection and stream, sees each of
// the stream's elections, and forgets closed connections.
func TestFollowLeader(t *testing.T) {
	srv := embedded.RunServer(t)
	nc := embedded.MustConnect(t, srv)
	a := followLeader(nc, "orders")
	require.NotNil(t, a)
	require.Same(t, a, followLeader(nc, "orders"), "one subscription per connection and stream")
	b := followLeader(nc, "carts")
	require.NotSame(t, a, b)
	bNext := b.next()
	for election := 1; election <= 2; election++ {
		aNext := a.next()
		require.NoError(t, nc.Publish(leaderElectedPrefix+"orders", nil))
		select {
		case <-aNext:
		case <-time.After(5 * time.Second):
			t.Fatalf("election %d not seen", election)
		}
		require.NotEqual(t, aNext, a.next(), "a new channel for the next election")
	}
	select {
	case <-bNext:
		t.Fatal("another stream's elections count")
	default:
	}
	require.Nil(t, (*leaderEpoch)(nil).next())

	nc.Close()
	other := embedded.MustConnect(t, srv)
	require.NotNil(t, followLeader(other, "orders"))
	leadersMu.Lock()
	_, kept := leaders[nc]
	leadersMu.Unlock()
	require.False(t, kept, "a closed connection's entry is dropped")
}
