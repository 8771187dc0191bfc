package consumers

import "strings"

// delivery is what a JetStream delivery's reply subject says about it: the
// stream and consumer sequences and the number of matching messages stored
// after it.
type delivery struct {
	stream, consumer, pending uint64
}

// parseDelivery reads a delivery's reply (ack) subject, as
// jetstream.Msg.Metadata does, without allocating: a consumer reads it for
// every event. The subject is
//
//	$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>
//
// from older servers, or, from newer ones, with a domain and an account
// hash before the stream name and possibly more tokens after pending:
//
//	$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>.<token>
//
// ok is false when the subject is neither, or a number is not one.
func parseDelivery(reply string) (d delivery, ok bool) {
	rest, found := strings.CutPrefix(reply, "$JS.ACK.")
	if !found {
		return delivery{}, false
	}
	skip := 0 // tokens before <delivered>
	switch n := strings.Count(rest, ".") + 1; {
	case n == 7:
		skip = 2
	case n >= 9:
		skip = 4
	default:
		return delivery{}, false
	}
	for range skip + 1 { // the names, and <delivered>
		_, rest, _ = strings.Cut(rest, ".")
	}
	var tok string
	var nums [4]uint64 // sseq, cseq, time, pending
	for i := range nums {
		tok, rest, _ = strings.Cut(rest, ".")
		if nums[i], ok = parseNum(tok); !ok {
			return delivery{}, false
		}
	}
	return delivery{stream: nums[0], consumer: nums[1], pending: nums[3]}, true
}

// parseNum parses a decimal number of at most 19 digits.
func parseNum(s string) (n uint64, ok bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}
