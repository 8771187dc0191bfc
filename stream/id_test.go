package stream

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// requireTokenCharset fails unless token holds only [A-Za-z0-9_=-].
func requireTokenCharset(t testing.TB, token string) {
	t.Helper()
	for i := 0; i < len(token); i++ {
		c := token[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '='
		if !ok {
			t.Fatalf("token %q holds %q at offset %d", token, c, i)
		}
	}
}

// requireIDRoundTrip encodes id, checks the token and decodes it back.
func requireIDRoundTrip(t *testing.T, id string) string {
	t.Helper()
	token, err := EncodeID(id)
	require.NoError(t, err)
	require.NotEmpty(t, token)
	requireTokenCharset(t, token)
	back, err := DecodeID(token)
	require.NoError(t, err)
	require.Equal(t, id, back)
	return token
}

func TestEncodeIDRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		id    string
		token string // expected token; "" = only check the round trip
	}{
		{name: "digits", id: "42", token: "42"},
		{name: "uuid", id: "0b6f7a52-8a3e-4c4c-9d1f-3c6a4b2e9f10", token: "0b6f7a52-8a3e-4c4c-9d1f-3c6a4b2e9f10"},
		{name: "underscore", id: "order_7", token: "order_7"},
		{name: "email", id: "ada@example.com", token: "ada=40example=2Ecom"},
		{name: "dotted", id: "a.b.c", token: "a=2Eb=2Ec"},
		{name: "path", id: "/srv/data/x.txt", token: "=2Fsrv=2Fdata=2Fx=2Etxt"},
		{name: "space", id: "hello world", token: "hello=20world"},
		{name: "star", id: "*", token: "=2A"},
		{name: "gt", id: ">", token: "=3E"},
		{name: "wildcards", id: "a.*.>", token: "a=2E=2A=2E=3E"},
		{name: "equals", id: "k=v", token: "k=3Dv"},
		{name: "looks escaped", id: "=2E", token: "=3D2E"},
		{name: "tab newline", id: "a\tb\nc\r", token: "a=09b=0Ac=0D"},
		{name: "nul", id: "a\x00b", token: "a=00b"},
		{name: "del", id: "\x7f", token: "=7F"},
		{name: "zurich", id: "Zürich", token: "Z=C3=BCrich"},
		{name: "tokyo", id: "東京", token: "=E6=9D=B1=E4=BA=AC"},
		{name: "emoji", id: "cart-🛒", token: "cart-=F0=9F=9B=92"},
		{name: "mixed", id: "ü.x y/z@東", token: ""},
		{name: "max length kept", id: strings.Repeat("a", MaxIDLength), token: strings.Repeat("a", MaxIDLength)},
		{name: "max length escaped", id: strings.Repeat(".", MaxIDLength), token: strings.Repeat("=2E", MaxIDLength)},
		{name: "max length unicode", id: strings.Repeat("ü", MaxIDLength/2), token: strings.Repeat("=C3=BC", MaxIDLength/2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token := requireIDRoundTrip(t, tt.id)
			if tt.token != "" {
				assert.Equal(t, tt.token, token)
			}
		})
	}
}

func TestEncodeIDErrors(t *testing.T) {
	tests := []struct {
		name   string
		id     string
		reason string
	}{
		{name: "empty", id: "", reason: "empty"},
		{name: "too long", id: strings.Repeat("a", MaxIDLength+1), reason: "longer than 512 bytes"},
		{name: "too long unicode", id: strings.Repeat("ü", MaxIDLength/2) + "x", reason: "longer than 512 bytes"},
		{name: "invalid utf8", id: "ab\xffcd", reason: "not valid UTF-8"},
		{name: "truncated rune", id: "Z\xc3", reason: "not valid UTF-8"},
		{name: "surrogate", id: "\xed\xa0\x80", reason: "not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token, err := EncodeID(tt.id)
			require.Error(t, err)
			assert.Empty(t, token)
			assert.ErrorIs(t, err, ErrInvalidID)
			assert.Contains(t, err.Error(), tt.reason)
			assert.Less(t, len(err.Error()), 200, "error message quotes a truncated id")
		})
	}
}

func TestEncodeIDOrdinaryUnchanged(t *testing.T) {
	for _, id := range []string{"1", "abc", "ABC-def_123", "0b6f7a52-8a3e-4c4c-9d1f-3c6a4b2e9f10"} {
		token, err := EncodeID(id)
		require.NoError(t, err)
		assert.Equal(t, id, token)
		// Same string, not a copy.
		assert.Equal(t, 0, int(testing.AllocsPerRun(100, func() { _, _ = EncodeID(id) })), "EncodeID(%q) allocates", id)
		assert.Equal(t, 0, int(testing.AllocsPerRun(100, func() { _, _ = DecodeID(id) })), "DecodeID(%q) allocates", id)
	}
}

func TestEncodeIDDistinct(t *testing.T) {
	ids := []string{"a.b", "a=2Eb", "a_b", "a-b", "a b", "A.B", "a.b.", ".a.b", "a..b"}
	seen := map[string]string{}
	for _, id := range ids {
		token := requireIDRoundTrip(t, id)
		if other, dup := seen[token]; dup {
			t.Fatalf("ids %q and %q share token %q", id, other, token)
		}
		seen[token] = id
	}
}

