package soak

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/esnats/esnats/aggregate"
	"github.com/esnats/esnats/stream"
)

// AggregateType is the aggregate type of every aggregate the workload
// writes: a Counter.
const AggregateType = "counter"

// EventType is the registered name of Added, the only event type of the
// workload.
const EventType = "added"

// Added is the workload's only event: an amount added to a Counter. Besides
// the amount it records who wrote it and what the writer saw when it
// decided, so that a checker reading the store can tell whether the event
// was stored exactly as the writer was told, and whether the writer decided
// on up-to-date state:
//
//   - Attempt and Part identify the event across the store (its Key): the
//     attempt is one try of an append (a repository command runs one attempt
//     per concurrency conflict), Part its index among the attempt's events.
//   - Version is the aggregate version the writer expected the event to
//     get, Before the Counter's Total the writer saw before applying it.
//     Both must match the stored history: an append accepted on stale state
//     (a lost update) breaks them.
type Added struct {
	Attempt string `json:"attempt"`
	Part    int    `json:"part"`
	Version uint64 `json:"version"`
	Before  int64  `json:"before"`
	Amount  int64  `json:"amount"`
}

// Key returns the event's identity in the ledger: "<attempt>#<part>". Raw
// appends also use it as the event id (Nats-Msg-Id).
func (e Added) Key() string { return EventKey(e.Attempt, e.Part) }

// EventKey returns the key of part of attempt (see Added.Key).
func EventKey(attempt string, part int) string {
	return attempt + "#" + strconv.Itoa(part)
}

// NewRegistry returns a registry holding the workload's event type, Added.
func NewRegistry() *stream.Registry {
	reg := stream.NewRegistry()
	stream.MustRegister[Added](reg, EventType)
	return reg
}

// Counter is the workload's aggregate: the sum of the amounts added to it
// and the number of events applied. Events always equals the aggregate's
// version; a load that breaks this (a snapshot inconsistent with its
// version) is reported by the checker.
type Counter struct {
	aggregate.Root
	Total  int64  `json:"total"`
	Events uint64 `json:"events"`
}

// NewCounter returns an empty Counter: the aggregate.Config New function.
func NewCounter(string) *Counter { return &Counter{} }

// Apply applies an Added event.
func (c *Counter) Apply(e any) {
	if a, ok := e.(Added); ok {
		c.Total += a.Amount
		c.Events++
	}
}

// Add is the workload's command: it records one Added event per amount,
// each with the version it expects and the total before it, and returns the
// events' keys. attempt must be unique per call (see Added).
func (c *Counter) Add(attempt string, firstPart int, amounts []int64) []string {
	keys := make([]string, 0, len(amounts))
	for i, amt := range amounts {
		ev := Added{Attempt: attempt, Part: firstPart + i, Version: c.Version() + 1, Before: c.Total, Amount: amt}
		c.Record(ev)
		keys = append(keys, ev.Key())
	}
	return keys
}

// CounterID returns the id of counter i of a class ("hot" or "cold").
func CounterID(class string, i int) string { return fmt.Sprintf("%s-%05d", class, i) }

// Ref returns the stream.Aggregate of the counter with id.
func Ref(id string) stream.Aggregate { return stream.Aggregate{Type: AggregateType, ID: id} }

// AggregateTally is what the read models (and the checker's replay) know
// about one counter.
type AggregateTally struct {
	Events  uint64 // events applied
	Total   int64  // sum of their amounts
	Version uint64 // version of the last one
	LastSeq uint64 // stream sequence of the last one
}

// Tally is a read model's (or a replay's) content: counter id -> tally.
type Tally map[string]AggregateTally

// add applies one stored event to t.
func (t Tally) add(ev *stream.Event, amount int64) {
	a := t[ev.Aggregate.ID]
	a.Events++
	a.Total += amount
	a.Version = ev.Version
	a.LastSeq = ev.Sequence
	t[ev.Aggregate.ID] = a
}

// encode returns the text form of a tally kept in a KV read model:
// "events total version lastseq".
func (a AggregateTally) encode() []byte {
	return fmt.Appendf(nil, "%d %d %d %d", a.Events, a.Total, a.Version, a.LastSeq)
}

// decodeTally parses encode's form.
func decodeTally(b []byte) (AggregateTally, error) {
	var a AggregateTally
	f := strings.Fields(string(b))
	if len(f) != 4 {
		return a, fmt.Errorf("soak: tally %q: want 4 fields", b)
	}
	var err error
	parse := func(s string) uint64 {
		v, perr := strconv.ParseUint(s, 10, 64)
		if perr != nil && err == nil {
			err = fmt.Errorf("soak: tally %q: %w", b, perr)
		}
		return v
	}
	a.Events = parse(f[0])
	total, terr := strconv.ParseInt(f[1], 10, 64)
	if terr != nil {
		return a, fmt.Errorf("soak: tally %q: %w", b, terr)
	}
	a.Total = total
	a.Version = parse(f[2])
	a.LastSeq = parse(f[3])
	return a, err
}

// Diff returns the differences between want (a replay of the store) and
// got (a read model), one line per counter that differs, sorted by id.
func Diff(want, got Tally) []string {
	var out []string
	ids := make(map[string]bool, len(want))
	for id := range want {
		ids[id] = true
	}
	for id := range got {
		ids[id] = true
	}
	for _, id := range sortedKeys(ids) {
		w, wok := want[id]
		g, gok := got[id]
		switch {
		case wok && !gok:
			out = append(out, fmt.Sprintf("%s: missing from the read model (store: %+v)", id, w))
		case !wok && gok:
			out = append(out, fmt.Sprintf("%s: in the read model but not in the store (%+v)", id, g))
		case w != g:
			out = append(out, fmt.Sprintf("%s: read model %+v, store %+v", id, g, w))
		}
	}
	return out
}
