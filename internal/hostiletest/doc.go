// Package hostiletest holds esnats's tests of hostile and broken input:
// messages written into an event store's subjects by another client (missing
// or wrong headers, wrong versions, garbage or oversized bodies, subjects
// that are not an aggregate's), invalid input at the API (ids, names,
// oversized and too many events, unregistered types) and corrupt snapshots.
// Each is given to every reader esnats has (Store.Load, Store.ReadAll,
// Repository.Load/Update, a consumer with the Park and Stop policies, a
// projection runner), which must neither crash nor hang, must name the
// subject and sequence, and must lose nothing.
//
// The tests write what they observe into the tables of docs/bad-input.md
// (go test ./internal/hostiletest -update) and, on a full run, fail when the
// page no longer says what esnats does. The package has no code besides its
// tests.
package hostiletest
