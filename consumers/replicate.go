package consumers

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esnats/esnats/stream"
)

// ErrReplicaConfig reports a ReplicaConfig that does not validate, or an
// existing stream that CreateReplica cannot turn into the replica asked for
// without copying events twice or dropping them (see CreateReplica).
// Validation errors about a name also match stream.ErrInvalidName.
var ErrReplicaConfig = errors.New("esnats: invalid replica configuration")

// ReplicaConfig describes a replica: a JetStream stream that the NATS server
// itself fills with a copy of an event store's events, as a stream source or a
// mirror, in the same account, in another account or in another JetStream
// domain. No client process runs: the server that hosts the replica creates
// and re-creates the copying consumer on the store, resumes where it stopped
// after restarts and leader changes, and reports lag and errors in the
// replica's stream info (Sources or Mirror).
//
// A source (the default) renumbers: the replica has its own sequences, and
// copies the events with their headers (Nats-Msg-Id, Esnats-Type,
// Esnats-Version, ...; the server drops the Nats-Expected-* headers and adds
// Nats-Stream-Source), so the replica drops an event id it already holds
// within its Duplicates window. With a SubjectPrefix the replica is an esnats
// store of its own: stream.OpenStore(ctx, js, stream.Config{Name: Name,
// Subject: SubjectPrefix, Registry: reg}) loads and reads the copied
// aggregates with their ids, versions and times, positions being the
// replica's sequences.
//
// A mirror (Mirror: true) is a read-only exact copy that keeps the store's
// sequences (filtered-out events leave gaps), so positions are comparable
// with the store's. The server forbids subjects and atomic publish on a
// mirror, so stream.OpenStore refuses it: read a mirror with a JetStream
// consumer, direct gets or the nats CLI. In the store's own account and
// domain the server also makes a mirror answer the store's direct gets
// (MirrorDirect: a read replica, possibly a little behind, which esnats
// loads tolerate); a filtered or renamed mirror would then answer loads of
// the store with missing events, so Validate accepts a same-account mirror
// only of the whole store under the same subjects.
//
// Filtering: AggregateTypes selects aggregate types on the server (subject
// filters <prefix>.<type>.*). The engine cannot filter by event type in this
// wire format, because the event type is the Esnats-Type header and not a
// subject token (docs/wire-format.md says why); nor can it rewrite payloads.
// To replicate selected event types, or to turn private domain events into
// public integration events, use a consumer-based relay (a Consumer that
// appends to the other stream, deduped by a deterministic Nats-Msg-Id).
//
// docs/replication.md shows the server configuration for the cross-account
// case.
type ReplicaConfig struct {
	// Name is the replica stream's name (ASCII letters, digits, '-' and '_').
	// Required.
	Name string

	// Description is stored on the stream for operators.
	Description string

	// SourceStream is the name of the event store's stream (stream.Config's
	// Name) in the store's account or domain. Required.
	SourceStream string

	// SourceSubject is the store's subject prefix (stream.Config's Subject).
	// Default: SourceStream, like stream.Config.
	SourceSubject string

	// AggregateTypes copies only the events of these aggregate types. Empty
	// (the default) copies the whole store.
	//
	// A source gets one stream source per aggregate type: each type has its
	// own position, so adding or removing a type later with CreateReplica
	// neither copies the other types again nor skips events, and each
	// copying consumer is created with its filter in the request subject
	// ($JS.API.CONSUMER.CREATE.<stream>.<consumer>.<prefix>.<type>.*), which
	// lets a cross-account export allow exactly the types the other account
	// may read. The price: the replica keeps the order of the events within
	// an aggregate and within a type, not across types. A mirror keeps the
	// store's order and sequences across all the types it copies (only in
	// another account or domain: see Mirror).
	AggregateTypes []string

	// SubjectPrefix renames the copied subjects from
	// <SourceSubject>.<type>.<id> to <SubjectPrefix>.<type>.<id> (a subject
	// transform applied by the server while copying). On a source it also
	// makes the replica listen on <SubjectPrefix>.> with direct get and
	// atomic publish, which stream.OpenStore needs to open the replica as a
	// store. In the same account it must not overlap SourceSubject (the
	// store already owns those subjects); in another account or domain it
	// may equal SourceSubject, to keep the subjects and still open the
	// replica as a store.
	//
	// Default "": the subjects are kept and a source replica listens on no
	// subject of its own (read it with consumers or direct gets, not with
	// stream.OpenStore).
	SubjectPrefix string

	// Mirror makes the replica a mirror (an exact, read-only copy keeping
	// the store's sequences) instead of a source. A mirror's origin and
	// filters cannot change later: delete the stream to change them. In the
	// store's own account and domain a mirror must copy the whole store
	// without renaming (no AggregateTypes; SubjectPrefix empty or equal to
	// SourceSubject).
	Mirror bool

	// External reaches a store in another account (or behind a custom API
	// prefix): APIPrefix is the subject under which the store's account
	// exports $JS.API.CONSUMER.CREATE.<SourceStream>... to the replica's
	// account, DeliverPrefix the subject prefix the copying consumer delivers
	// to, exported by the store's account as a stream. The store's account
	// must also export $JS.FC.<SourceStream>.> as a service (flow-control
	// replies), or the copy stalls under load. docs/replication.md has the
	// export and import configuration. Default nil: the same account and
	// domain.
	External *jetstream.ExternalStream

	// Domain reaches a store in another JetStream domain of the same
	// account (for example a leaf node's): it is External with APIPrefix
	// "$JS.<Domain>.API". Set External or Domain, not both.
	Domain string

	// Replicas is the replica stream's replication factor. Default 1.
	Replicas int

	// Duplicates is a source replica's duplicate window: an event id (its
	// Nats-Msg-Id) copied again within this window is dropped. Default
	// stream.DefaultDuplicates (2 minutes). A mirror copies by sequence and
	// has no duplicate window; setting Duplicates with Mirror is an error.
	Duplicates time.Duration

	// MaxEventSize is the largest message the replica accepts, in bytes.
	// It must be at least the store's (the server checks it in the same
	// account). Default stream.DefaultMaxEventSize, the store's default.
	MaxEventSize int

	// Memory keeps the replica in memory: for tests only. Default false
	// (file storage).
	Memory bool
}

