// Package natserr recognises the permission violations a NATS server
// reports asynchronously on a connection.
//
// A publish the server refuses for lack of permission is dropped without an
// answer: the server sends "-ERR 'Permissions Violation for Publish to
// "subject"'" and nats.go records it as the connection's last error (and
// hands it to the ErrorHandler), nothing else. A request on that subject
// then looks exactly like one whose reply was lost. Code that waits for a
// reply uses Watch to tell the two apart while it waits: a violation naming
// its subject, reported after the request was sent, is a definite refusal,
// so the caller can fail at once with an error that says so instead of
// timing out (and, for an append, instead of reporting an unknown outcome:
// a refused publish is never stored).
package natserr

import (
	"errors"
	"regexp"
	"strings"

	"github.com/nats-io/nats.go"
)

// Op is what the server refused.
type Op string

const (
	// Publish: the connection may not publish to the subject.
	Publish Op = "Publish"
	// Subscribe: the connection may not subscribe to the subject (for a
	// request, its reply inbox: the request may have been handled, its
	// answer was dropped).
	Subscribe Op = "Subscription"
)

// Violation is one permission violation the server reported.
type Violation struct {
	Op      Op
	Subject string
	Err     error // as nats.go reported it; wraps nats.ErrPermissionViolation
}

var violationRe = regexp.MustCompile(`(?i)permissions violation for (publish|subscription) to "([^"]+)"`)

// Parse reads a violation from an error nats.go reported. ok is false for
// any other error.
func Parse(err error) (v Violation, ok bool) {
	if err == nil || !errors.Is(err, nats.ErrPermissionViolation) {
		return Violation{}, false
	}
	m := violationRe.FindStringSubmatch(err.Error())
	if m == nil {
		return Violation{}, false
	}
	op := Publish
	if strings.EqualFold(m[1], "subscription") {
		op = Subscribe
	}
	return Violation{Op: op, Subject: m[2], Err: err}, true
}

// Watch remembers a connection's last error before a request is sent, so
// that a violation reported afterwards can be told from an older one (the
// last error of a connection stays set until another replaces it).
type Watch struct {
	nc     *nats.Conn
	before error
}

// NewWatch starts watching nc. Call it before sending the request. A nil
// connection gives a Watch that never reports anything.
func NewWatch(nc *nats.Conn) Watch {
	if nc == nil {
		return Watch{}
	}
	return Watch{nc: nc, before: nc.LastError()}
}

// Denied returns the violation reported since NewWatch for publishing to
// one of subjects, or for subscribing to a subject that starts with one of
// replyPrefixes (a reply inbox, e.g. "_INBOX."), and ok. The connection
// holds only its last error, so a violation can be missed when another
// error replaced it; a caller must still have its own timeout.
func (w Watch) Denied(subjects []string, replyPrefixes ...string) (v Violation, ok bool) {
	if w.nc == nil {
		return Violation{}, false
	}
	err := w.nc.LastError()
	if err == nil || same(err, w.before) {
		return Violation{}, false
	}
	v, ok = Parse(err)
	if !ok {
		return Violation{}, false
	}
	switch v.Op {
	case Publish:
		for _, s := range subjects {
			if v.Subject == s {
				return v, true
			}
		}
	case Subscribe:
		for _, p := range replyPrefixes {
			if p != "" && strings.HasPrefix(v.Subject, p) {
				return v, true
			}
		}
	}
	return Violation{}, false
}

// same compares two errors by identity without panicking on an error type
// that is not comparable.
func same(a, b error) (eq bool) {
	defer func() {
		if recover() != nil {
			eq = false
		}
	}()
	return a == b
}
