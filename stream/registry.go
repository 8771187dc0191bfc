package stream

import (
	"errors"
	"fmt"
	"maps"
	"mime"
	"reflect"
	"slices"
	"strings"
	"sync"
)

// Registry maps explicit, stable event type names to Go types and encodes and
// decodes event payloads. Names are chosen by the program ("cart-item-added"),
// never derived from Go type names, so renaming or moving a Go type does not
// change what is stored. A registry is a value owned by the program (usually
// one per store), never a package-level global.
//
// Each registered type has a current schema version (1 unless set with
// SchemaVersion). Payloads written with an older version are brought to the
// current one on Decode by the type's upcasters (see Upcast).
//
// The zero Registry is ready to use and encodes with Msgpack; NewRegistry
// sets options. All methods are safe for concurrent use, including
// registering types while other goroutines encode and decode, though
// registration normally happens once at program setup.
type Registry struct {
	codec Codec // encoding codec; nil = Msgpack

	mu     sync.RWMutex
	byName map[string]*regType
	byType map[reflect.Type]*regType // keyed by T and *T
}

// RegistryOption configures a Registry made by NewRegistry.
type RegistryOption func(*Registry)

// WithCodec sets the codec used to encode payloads (default Msgpack). The
// registry stores its content type with each event and, when decoding, picks
// the codec by the stored content type: c's, Msgpack's and JSON's are always
// known (c takes precedence if it has the same content type as a built-in
// codec). A nil c keeps the default.
func WithCodec(c Codec) RegistryOption {
	return func(r *Registry) {
		if c != nil {
			r.codec = c
		}
	}
}

// NewRegistry returns an empty registry configured by opts. Register event
// types on it with Register or MustRegister.
func NewRegistry(opts ...RegistryOption) *Registry {
	r := &Registry{}
	for _, o := range opts {
		if o != nil {
			o(r)
		}
	}
	return r
}

// regType is what a registry knows of one event type.
type regType struct {
	name    string
	goType  reflect.Type
	version int // current schema version, >= 1
	// decode decodes a payload of the current version into a T.
	decode func(data []byte, c Codec) (any, error)
	// encode encodes a T or a non-nil *T.
	encode func(v any, c Codec) ([]byte, error)
	// upcasters[i] upcasts from version minUpcast+i to minUpcast+i+1; the
	// last one produces a T. Empty if the type has none.
	upcasters []regUpcaster
	minUpcast int
}

// regUpcaster is one step of an upcaster chain, built by Upcast.
type regUpcaster struct {
	from           int
	fromType, toTy reflect.Type
	decode         func(data []byte, c Codec) (any, error) // payload -> From
	apply          func(v any) (any, error)                // From -> To
}

// regTypeConfig collects the TypeOptions of one Register call.
type regTypeConfig struct {
	version   int
	upcasters []regUpcaster
	errs      []error
}

// TypeOption configures an event type in Register: SchemaVersion and Upcast.
type TypeOption struct {
	apply func(*regTypeConfig)
}

// SchemaVersion sets the current schema version of the registered type: the
// version stored with the events it encodes and the one Decode upcasts older
// payloads to. The default is 1; v must be >= 1 or Register fails. Raise it
// when the type's encoding changes incompatibly, and add an Upcast step from
// the previous version.
func SchemaVersion(v int) TypeOption {
	return TypeOption{apply: func(c *regTypeConfig) {
		if v < 1 {
			c.errs = append(c.errs, fmt.Errorf("schema version %d is not >= 1", v))
			return
		}
		c.version = v
	}}
}

