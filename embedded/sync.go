package embedded

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// SyncPolicy says when the JetStream file store fsyncs written data to disk.
//
// The zero value is [SyncAlways]: every write is synced before it is
// acknowledged, so an acknowledged publish survives a power loss or a kernel
// crash. Use [SyncEvery] or [SyncServerDefault] to trade that durability for
// throughput (benchmarks, throw-away dev data).
//
// A SyncPolicy is a plain comparable value and safe to copy and share.
type SyncPolicy int64

const (
	// SyncAlways fsyncs every write before it is acknowledged (nats-server
	// option SyncAlways, config "sync_interval: always"). It is the zero
	// value and the default: Jepsen showed that the server's default
	// background sync (every 2 minutes) can lose writes the client was told
	// were stored when several nodes lose power together.
	SyncAlways SyncPolicy = 0

	// SyncServerDefault keeps nats-server's own default: writes are synced in
	// the background every 2 minutes. Fast, but acknowledged writes of the
	// last interval can be lost on a crash of the machine (not of the process).
	SyncServerDefault SyncPolicy = -1
)

// SyncEvery returns a policy that fsyncs in the background every d
// (nats-server option SyncInterval). A d of zero or less returns [SyncAlways].
func SyncEvery(d time.Duration) SyncPolicy {
	if d <= 0 {
		return SyncAlways
	}
	return SyncPolicy(d)
}

// Interval returns the background sync interval of the policy: 0 for
// [SyncAlways] (every write is synced), the server default (2m) for
// [SyncServerDefault], and d for SyncEvery(d).
func (p SyncPolicy) Interval() time.Duration {
	switch {
	case p == SyncAlways:
		return 0
	case p < 0:
		return serverDefaultSyncInterval
	default:
		return time.Duration(p)
	}
}

// String returns "always", "server-default" or "every <d>".
func (p SyncPolicy) String() string {
	switch {
	case p == SyncAlways:
		return "always"
	case p < 0:
		return "server-default"
	default:
		return fmt.Sprintf("every %s", time.Duration(p))
	}
}

// serverDefaultSyncInterval mirrors defaultSyncInterval in nats-server's
// filestore.go (unexported there).
const serverDefaultSyncInterval = 2 * time.Minute

// apply sets the nats-server fields SyncAlways and SyncInterval.
func (p SyncPolicy) apply(o *server.Options) {
	switch {
	case p == SyncAlways:
		// Same as the config file's "sync_interval: always": SyncAlways plus
		// the default background interval.
		o.SyncAlways = true
		o.SyncInterval = serverDefaultSyncInterval
	case p < 0:
		o.SyncAlways = false
		o.SyncInterval = 0 // the server fills in its default
	default:
		o.SyncAlways = false
		o.SyncInterval = time.Duration(p)
	}
}
