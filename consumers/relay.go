package consumers

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/stream"
)

// RelayConfig configures a Relay. Consumer.Name, Target and Transform are
// required.
type RelayConfig struct {
	// Consumer is the durable consumer that reads the store (its name,
	// filters, batch size, retries, failure policy, fail-over).
	Consumer Config
	// Target is where the integration events are published: a JetStream
	// context on the connection of the receiving side (another account, or
	// another cluster), whose stream listens on the subjects Transform
	// uses. Its duplicate window must outlast a relay outage for the
	// no-duplicates guarantee (see Relay).
	Target jetstream.JetStream
	// Transform turns one private domain event into zero or more public
	// integration messages (subject, data, headers). It must be
	// deterministic: after a crash the same event is transformed again and
	// must give the same messages. Returning an error applies the failure
	// policy (retry, then park or stop). A message without a traceparent
	// header gets the event's (its W3C trace context), so that traces go on
	// on the receiving side.
	Transform func(ev *stream.Event) ([]*nats.Msg, error)
}

// HeaderRelaySource names the source of a relayed message:
// "<store>:<sequence>"; its Nats-Msg-Id is "<relay>:<store>:<sequence>:<n>".
const HeaderRelaySource = "Esnats-Relay-Source"

// Relay turns a store's private domain events into public integration
// events published to another stream. It runs on a durable consumer (so a
// restarted relay resumes where it stopped), publishes each batch's messages
// and waits for the target's acknowledgements before acknowledging the
// batch, and gives every message a deterministic Nats-Msg-Id derived from the
// source position: when a crash makes it publish a batch again, the target
// stream drops the copies (within its duplicate window, 2 minutes by
// default). Nothing is lost (at-least-once delivery from the source) and
// nothing is duplicated on the target.
type Relay struct {
	cons   *Consumer
	cfg    RelayConfig
	source string
}

// NewRelay validates cfg and returns a relay of store's events.
func NewRelay(js jetstream.JetStream, store *stream.Store, cfg RelayConfig) (*Relay, error) {
	if cfg.Target == nil || cfg.Transform == nil {
		return nil, errors.New("consumers: RelayConfig.Target and Transform are required")
	}
	cons, err := New(js, store, cfg.Consumer)
	if err != nil {
		return nil, err
	}
	r := &Relay{cons: cons, cfg: cfg, source: store.Name()}
	cons.HandleBatch(r.relay)
	return r, nil
}

// Run relays events until ctx ends (see Consumer.Run).
func (r *Relay) Run(ctx context.Context) error { return r.cons.Run(ctx) }

// Status reports the relay's consumer (position, lag, parked events).
func (r *Relay) Status(ctx context.Context) (Status, error) { return r.cons.Status(ctx) }

// relay publishes a batch's messages asynchronously and waits for all of
// their acknowledgements.
func (r *Relay) relay(ctx context.Context, evs []*stream.Event) error {
	futures := make([]jetstream.PubAckFuture, 0, len(evs))
	for _, ev := range evs {
		msgs, err := r.cfg.Transform(ev)
		if err != nil {
			return &stream.Error{Op: "relay transform", Subject: ev.Subject, Sequence: ev.Sequence, Err: err}
		}
		src := r.source + ":" + strconv.FormatUint(ev.Sequence, 10)
		for i, m := range msgs {
			if m.Header == nil {
				m.Header = nats.Header{}
			}
			m.Header.Set(jetstream.MsgIDHeader, r.cons.Name()+":"+src+":"+strconv.Itoa(i))
			m.Header.Set(HeaderRelaySource, src)
			if ev.TraceParent != "" && m.Header.Get(stream.HeaderTraceParent) == "" {
				// The trace goes on across the relay: the receiving side's
				// spans link to the command that wrote the event.
				m.Header.Set(stream.HeaderTraceParent, ev.TraceParent)
				if ev.TraceState != "" {
					m.Header.Set(stream.HeaderTraceState, ev.TraceState)
				}
			}
			f, err := r.cfg.Target.PublishMsgAsync(m)
			if err != nil {
				return &stream.Error{Op: "relay publish", Subject: ev.Subject, Sequence: ev.Sequence, Err: err}
			}
			futures = append(futures, f)
		}
	}
	timeout := time.NewTimer(r.cfg.Target.Options().DefaultTimeout)
	defer timeout.Stop()
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("consumers: relay to %s: %w", f.Msg().Subject, err)
		case <-timeout.C:
			return fmt.Errorf("consumers: relay to %s: %w", f.Msg().Subject, nats.ErrTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