// Upcast registers a step that turns a stored payload of schema version
// fromVersion, decoded into a From, into the payload of version fromVersion+1,
// a To.
//
// Steps chain: the To of the step from version k must be the From of the step
// from k+1, and the To of the step from current-1 must be the registered type
// T. Register checks the chain: there must be exactly one step for every
// version from the lowest fromVersion up to current-1, each type-consistent
// with the next. Payloads older than the lowest fromVersion cannot be decoded
// (ErrSchemaVersion).
//
// fn must be safe for concurrent use. An error it returns makes Decode fail
// with an error wrapping both ErrSchemaVersion and fn's error.
func Upcast[From, To any](fromVersion int, fn func(From) (To, error)) TypeOption {
	return TypeOption{apply: func(c *regTypeConfig) {
		if fn == nil {
			c.errs = append(c.errs, fmt.Errorf("upcaster from version %d is nil", fromVersion))
			return
		}
		c.upcasters = append(c.upcasters, regUpcaster{
			from:     fromVersion,
			fromType: reflect.TypeFor[From](),
			toTy:     reflect.TypeFor[To](),
			decode: func(data []byte, c Codec) (any, error) {
				var v From
				if err := c.Unmarshal(data, &v); err != nil {
					return nil, err
				}
				return v, nil
			},
			apply: func(v any) (any, error) {
				from, ok := v.(From)
				if !ok { // unreachable: Register checked the chain
					return nil, fmt.Errorf("upcaster from version %d got %T, want %v", fromVersion, v, reflect.TypeFor[From]())
				}
				return fn(from)
			},
		})
	}}
}

// Register registers the Go type T under the event type name, with options
// SchemaVersion and Upcast. T must not be a pointer or interface type (nor a
// func, chan or unsafe pointer); it is normally a struct. Values of T and *T
// are then accepted by Encode and NameOf, and Decode returns values of T.
//
// Register fails, leaving the registry unchanged, if name is not a valid name
// (ValidateName: the error wraps ErrInvalidName), if name is already
// registered, if T is already registered under another name, if T is not
// allowed, or if the schema version or upcaster chain is invalid.
func Register[T any](r *Registry, name string, opts ...TypeOption) error {
	goType := reflect.TypeFor[T]()
	if err := ValidateName("event type", name); err != nil {
		return err
	}
	switch goType.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Func, reflect.Chan, reflect.UnsafePointer:
		return fmt.Errorf("esnats: register event type %q: Go type %v is a %v; register the value type (normally a struct)", name, goType, goType.Kind())
	}
	cfg := regTypeConfig{version: 1}
	for _, o := range opts {
		if o.apply != nil {
			o.apply(&cfg)
		}
	}
	if len(cfg.errs) > 0 {
		return fmt.Errorf("esnats: register event type %q: %w", name, errors.Join(cfg.errs...))
	}
	ups, err := regCheckUpcasters(goType, cfg.version, cfg.upcasters)
	if err != nil {
		return fmt.Errorf("esnats: register event type %q: %w", name, err)
	}
	t := &regType{
		name:      name,
		goType:    goType,
		version:   cfg.version,
		upcasters: ups,
		decode: func(data []byte, c Codec) (any, error) {
			var v T
			if err := c.Unmarshal(data, &v); err != nil {
				return nil, err
			}
			return v, nil
		},
		encode: func(v any, c Codec) ([]byte, error) {
			switch x := v.(type) {
			case T:
				// Encode through a pointer, as Decode decodes through
				// one, so that methods with pointer receivers
				// (MarshalJSON, EncodeMsgpack) apply either way.
				return c.Marshal(&x)
			case *T:
				if x == nil {
					return nil, fmt.Errorf("nil %T", x)
				}
				return c.Marshal(x)
			default: // unreachable: looked up by type
				return nil, fmt.Errorf("got %T, want %v", v, goType)
			}
		},
	}
	if len(ups) > 0 {
		t.minUpcast = ups[0].from
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.byName[name]; dup {
		return fmt.Errorf("esnats: register event type %q: name already registered", name)
	}
	if other, dup := r.byType[goType]; dup {
		return fmt.Errorf("esnats: register event type %q: Go type %v already registered as %q", name, goType, other.name)
	}
	if r.byName == nil {
		r.byName = make(map[string]*regType)
		r.byType = make(map[reflect.Type]*regType)
	}
	r.byName[name] = t
	r.byType[goType] = t
	r.byType[reflect.PointerTo(goType)] = t
	return nil
}

