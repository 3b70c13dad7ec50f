// Package proxy is the sidecar's data path. Inbound, it terminates mutual
// TLS with the pod's SVID, authorizes the caller's SPIFFE ID for the
// destination port and forwards plaintext to the app. Outbound, it
// originates mutual TLS to mesh destinations and checks that the server is
// one of the identities expected to serve them. Any TCP protocol works,
// server-first ones included: the proxy connects upstream as soon as a
// connection is accepted and never waits for the client to speak.
package proxy
