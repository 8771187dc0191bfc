// Package securitytest holds esnats's security tests: NATS users and
// permissions for each role (service, reader, projection worker, operator,
// projection control plane, cross-account replication), TLS with server and
// client certificates, and accounts isolating two services' stores.
//
// The server configuration the tests run is read from the ```conf blocks of
// docs/security.md, verbatim (only file paths and password variables are
// filled in), so that the documented permission sets are the tested ones.
// The package has no code besides its tests.
package securitytest
