// Package membench measures the memory of the programs esnats users run
// (a projection worker catching up a large store, a service whose
// repository caches many aggregates), each in its own process so that its
// peak resident set is its own. It has no code outside its benchmark:
//
//	go test -run '^$' -bench Memory -benchtime 1x ./internal/membench/
//
// docs/performance.md reports the figures.
package membench
