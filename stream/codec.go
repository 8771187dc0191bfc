package stream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
)

// Content types of the built-in codecs, as stored in an event's Content-Type
// header.
const (
	ContentTypeMsgpack = "application/msgpack"
	ContentTypeJSON    = "application/json"
)

// Codec encodes and decodes event payloads. The registry encodes with its
// configured codec (see WithCodec) and decodes with the codec named by each
// stored event's content type.
//
// Implementations must be safe for concurrent use, and Marshal must return a
// slice the caller owns.
type Codec interface {
	// ContentType names the encoding; it is stored in the event's
	// Content-Type header, e.g. "application/msgpack".
	ContentType() string
	// Marshal encodes v.
	Marshal(v any) ([]byte, error)
	// Unmarshal decodes data into v, a non-nil pointer. It must return an
	// error, never panic, for data it cannot decode.
	Unmarshal(data []byte, v any) error
}

var (
	_ Codec = msgpackCodec{}
	_ Codec = jsonCodec{}
)

// Msgpack returns the MessagePack codec (github.com/vmihailenco/msgpack/v5),
// content type "application/msgpack", the default of a Registry.
//
// Struct fields are named by their `msgpack` tag or, failing that, their
// `json` tag (name, "omitempty" and "-" are honoured), so one set of json
// tags names the fields in both this codec and JSON. Integers are written in
// their most compact form. time.Time values are decoded in the local time
// zone (compare them with Equal). Unmarshal rejects trailing bytes after the
// value and turns any panic of the decoder into an error. The codec is safe
// for concurrent use; it pools its encoders and decoders.
//
// Before decoding, Unmarshal checks that data is one well-formed MessagePack
// value whose declared string, binary, array and map lengths fit in data and
// whose nesting is at most 10000 deep. msgpack v5.4.1 preallocates arrays and
// maps by their declared length (vmihailenco/msgpack#401), so without the
// check a 5-byte payload could exhaust memory and kill the process; with it,
// what the decoder allocates is bounded by the size of the input.
func Msgpack() Codec { return msgpackCodec{} }

// JSON returns the encoding/json codec, content type "application/json".
// Unknown fields are ignored when decoding, so that adding a field to an
// event type stays compatible. The codec is safe for concurrent use.
func JSON() Codec { return jsonCodec{} }

// msgpackCodec is the Msgpack codec. It is stateless; the pools are shared.
type msgpackCodec struct{}

// codecMsgpackEncoder is a pooled msgpack encoder bound to its buffer.
type codecMsgpackEncoder struct {
	buf bytes.Buffer
	enc *msgpack.Encoder
}

// codecMsgpackDecoder is a pooled msgpack decoder bound to its reader.
type codecMsgpackDecoder struct {
	r   bytes.Reader
	dec *msgpack.Decoder
}

// codecMaxPooledBuffer is the largest encode buffer kept for reuse; larger
// ones are left to the garbage collector so that one big event does not pin
// memory.
const codecMaxPooledBuffer = 64 << 10

var codecMsgpackEncoders = sync.Pool{New: func() any {
	e := &codecMsgpackEncoder{}
	e.enc = msgpack.NewEncoder(&e.buf)
	return e
}}

var codecMsgpackDecoders = sync.Pool{New: func() any {
	d := &codecMsgpackDecoder{}
	d.dec = msgpack.NewDecoder(&d.r)
	return d
}}

func (msgpackCodec) ContentType() string { return ContentTypeMsgpack }

func (msgpackCodec) Marshal(v any) ([]byte, error) {
	e := codecMsgpackEncoders.Get().(*codecMsgpackEncoder)
	e.buf.Reset()
	e.enc.Reset(&e.buf)
	e.enc.SetCustomStructTag("json")
	e.enc.UseCompactInts(true)
	if err := e.enc.Encode(v); err != nil {
		codecPutEncoder(e)
		return nil, err
	}
	out := bytes.Clone(e.buf.Bytes())
	codecPutEncoder(e)
	return out, nil
}

func codecPutEncoder(e *codecMsgpackEncoder) {
	if e.buf.Cap() > codecMaxPooledBuffer {
		return
	}
	codecMsgpackEncoders.Put(e)
}

func (msgpackCodec) Unmarshal(data []byte, v any) (err error) {
	d := codecMsgpackDecoders.Get().(*codecMsgpackDecoder)
	defer func() {
		if p := recover(); p != nil {
			// The decoder's state is unknown: do not return it to the pool.
			err = fmt.Errorf("msgpack: decoding %T panicked: %v", v, p)
		}
	}()
	if err := codecMsgpackCheck(data); err != nil {
		codecMsgpackDecoders.Put(d)
		return err
	}
	d.r.Reset(data)
	d.dec.Reset(&d.r)
	d.dec.SetCustomStructTag("json")
	err = d.dec.Decode(v)
	if err == nil && d.r.Len() > 0 {
		err = fmt.Errorf("msgpack: %d trailing bytes after the value", d.r.Len())
	}
	d.r.Reset(nil)
	codecMsgpackDecoders.Put(d)
	return err
}

