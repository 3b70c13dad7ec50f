// Package e2e holds end-to-end tests that run Tether's real binaries:
// transparent capture between two "pods" in network namespaces.
package e2e
