// Package e2e holds end-to-end tests that run Tether's real binaries:
// transparent capture between two "pods" in network namespaces, and a pod
// spec as the injector and the API server stored it, run with the
// containers' own command lines (root only; skipped otherwise).
package e2e
