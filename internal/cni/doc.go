// Package cni is tether-cni, the chained CNI plugin that programs a meshed
// pod's transparent capture from outside the pod, so the pod needs no
// tether-init container with NET_ADMIN (docs/cni.md).
//
// The container runtime calls it last in the node's chain, in the host's
// network namespace, with the pod's network namespace path. For ADD it reads
// the pod from the API server (the kubeconfig the node agent writes, whose
// ServiceAccount may only get pods) and, when the injector marked the pod
// for CNI redirection, installs inside the pod's network namespace the rules
// `tether-sidecar init` would (package capture: the same Config, the same
// Apply). It passes the previous plugin's result through unchanged. DEL
// removes Tether's chains (capture.Cleanup) and nothing else; CHECK verifies
// them (capture.Verify).
//
// It fails closed: when the pod cannot be read (API server unreachable,
// credentials refused, pod not found) or its annotations are malformed, ADD
// fails with an error saying what to fix, and the kubelet retries; a pod is
// never started uncaptured because its annotations could not be read.
//
// The package links no Kubernetes client: it reads one object with
// net/http, so the binary stays small (it is copied to every node).
package cni
