// Package netns builds throwaway "pods" for end-to-end tests: Linux network
// namespaces joined by veth pairs, with helpers to run Go code and processes
// inside them (optionally as another UID, the way the sidecar runs as 1337).
//
// Every namespace a test creates has a unique name, uses only the private
// addresses the test gives it, and is deleted when the test ends, so tests
// never touch the host's network. The package needs root (CAP_SYS_ADMIN and
// CAP_NET_ADMIN) and the `ip` (iproute2) and `iptables` tools; RequireRoot
// skips a test when they are missing, or fails it when CI=true or
// TETHER_REQUIRE_NETNS=1 is set. It builds only on Linux, so tests that use it
// carry a linux build constraint.
package netns
