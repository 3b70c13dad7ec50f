#!/usr/bin/env bash
# Builds everything the real-node cluster runs that Debian does not package,
# into <repo>/.cache/kube/bin (or $TETHER_KUBE_BIN_DIR):
#   - kubelet, kube-controller-manager, kube-scheduler, kube-proxy, kubectl,
#     kube-apiserver and etcd, from k8s.io/kubernetes (hack/kube/build.sh node);
#   - coredns, with only the plugins the node uses (hack/coredns);
#   - tether-image (hack/image: image builder and the node's registry);
# and the cluster program itself into <repo>/.cache/cluster/tether-cluster.
# Each is reused when up to date; the Go build cache makes a rebuild quick.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${TETHER_KUBE_BIN_DIR:-$root/.cache/kube/bin}"

bash "$root/hack/kube/build.sh" node

mkdir -p "$out" "$root/.cache/cluster"
# CoreDNS with the plugins the node's Corefile uses (hack/coredns, a module
# of its own); go build skips the work when nothing changed.
(cd "$root/hack/coredns" && GOFLAGS= CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags '-s -w' -o "$out/coredns" .)
echo "cluster-bins: coredns built"

cd "$root"
CGO_ENABLED=0 go build -trimpath -o "$out/tether-image" ./hack/image
CGO_ENABLED=0 go build -trimpath -o "$root/.cache/cluster/tether-cluster" ./hack/cluster
echo "cluster-bins: tether-image and tether-cluster built"
