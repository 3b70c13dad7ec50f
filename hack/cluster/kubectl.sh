#!/usr/bin/env bash
# kubectl (v1.37.2, from hack/kube) against the real node (make cluster-up),
# run inside its namespaces, where the API server listens.
#   hack/cluster/kubectl.sh get nodes -o wide
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${TETHER_CLUSTER_DIR:-$root/.cache/cluster/run}"
bin="${TETHER_KUBE_BIN_DIR:-$root/.cache/kube/bin}"
exec "$here/exec.sh" "$bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"
