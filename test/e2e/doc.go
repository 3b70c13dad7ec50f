// Package e2e holds end-to-end tests that run Tether's real binaries:
// transparent capture between two "pods" in network namespaces, and pod
// specs as the injector and the API server stored them, run with the
// containers' own command lines next to tether-ca and tether-discovery run
// from their own Deployments: one pod getting its identity, and two pods
// talking through their sidecars under AccessPolicies (root only; skipped
// otherwise).
package e2e
