package stream

import "testing"

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
