package stream

import (
	"fmt"
	"unicode/utf8"
)

// MaxIDLength is the longest aggregate id accepted, in bytes of its UTF-8
// encoding (before escaping). An escaped id is at most three times as long.
const MaxIDLength = 512

// maxNameLength is the longest name accepted by ValidateName, in bytes.
const maxNameLength = 128

// idHexDigits are the digits of an escape; always uppercase, so that every id
// has exactly one token.
const idHexDigits = "0123456789ABCDEF"

// idKept reports whether EncodeID writes byte c as it is: ASCII letters,
// digits, '-' and '_'. The same set makes up valid names (ValidateName).
var idKept = [256]bool{}

// idHexValue maps an uppercase hex digit to its value and every other byte to
// -1.
var idHexValue = [256]int8{}

func init() {
	for c := 0; c < 256; c++ {
		idKept[c] = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
		idHexValue[c] = -1
	}
	for i := 0; i < len(idHexDigits); i++ {
		idHexValue[idHexDigits[i]] = int8(i)
	}
}

// idQuote returns s truncated to at most 64 bytes, for error messages.
func idQuote(s string) string {
	const limit = 64
	if len(s) <= limit {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q...", s[:limit])
}

// EncodeID escapes an aggregate id into a single token that is valid both as a
// NATS subject token and in a JetStream KV key.
//
// Bytes in [A-Za-z0-9_-] are kept as they are, so ordinary ids ("42",
// "order-7", "a_b") stay readable and are returned unchanged without
// allocating. Every other byte of the UTF-8 encoding ('.', '*', '>', space,
// '/', '=', '@', every byte of a non-ASCII character, ...) is written as '='
// followed by two uppercase hex digits: "a.b" becomes "a=2Eb" and "Zürich"
// becomes "Z=C3=BCrich". The escaping is reversible (DecodeID) and canonical:
// every id has exactly one token, and distinct ids have distinct tokens.
//
// The error wraps ErrInvalidID when id is empty, is not valid UTF-8 or is
// longer than MaxIDLength bytes. EncodeID does no I/O and is safe for
// concurrent use.
func EncodeID(id string) (string, error) {
	if id == "" {
		return "", fmt.Errorf("%w: id is empty", ErrInvalidID)
	}
	if len(id) > MaxIDLength {
		return "", fmt.Errorf("%w: id of %d bytes is longer than %d bytes: %s", ErrInvalidID, len(id), MaxIDLength, idQuote(id))
	}
	escapes := 0
	for i := 0; i < len(id); i++ {
		if !idKept[id[i]] {
			escapes++
		}
	}
	if escapes == 0 {
		return id, nil // only kept bytes, hence also valid UTF-8
	}
	if !utf8.ValidString(id) {
		return "", fmt.Errorf("%w: id is not valid UTF-8: %s", ErrInvalidID, idQuote(id))
	}
	buf := make([]byte, 0, len(id)+2*escapes)
	for i := 0; i < len(id); i++ {
		c := id[i]
		if idKept[c] {
			buf = append(buf, c)
			continue
		}
		buf = append(buf, '=', idHexDigits[c>>4], idHexDigits[c&0x0F])
	}
	return string(buf), nil
}

// DecodeID reverses EncodeID: it turns a token back into the aggregate id.
//
// Only canonical tokens, as produced by EncodeID, are accepted, so that
// DecodeID(EncodeID(id)) == id and EncodeID(DecodeID(token)) == token. The
// error wraps ErrInvalidID when the token is empty, holds a byte outside
// [A-Za-z0-9_=-], holds an escape that is truncated, uses lowercase or
// non-hex digits, escapes a byte that must be kept as it is, or decodes to an
// id that is not valid UTF-8 or is longer than MaxIDLength bytes. DecodeID
// does no I/O, returns tokens without escapes without allocating, and is safe
// for concurrent use.
func DecodeID(token string) (string, error) {
	if token == "" {
		return "", fmt.Errorf("%w: id token is empty", ErrInvalidID)
	}
	if len(token) > 3*MaxIDLength {
		return "", fmt.Errorf("%w: id token of %d bytes is longer than %d bytes: %s", ErrInvalidID, len(token), 3*MaxIDLength, idQuote(token))
	}
	escapes := 0
	for i := 0; i < len(token); i++ {
		c := token[i]
		if c == '=' {
			escapes++
		} else if !idKept[c] {
			return "", fmt.Errorf("%w: id token holds byte %q at offset %d, which is never written unescaped: %s", ErrInvalidID, c, i, idQuote(token))
		}
	}
	if escapes == 0 {
		if len(token) > MaxIDLength {
			return "", fmt.Errorf("%w: id token decodes to %d bytes, longer than %d bytes: %s", ErrInvalidID, len(token), MaxIDLength, idQuote(token))
		}
		return token, nil
	}
	buf := make([]byte, 0, max(len(token)-2*escapes, 0))
	for i := 0; i < len(token); i++ {
		c := token[i]
		if c != '=' {
			buf = append(buf, c)
			continue
		}
		if i+2 >= len(token) {
			return "", fmt.Errorf("%w: id token has a truncated escape at offset %d: %s", ErrInvalidID, i, idQuote(token))
		}
		hi, lo := idHexValue[token[i+1]], idHexValue[token[i+2]]
		if hi < 0 || lo < 0 {
			return "", fmt.Errorf("%w: id token has an escape at offset %d that is not '=' and two uppercase hex digits: %s", ErrInvalidID, i, idQuote(token))
		}
		b := byte(hi)<<4 | byte(lo)
		if idKept[b] {
			return "", fmt.Errorf("%w: id token escapes %q at offset %d, which must be written as it is: %s", ErrInvalidID, b, i, idQuote(token))
		}
		buf = append(buf, b)
		i += 2
	}
	if len(buf) > MaxIDLength {
		return "", fmt.Errorf("%w: id token decodes to %d bytes, longer than %d bytes: %s", ErrInvalidID, len(buf), MaxIDLength, idQuote(token))
	}
	if !utf8.Valid(buf) {
		return "", fmt.Errorf("%w: id token decodes to invalid UTF-8: %s", ErrInvalidID, idQuote(token))
	}
	return string(buf), nil
}

// ValidateName checks a stable name such as an aggregate type, an event type
// or a store name: 1 to 128 bytes, each an ASCII letter, digit, '-' or '_'.
// Such a name is used as it is in subjects, KV keys and headers, so it is
// never escaped.
//
// kind says what the name is ("aggregate type", "event type", ...) and
// appears in the error, which wraps ErrInvalidName and quotes the name.
// ValidateName does no I/O and is safe for concurrent use.
func ValidateName(kind, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalidName, kind)
	case len(name) > maxNameLength:
		return fmt.Errorf("%w: %s %s is longer than %d bytes", ErrInvalidName, kind, idQuote(name), maxNameLength)
	}
	for i := 0; i < len(name); i++ {
		if !idKept[name[i]] {
			// Name the character, not its first byte: "é", not "Ã".
			r, size := utf8.DecodeRuneInString(name[i:])
			what := fmt.Sprintf("%q", r)
			if r == utf8.RuneError && size <= 1 {
				what = fmt.Sprintf("the byte 0x%02X (not UTF-8)", name[i])
			}
			return fmt.Errorf("%w: %s %s holds %s at offset %d; only ASCII letters, digits, '-' and '_' are allowed", ErrInvalidName, kind, idQuote(name), what, i)
		}
	}
	return nil
}