// regCheckUpcasters sorts the upcasters of a type T at current schema version
// and checks that they form a chain ending at T.
func regCheckUpcasters(goType reflect.Type, current int, ups []regUpcaster) ([]regUpcaster, error) {
	if len(ups) == 0 {
		return nil, nil
	}
	ups = slices.Clone(ups)
	slices.SortStableFunc(ups, func(a, b regUpcaster) int { return a.from - b.from })
	for i, u := range ups {
		if u.from < 1 || u.from >= current {
			return nil, fmt.Errorf("upcaster from version %d is outside 1..%d (the current schema version is %d)", u.from, current-1, current)
		}
		if i > 0 && ups[i-1].from == u.from {
			return nil, fmt.Errorf("two upcasters from version %d", u.from)
		}
		if i > 0 && ups[i-1].from+1 != u.from {
			return nil, fmt.Errorf("no upcaster from version %d to %d", ups[i-1].from+1, ups[i-1].from+2)
		}
		if i > 0 && ups[i-1].toTy != u.fromType {
			return nil, fmt.Errorf("upcaster from version %d yields %v but the upcaster from version %d takes %v", ups[i-1].from, ups[i-1].toTy, u.from, u.fromType)
		}
	}
	last := ups[len(ups)-1]
	if last.from != current-1 {
		return nil, fmt.Errorf("no upcaster from version %d to %d", last.from+1, last.from+2)
	}
	if last.toTy != goType {
		return nil, fmt.Errorf("upcaster from version %d yields %v but the registered type is %v", last.from, last.toTy, goType)
	}
	return ups, nil
}

// MustRegister is like Register but panics if it fails. Use it at program
// setup, where a registration error is a programming error.
func MustRegister[T any](r *Registry, name string, opts ...TypeOption) {
	if err := Register[T](r, name, opts...); err != nil {
		panic(err)
	}
}

// Codec returns the codec used to encode payloads: the one set with
// WithCodec, or Msgpack.
func (r *Registry) Codec() Codec {
	if r.codec == nil {
		return msgpackCodec{}
	}
	return r.codec
}

// CodecFor returns the codec that decodes payloads of contentType: "" means
// the registry's codec (Codec); the registry codec's content type,
// "application/msgpack" and "application/json" are known. Matching ignores
// case and media type parameters ("application/json; charset=utf-8"). ok is
// false for any other content type.
func (r *Registry) CodecFor(contentType string) (c Codec, ok bool) {
	def := r.Codec()
	if contentType == "" {
		return def, true
	}
	if c, ok := r.codecExact(def, contentType); ok {
		return c, true
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return nil, false
	}
	if strings.EqualFold(mt, def.ContentType()) {
		return def, true
	}
	return r.codecExact(def, mt) // ParseMediaType lower-cases
}

func (r *Registry) codecExact(def Codec, contentType string) (Codec, bool) {
	switch contentType {
	case def.ContentType():
		return def, true
	case ContentTypeMsgpack:
		return msgpackCodec{}, true
	case ContentTypeJSON:
		return jsonCodec{}, true
	}
	return nil, false
}

// lookupName returns the registered type named name, or nil.
func (r *Registry) lookupName(name string) *regType {
	r.mu.RLock()
	t := r.byName[name]
	r.mu.RUnlock()
	return t
}

// lookupValue returns the registered type of v (a T or *T), or nil.
func (r *Registry) lookupValue(v any) *regType {
	goType := reflect.TypeOf(v)
	r.mu.RLock()
	t := r.byType[goType]
	r.mu.RUnlock()
	return t
}

// NameOf returns the event type name registered for the type of v, which may
// be a T or a *T. The error wraps ErrUnknownEventType and names v's Go type
// if it is not registered.
func (r *Registry) NameOf(v any) (string, error) {
	t := r.lookupValue(v)
	if t == nil {
		return "", fmt.Errorf("%w: Go type %T is not registered", ErrUnknownEventType, v)
	}
	return t.name, nil
}