// replSourcePrefix returns the store's subject prefix.
func (c ReplicaConfig) replSourcePrefix() string {
	if c.SourceSubject != "" {
		return c.SourceSubject
	}
	return c.SourceStream
}

// replLocal reports whether the store is in the replica's account and domain.
func (c ReplicaConfig) replLocal() bool { return c.External == nil && c.Domain == "" }

// Validate reports a configuration error without doing any I/O. Errors match
// ErrReplicaConfig, and also stream.ErrInvalidName for a bad name.
func (c ReplicaConfig) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrReplicaConfig}, args...)...)
	}
	badName := func(err error) error { return fmt.Errorf("%w: %w", ErrReplicaConfig, err) }
	if err := stream.ValidateName("replica name", c.Name); err != nil {
		return badName(err)
	}
	if err := stream.ValidateName("source stream name", c.SourceStream); err != nil {
		return badName(err)
	}
	if err := replValidatePrefix("source subject", c.replSourcePrefix()); err != nil {
		return badName(err)
	}
	if c.SubjectPrefix != "" {
		if err := replValidatePrefix("replica subject prefix", c.SubjectPrefix); err != nil {
			return badName(err)
		}
	}
	seen := make(map[string]bool, len(c.AggregateTypes))
	for _, t := range c.AggregateTypes {
		if err := stream.ValidateName("aggregate type", t); err != nil {
			return badName(err)
		}
		if seen[t] {
			return bad("aggregate type %q is listed twice", t)
		}
		seen[t] = true
	}
	if c.External != nil && c.Domain != "" {
		return bad("set External or Domain, not both")
	}
	if c.Domain != "" && strings.ContainsAny(c.Domain, ". *>\t\r\n") {
		return bad("domain %q must be one subject token", c.Domain)
	}
	if c.External != nil {
		if c.External.APIPrefix == "" {
			return bad("External.APIPrefix is required: the subject under which the store's account exports its JetStream consumer API")
		}
		if !replValidPublishSubject(c.External.APIPrefix) {
			return bad("External.APIPrefix %q must be a subject without wildcards", c.External.APIPrefix)
		}
		if c.External.DeliverPrefix != "" && !replValidPublishSubject(c.External.DeliverPrefix) {
			return bad("External.DeliverPrefix %q must be a subject without wildcards", c.External.DeliverPrefix)
		}
	}
	if c.replLocal() {
		if c.SourceStream == c.Name {
			return bad("replica %q cannot copy itself: name it differently, or set External or Domain for a store elsewhere", c.Name)
		}
		renamed := c.SubjectPrefix != "" && c.SubjectPrefix != c.replSourcePrefix()
		switch {
		case c.Mirror && (len(c.AggregateTypes) > 0 || renamed):
			return bad("a mirror in the store's own account and domain must copy the whole store under the same subjects: " +
				"the server makes it answer the store's direct gets (MirrorDirect), so a filtered or renamed mirror would make " +
				"loads from the store miss events; use a source, or mirror from another account or domain")
		case !c.Mirror && c.SubjectPrefix != "" && replSubjectsCollide(c.SubjectPrefix+".>", c.replSourcePrefix()+".>"):
			return bad("SubjectPrefix %q overlaps the store's subjects %q in the same account: choose another prefix, or leave it empty to keep the subjects without listening on them", c.SubjectPrefix, c.replSourcePrefix()+".>")
		}
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		return bad("Replicas must be 1 to 5, got %d", c.Replicas)
	}
	if c.Duplicates < 0 {
		return bad("Duplicates must not be negative")
	}
	if c.Duplicates > 0 && c.Duplicates < 100*time.Millisecond {
		return bad("Duplicates must be at least 100ms, got %s", c.Duplicates)
	}
	if c.Mirror && c.Duplicates != 0 {
		return bad("a mirror has no duplicate window: leave Duplicates at 0")
	}
	if c.MaxEventSize < 0 || c.MaxEventSize > math.MaxInt32 {
		return bad("MaxEventSize must be 0 (default) to %d, got %d", math.MaxInt32, c.MaxEventSize)
	}
	return nil
}