func TestDecodeIDErrors(t *testing.T) {
	tests := []struct {
		name   string
		token  string
		reason string
	}{
		{name: "empty", token: "", reason: "empty"},
		{name: "dot", token: "a.b", reason: "never written unescaped"},
		{name: "star", token: "*", reason: "never written unescaped"},
		{name: "gt", token: ">", reason: "never written unescaped"},
		{name: "space", token: "a b", reason: "never written unescaped"},
		{name: "non ascii", token: "Zürich", reason: "never written unescaped"},
		{name: "lone equals", token: "=", reason: "truncated escape"},
		{name: "one digit", token: "a=2", reason: "truncated escape"},
		{name: "lowercase hex", token: "a=2eb", reason: "two uppercase hex digits"},
		{name: "non hex", token: "a=ZZb", reason: "two uppercase hex digits"},
		{name: "double equals", token: "==41", reason: "two uppercase hex digits"},
		{name: "escaped letter", token: "=41", reason: "must be written as it is"},
		{name: "escaped digit", token: "x=30", reason: "must be written as it is"},
		{name: "escaped dash", token: "=2D", reason: "must be written as it is"},
		{name: "escaped underscore", token: "=5F", reason: "must be written as it is"},
		{name: "invalid utf8", token: "ab=FF", reason: "invalid UTF-8"},
		{name: "truncated rune", token: "Z=C3", reason: "invalid UTF-8"},
		{name: "too long kept", token: strings.Repeat("a", MaxIDLength+1), reason: "longer than 512 bytes"},
		{name: "too long escaped", token: strings.Repeat("=2E", MaxIDLength-1) + "ab", reason: "decodes to 513 bytes, longer than 512 bytes"},
		{name: "token too long", token: strings.Repeat("=2E", MaxIDLength+1), reason: "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := DecodeID(tt.token)
			require.Error(t, err)
			assert.Empty(t, id)
			assert.ErrorIs(t, err, ErrInvalidID)
			assert.Contains(t, err.Error(), tt.reason)
		})
	}
}

func TestIDValidateName(t *testing.T) {
	valid := []string{"a", "cart", "Cart-Item_added", "v2", strings.Repeat("x", 128)}
	for _, name := range valid {
		assert.NoError(t, ValidateName("event type", name), name)
	}
	tests := []struct {
		name   string
		value  string
		reason string
	}{
		{name: "empty", value: "", reason: "event type is empty"},
		{name: "too long", value: strings.Repeat("x", 129), reason: "longer than 128 bytes"},
		{name: "dot", value: "cart.added", reason: `holds '.'`},
		{name: "star", value: "*", reason: `holds '*'`},
		{name: "gt", value: ">", reason: `holds '>'`},
		{name: "space", value: "cart added", reason: `holds ' '`},
		{name: "equals", value: "a=b", reason: `holds '='`},
		{name: "unicode", value: "Zürich", reason: `holds 'ü' at offset 1`},
		{name: "emoji", value: "cart-🛒", reason: `holds '🛒' at offset 5`},
		{name: "control", value: "a\tb", reason: `holds '\t' at offset 1`},
		{name: "not UTF-8", value: "a\xffb", reason: `holds the byte 0xFF (not UTF-8) at offset 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateName("event type", tt.value)
			require.Error(t, err)
			assert.ErrorIs(t, err, ErrInvalidName)
			assert.Contains(t, err.Error(), "event type")
			assert.Contains(t, err.Error(), tt.reason)
			if tt.value != "" && len(tt.value) <= 64 {
				assert.Contains(t, err.Error(), strconv.Quote(tt.value))
			}
		})
	}
	err := ValidateName("aggregate type", "a.b")
	require.Error(t, err)
	assert.Contains(t, err.Error(), `aggregate type "a.b"`)
}

// idFuzzSeeds are the seeds of both fuzz targets: ordinary ids, ids that
// need escaping, tokens that look escaped, malformed tokens and invalid UTF-8.
var idFuzzSeeds = []string{
	"", "42", "order-7", "a_b", "ada@example.com", "a.b.c", "/srv/data/x.txt",
	"hello world", "*", ">", "a.*.>", "k=v", "=2E", "=", "a=2", "a=2e", "=41",
	"ab=FF", "Zürich", "Z=C3=BCrich", "東京", "cart-🛒", "\x00", "\xff", "Z\xc3",
	strings.Repeat("a", MaxIDLength), strings.Repeat(".", MaxIDLength+1),
}

func FuzzEncodeID(f *testing.F) {
	for _, s := range idFuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		token, err := EncodeID(id)
		valid := id != "" && len(id) <= MaxIDLength && utf8.ValidString(id)
		if !valid {
			if err == nil || !errors.Is(err, ErrInvalidID) {
				t.Fatalf("EncodeID(%q) = %q, %v; want ErrInvalidID", id, token, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("EncodeID(%q): %v", id, err)
		}
		requireTokenCharset(t, token)
		back, err := DecodeID(token)
		if err != nil {
			t.Fatalf("DecodeID(%q) of EncodeID(%q): %v", token, id, err)
		}
		if back != id {
			t.Fatalf("DecodeID(EncodeID(%q)) = %q", id, back)
		}
		again, err := EncodeID(back)
		if err != nil || again != token {
			t.Fatalf("EncodeID not canonical for %q: %q then %q, %v", id, token, again, err)
		}
	})
}

func FuzzDecodeID(f *testing.F) {
	for _, s := range idFuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		id, err := DecodeID(token)
		if err != nil {
			if !errors.Is(err, ErrInvalidID) {
				t.Fatalf("DecodeID(%q): %v does not wrap ErrInvalidID", token, err)
			}
			return
		}
		again, err := EncodeID(id)
		if err != nil {
			t.Fatalf("EncodeID(DecodeID(%q) = %q): %v", token, id, err)
		}
		if again != token {
			t.Fatalf("EncodeID(DecodeID(%q)) = %q: token is not canonical", token, again)
		}
	})
}

func BenchmarkEncodeID(b *testing.B) {
	for _, id := range []string{"0b6f7a52-8a3e-4c4c-9d1f-3c6a4b2e9f10", "ada@example.com"} {
		b.Run(id, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := EncodeID(id); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