// Encode encodes v, a T or *T of a registered type, with the registry's
// codec (Codec). It returns the type's name, its current schema version and
// the payload, a slice the caller owns.
//
// The error wraps ErrUnknownEventType if v's type is not registered, or
// ErrEncode, naming the event type, if v is a nil pointer or the codec fails.
func (r *Registry) Encode(v any) (name string, schemaVersion int, data []byte, err error) {
	t := r.lookupValue(v)
	if t == nil {
		return "", 0, nil, fmt.Errorf("%w: Go type %T is not registered", ErrUnknownEventType, v)
	}
	data, err = t.encode(v, r.Codec())
	if err != nil {
		return "", 0, nil, fmt.Errorf("%w: event type %q: %w", ErrEncode, t.name, err)
	}
	return t.name, t.version, data, nil
}

// Decode decodes a stored payload of the event type name, written with
// schemaVersion and contentType ("" = the registry codec's), into a value of
// the registered type T. It returns a T (not a *T), brought to the current
// schema version by running the type's upcasters from schemaVersion on.
//
// The error wraps:
//   - ErrUnknownEventType if name is not registered;
//   - ErrDecode if no codec is known for contentType (see CodecFor) or data
//     cannot be decoded (the codec's error is wrapped too);
//   - ErrSchemaVersion if schemaVersion is newer than the current version
//     (written by newer code), below 1, older than the oldest version the
//     upcasters start from, or if an upcaster fails (its error is wrapped
//     too).
func (r *Registry) Decode(name string, schemaVersion int, contentType string, data []byte) (any, error) {
	t := r.lookupName(name)
	if t == nil {
		return nil, fmt.Errorf("%w: %q is not registered", ErrUnknownEventType, name)
	}
	c, ok := r.CodecFor(contentType)
	if !ok {
		return nil, fmt.Errorf("%w: event type %q: no codec for content type %q", ErrDecode, name, contentType)
	}
	if schemaVersion == t.version {
		v, err := t.decode(data, c)
		if err != nil {
			return nil, fmt.Errorf("%w: event type %q (schema version %d, %s): %w", ErrDecode, name, schemaVersion, c.ContentType(), err)
		}
		return v, nil
	}
	switch {
	case schemaVersion > t.version:
		return nil, fmt.Errorf("%w: event type %q has schema version %d, newer than the registered version %d (written by newer code?)", ErrSchemaVersion, name, schemaVersion, t.version)
	case schemaVersion < 1:
		return nil, fmt.Errorf("%w: event type %q: schema version %d is not >= 1", ErrSchemaVersion, name, schemaVersion)
	case len(t.upcasters) == 0 || schemaVersion < t.minUpcast:
		return nil, fmt.Errorf("%w: event type %q: no upcaster from schema version %d (registered version %d)", ErrSchemaVersion, name, schemaVersion, t.version)
	}
	steps := t.upcasters[schemaVersion-t.minUpcast:]
	v, err := steps[0].decode(data, c)
	if err != nil {
		return nil, fmt.Errorf("%w: event type %q (schema version %d, %s): %w", ErrDecode, name, schemaVersion, c.ContentType(), err)
	}
	for _, u := range steps {
		if v, err = u.apply(v); err != nil {
			return nil, fmt.Errorf("%w: event type %q: upcast from schema version %d to %d: %w", ErrSchemaVersion, name, u.from, u.from+1, err)
		}
	}
	return v, nil
}

// Names returns the registered event type names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Sorted(maps.Keys(r.byName))
}

// Has reports whether name is a registered event type.
func (r *Registry) Has(name string) bool { return r.lookupName(name) != nil }

// SchemaVersionOf returns the current schema version of the event type name;
// ok is false if name is not registered.
func (r *Registry) SchemaVersionOf(name string) (version int, ok bool) {
	t := r.lookupName(name)
	if t == nil {
		return 0, false
	}
	return t.version, true
}