// StreamConfig returns the replica's JetStream stream configuration, or the
// Validate error: limits retention, file storage (memory with Memory), no
// MaxAge or other limit, discard new (an operator-set limit stops the copy,
// reported in the stream info, rather than deleting history), direct get
// allowed. A source also gets the duplicate window and, with a
// SubjectPrefix, the subjects <SubjectPrefix>.> and atomic publish so that
// stream.OpenStore accepts it. Domain is turned into External.
//
// Use it to review what CreateReplica would create, or to create the stream
// by other means (the nats CLI, an operator tool) with extra settings.
func (c ReplicaConfig) StreamConfig() (jetstream.StreamConfig, error) {
	if err := c.Validate(); err != nil {
		return jetstream.StreamConfig{}, err
	}
	replicas := c.Replicas
	if replicas == 0 {
		replicas = 1
	}
	maxSize := c.MaxEventSize
	if maxSize == 0 {
		maxSize = stream.DefaultMaxEventSize
	}
	sc := jetstream.StreamConfig{
		Name:              c.Name,
		Description:       c.Description,
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          replicas,
		MaxMsgSize:        int32(maxSize),
		MaxMsgs:           -1,
		MaxBytes:          -1,
		MaxMsgsPerSubject: -1,
		Discard:           jetstream.DiscardNew,
		AllowDirect:       true,
	}
	if c.Memory {
		sc.Storage = jetstream.MemoryStorage
	}
	var ext *jetstream.ExternalStream
	switch {
	case c.External != nil:
		e := *c.External
		ext = &e
	case c.Domain != "":
		ext = &jetstream.ExternalStream{APIPrefix: "$JS." + c.Domain + ".API"}
	}
	transforms := c.replTransforms()
	if c.Mirror {
		sc.Mirror = &jetstream.StreamSource{Name: c.SourceStream, SubjectTransforms: transforms, External: ext}
		return sc, nil
	}
	for _, tr := range transforms {
		src := &jetstream.StreamSource{Name: c.SourceStream, SubjectTransforms: []jetstream.SubjectTransformConfig{tr}}
		if ext != nil {
			e := *ext
			src.External = &e
		}
		sc.Sources = append(sc.Sources, src)
	}
	sc.Duplicates = c.Duplicates
	if sc.Duplicates == 0 {
		sc.Duplicates = stream.DefaultDuplicates
	}
	if c.SubjectPrefix != "" {
		sc.Subjects = []string{c.SubjectPrefix + ".>"}
		sc.AllowAtomicPublish = true
	}
	return sc, nil
}

// replTransforms returns the subject filters (with their renaming, if any):
// one per aggregate type, or one for the whole store.
func (c ReplicaConfig) replTransforms() []jetstream.SubjectTransformConfig {
	src := c.replSourcePrefix()
	rename := c.SubjectPrefix != "" && c.SubjectPrefix != src
	if len(c.AggregateTypes) == 0 {
		tr := jetstream.SubjectTransformConfig{Source: src + ".>"}
		if rename {
			tr.Destination = c.SubjectPrefix + ".>"
		}
		return []jetstream.SubjectTransformConfig{tr}
	}
	out := make([]jetstream.SubjectTransformConfig, 0, len(c.AggregateTypes))
	for _, t := range c.AggregateTypes {
		tr := jetstream.SubjectTransformConfig{Source: src + "." + t + ".*"}
		if rename {
			tr.Destination = c.SubjectPrefix + "." + t + ".{{wildcard(1)}}"
		}
		out = append(out, tr)
	}
	return out
}