// jsonCodec is the JSON codec.
type jsonCodec struct{}

func (jsonCodec) ContentType() string { return ContentTypeJSON }

func (jsonCodec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// codecMsgpackMaxDepth bounds the nesting of arrays and maps, as
// encoding/json does, so that decoding cannot exhaust the goroutine stack.
const codecMsgpackMaxDepth = 10000

// codecMsgpackCheck reports whether data is exactly one well-formed
// MessagePack value (spec: github.com/msgpack/msgpack/blob/master/spec.md)
// whose declared lengths fit in data: a string, binary or extension of n
// bytes needs n more bytes, and an array of n elements or a map of n pairs
// needs at least n or 2n more bytes, since every value takes at least one.
// Extension payloads are not looked into. It does not allocate unless the
// nesting is deeper than 32.
func codecMsgpackCheck(data []byte) error {
	var stackBuf [32]int
	stack := append(stackBuf[:0], 1) // values still to read, per nesting level
	pos := 0
	// size reads a big-endian length of n bytes at pos.
	size := func(n int) (int, bool) {
		if len(data)-pos < n {
			return 0, false
		}
		var v uint64
		for _, b := range data[pos : pos+n] {
			v = v<<8 | uint64(b)
		}
		pos += n
		if v > uint64(len(data)) { // cannot fit; also keeps v*2 within int
			return 0, false
		}
		return int(v), true
	}
	for len(stack) > 0 {
		top := len(stack) - 1
		if stack[top] == 0 {
			stack = stack[:top]
			continue
		}
		stack[top]--
		if pos >= len(data) {
			return errors.New("msgpack: unexpected end of data")
		}
		start := pos
		c := data[pos]
		pos++
		var (
			skip  int // bytes of payload that follow
			items int // values that follow (array elements, 2 per map pair)
			ok    = true
		)
		switch {
		case c <= 0x7f || c >= 0xe0: // positive and negative fixint
		case c <= 0x8f: // fixmap
			items = 2 * int(c&0x0f)
		case c <= 0x9f: // fixarray
			items = int(c & 0x0f)
		case c <= 0xbf: // fixstr
			skip = int(c & 0x1f)
		default:
			switch c {
			case 0xc0, 0xc2, 0xc3: // nil, false, true
			case 0xc4, 0xd9: // bin8, str8
				skip, ok = size(1)
			case 0xc5, 0xda: // bin16, str16
				skip, ok = size(2)
			case 0xc6, 0xdb: // bin32, str32
				skip, ok = size(4)
			case 0xc7, 0xc8, 0xc9: // ext8, ext16, ext32: length, type, data
				skip, ok = size(1 << (c - 0xc7))
				skip++
			case 0xca: // float32
				skip = 4
			case 0xcb: // float64
				skip = 8
			case 0xcc, 0xcd, 0xce, 0xcf: // uint8..uint64
				skip = 1 << (c - 0xcc)
			case 0xd0, 0xd1, 0xd2, 0xd3: // int8..int64
				skip = 1 << (c - 0xd0)
			case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext1..fixext16: type, data
				skip = 1 + 1<<(c-0xd4)
			case 0xdc: // array16
				items, ok = size(2)
			case 0xdd: // array32
				items, ok = size(4)
			case 0xde: // map16
				items, ok = size(2)
				items *= 2
			case 0xdf: // map32
				items, ok = size(4)
				items *= 2
			default: // 0xc1: never used
				return fmt.Errorf("msgpack: invalid code 0x%02x at offset %d", c, start)
			}
		}
		if !ok || skip > len(data)-pos {
			return fmt.Errorf("msgpack: value at offset %d is truncated", start)
		}
		pos += skip
		if items > 0 {
			if items > len(data)-pos {
				return fmt.Errorf("msgpack: %s at offset %d declares more elements than the %d bytes that follow", codecMsgpackKind(c), start, len(data)-pos)
			}
			if len(stack) >= codecMsgpackMaxDepth {
				return fmt.Errorf("msgpack: nesting deeper than %d at offset %d", codecMsgpackMaxDepth, start)
			}
			stack = append(stack, items)
		}
	}
	if pos != len(data) {
		return fmt.Errorf("msgpack: %d trailing bytes after the value", len(data)-pos)
	}
	return nil
}

func codecMsgpackKind(c byte) string {
	if c <= 0x8f || c >= 0xde {
		return "map"
	}
	return "array"
}
