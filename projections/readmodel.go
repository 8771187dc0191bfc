package projections

import (
	"context"

	"github.com/esnats/esnats/stream"
)

// ReadModel receives a projection's events, in stream order, in batches.
//
// In ack-floor mode (a ReadModel that is not Checkpointed) the consumer's
// acknowledgement floor is the projection's position: after a crash the
// events since the last acknowledged batch are delivered again, so Apply
// must be idempotent (setting values, not adding to them).
type ReadModel interface {
	// Apply applies events to the read model. An error makes the runner
	// retry the batch (and, per the failure policy, park the failing event
	// or stop); nothing of a failed batch may remain applied unless Apply
	// is idempotent.
	Apply(ctx context.Context, events []*stream.Event) error
}

// Checkpointed read models keep their position with their data: Apply
// stores the effects of a batch and the sequence of its last event in one
// transaction, and the runner skips events at or below Checkpoint. The
// effect is exactly-once, even when the consumer delivers an event again.
type Checkpointed interface {
	ReadModel
	// Checkpoint returns the stream sequence of the last applied event, 0
	// if none.
	Checkpoint(ctx context.Context) (uint64, error)
}

// Resetter read models can drop everything they hold, checkpoint included,
// for a rebuild or a reset in place.
type Resetter interface {
	Reset(ctx context.Context) error
}