// CreateReplica creates the replica stream described by cfg, or updates an
// existing one to it, and returns it. It is idempotent: many processes may
// call it at start, and an unchanged configuration changes nothing. The copy
// starts at once on the server, from the store's first event, and goes on
// while both streams exist; CreateReplica does not wait for it (the stream
// info's Sources or Mirror report lag and errors, such as a missing export).
//
// Updating keeps the copy's positions: adding an aggregate type copies that
// type's history, removing one stops copying it (its copied events stay).
// CreateReplica refuses, with ErrReplicaConfig and before changing anything,
// what would copy events a second time or silently change what the stream
// is: a stream that exists but is not a replica, turning a source into a
// mirror or back, changing a mirror's origin or filters, other storage, and
// for a source a new filter or rename that overlaps one being removed (a
// changed SubjectPrefix or origin, or "all types" replaced by some types).
// Delete the stream and call CreateReplica again to start over.
//
// Settings CreateReplica does not manage (MaxAge, MaxBytes, placement, ...)
// are kept on update, so an operator may set them on the stream.
//
// Other errors (permissions, an unreachable JetStream, a server refusing the
// configuration, e.g. a MaxEventSize below the store's) are NATS errors in a
// *stream.Error with Op "replicate".
func CreateReplica(ctx context.Context, js jetstream.JetStream, cfg ReplicaConfig) (jetstream.Stream, error) {
	want, err := cfg.StreamConfig()
	if err != nil {
		return nil, err
	}
	fail := func(err error) error { return &stream.Error{Op: "replicate", Subject: cfg.Name, Err: err} }
	for attempt := 0; ; attempt++ {
		st, err := js.Stream(ctx, cfg.Name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			st, err = js.CreateStream(ctx, want)
			if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) && attempt == 0 {
				continue // lost a creation race: check what the winner made
			}
			if err != nil {
				return nil, fail(fmt.Errorf("creating replica stream: %w", err))
			}
			return st, nil
		case err != nil:
			return nil, fail(fmt.Errorf("looking up replica stream: %w", err))
		}
		have := st.CachedInfo().Config
		upd, changed, err := replUpdate(have, want)
		if err != nil {
			return nil, fail(err)
		}
		if !changed {
			return st, nil
		}
		st, err = js.UpdateStream(ctx, upd)
		if err != nil {
			return nil, fail(fmt.Errorf("updating replica stream: %w", err))
		}
		return st, nil
	}
}

// replUpdate returns the existing stream's configuration with the managed
// fields set to want's, whether anything changed, or an ErrReplicaConfig
// error when the change is refused.
func replUpdate(have, want jetstream.StreamConfig) (jetstream.StreamConfig, bool, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: stream %q: "+format+"; delete the stream to start over", append([]any{ErrReplicaConfig, have.Name}, args...)...)
	}
	switch {
	case have.Mirror == nil && len(have.Sources) == 0:
		return have, false, fmt.Errorf("%w: stream %q exists and is not a replica (it has no source and no mirror)", ErrReplicaConfig, have.Name)
	case have.Mirror != nil && want.Mirror == nil:
		return have, false, bad("it is a mirror, not a source")
	case have.Mirror == nil && want.Mirror != nil:
		return have, false, bad("it is a source, not a mirror")
	case have.Storage != want.Storage:
		return have, false, bad("storage is %s, not %s", have.Storage, want.Storage)
	case have.Retention != jetstream.LimitsPolicy:
		return have, false, bad("retention is %s, not limits", have.Retention)
	}
	upd := have
	if want.Mirror != nil {
		if replSourceKey(have.Mirror) != replSourceKey(want.Mirror) {
			return have, false, bad("a mirror's origin and filters cannot change (have %s, want %s)", replSourceKey(have.Mirror), replSourceKey(want.Mirror))
		}
	} else {
		if err := replCheckSources(have.Sources, want.Sources); err != nil {
			return have, false, bad("%v", err)
		}
		if !replSameSources(have.Sources, want.Sources) {
			upd.Sources = want.Sources
		}
		if !slices.Equal(have.Subjects, want.Subjects) {
			upd.Subjects = want.Subjects
		}
		upd.Duplicates = want.Duplicates
		upd.AllowAtomicPublish = want.AllowAtomicPublish
	}
	upd.Description = want.Description
	upd.Replicas = want.Replicas
	upd.MaxMsgSize = want.MaxMsgSize
	upd.AllowDirect = true
	upd.Discard = jetstream.DiscardNew
	changed := upd.Description != have.Description || upd.Replicas != have.Replicas ||
		upd.MaxMsgSize != have.MaxMsgSize || upd.Duplicates != have.Duplicates ||
		upd.AllowDirect != have.AllowDirect || upd.AllowAtomicPublish != have.AllowAtomicPublish ||
		upd.Discard != have.Discard || !slices.Equal(upd.Subjects, have.Subjects) ||
		!replSameSources(upd.Sources, have.Sources)
	return upd, changed, nil
}

