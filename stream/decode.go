package stream

import "github.com/nats-io/nats.go"

// Decode decodes a message of the store's stream (as delivered to a
// consumer) into an Event, with the same checks as Load. Errors are *Error
// values naming the subject and sequence, wrapping ErrDecode,
// ErrUnknownEventType or ErrSchemaVersion.
func (s *Store) Decode(subject string, sequence uint64, header nats.Header, data []byte) (*Event, error) {
	return decodeEvent(s.reg, s.subj, rawMessage{Subject: subject, Sequence: sequence, Header: header, Data: data})
}
