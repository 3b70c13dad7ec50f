#!/usr/bin/env bash
# Runs a command inside the real node's network and mount namespaces
# (make cluster-up): tcpdump on the pods' interfaces, ip, ctr, iptables-save.
#   hack/cluster/exec.sh ip -br addr
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="${TETHER_CLUSTER_DIR:-$root/.cache/cluster/run}"
if [[ ! -e "$dir/ns/net" || ! -e "$dir/pids/kube-apiserver.pid" ]]; then
	echo "hack/cluster/exec.sh: no cluster in $dir; start one with: make cluster-up" >&2
	exit 2
fi
if [[ $# -eq 0 ]]; then
	echo "usage: hack/cluster/exec.sh COMMAND [ARG...]" >&2
	exit 2
fi
# --wd: nsenter would otherwise start the command in / of the mount namespace.
exec nsenter --net="$dir/ns/net" --mount="$dir/ns/mnt" --wd="$PWD" -- "$@"