// replSourceKey identifies a stream source or mirror the way the server
// tracks its copy position: origin, external API prefix, filters and
// transforms (plus the deliver prefix, which changes where it is delivered).
func replSourceKey(s *jetstream.StreamSource) string {
	if s == nil {
		return "<none>"
	}
	var b strings.Builder
	b.WriteString(s.Name)
	if s.External != nil {
		b.WriteString(" api=" + s.External.APIPrefix + " deliver=" + s.External.DeliverPrefix)
	}
	for _, f := range replFilters(s) {
		b.WriteString(" " + f[0])
		if f[1] != "" {
			b.WriteString("->" + f[1])
		}
	}
	return b.String()
}

// replFilters returns a source's filters as (filter, destination) pairs,
// sorted; an unfiltered source has the filter ">".
func replFilters(s *jetstream.StreamSource) [][2]string {
	var out [][2]string
	for _, tr := range s.SubjectTransforms {
		src := tr.Source
		if src == "" {
			src = ">"
		}
		out = append(out, [2]string{src, tr.Destination})
	}
	if len(out) == 0 {
		src := s.FilterSubject
		if src == "" {
			src = ">"
		}
		out = append(out, [2]string{src, ""})
	}
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0]+" "+a[1], b[0]+" "+b[1]) })
	return out
}

func replSameSources(a, b []*jetstream.StreamSource) bool {
	if len(a) != len(b) {
		return false
	}
	keys := func(ss []*jetstream.StreamSource) []string {
		out := make([]string, len(ss))
		for i, s := range ss {
			out[i] = replSourceKey(s)
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(keys(a), keys(b))
}

// replCheckSources refuses a change of sources that would copy events of
// the same origin a second time: a removed source and an added one whose
// filters overlap (the added one would start from the store's beginning).
func replCheckSources(have, want []*jetstream.StreamSource) error {
	in := func(s *jetstream.StreamSource, list []*jetstream.StreamSource) bool {
		k := replSourceKey(s)
		return slices.ContainsFunc(list, func(o *jetstream.StreamSource) bool { return replSourceKey(o) == k })
	}
	for _, removed := range have {
		if in(removed, want) {
			continue
		}
		for _, added := range want {
			if in(added, have) || added.Name != removed.Name {
				continue
			}
			for _, rf := range replFilters(removed) {
				for _, af := range replFilters(added) {
					if replSubjectsCollide(rf[0], af[0]) {
						return fmt.Errorf("source %s would be replaced by %s: the events of %s already copied would be copied again", replSourceKey(removed), replSourceKey(added), af[0])
					}
				}
			}
		}
	}
	return nil
}

// replSubjectsCollide reports whether two subject filters can match a
// common subject.
func replSubjectsCollide(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(at) && i < len(bt); i++ {
		x, y := at[i], bt[i]
		if x == ">" || y == ">" {
			return true
		}
		if x != "*" && y != "*" && x != y {
			return false
		}
	}
	return len(at) == len(bt)
}

// replValidatePrefix checks a subject prefix: one or more tokens, each a
// valid name.
func replValidatePrefix(kind, prefix string) error {
	for _, tok := range strings.Split(prefix, ".") {
		if err := stream.ValidateName(kind+" token", tok); err != nil {
			return fmt.Errorf("%s %q: %w", kind, prefix, err)
		}
	}
	return nil
}

// replValidPublishSubject reports whether s is a subject without wildcards
// or empty tokens.
func replValidPublishSubject(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t\r\n") {
		return false
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return false
		}
	}
	return true
}
