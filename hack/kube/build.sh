#!/usr/bin/env bash
# Builds a real kube-apiserver (k8s.io/kubernetes) and etcd for tests
# (internal/kubetest) into <repo root>/.cache/kube/bin, or into
# $TETHER_KUBE_BIN_DIR when that is set.
#
#   build.sh [-f] [NAME...]
#
# NAME is a command under cmd/ (kube-apiserver, etcd, kubelet,
# kube-controller-manager, kube-scheduler, kube-proxy, kubectl), "helm"
# (hack/helm/build.sh: Helm, a module of its own), "node" for everything a
# real single-node cluster needs (hack/cluster), or "all".
# Without a name: kube-apiserver, etcd and helm, what the tests need.
#
# A binary is reused when it exists and is newer than this module's go.mod,
# go.sum, its cmd/<name>/main.go and this script, so repeated runs take ~0 s.
# A cold build takes about 4.5 minutes on 2 cores (about 15 s when the Go
# build cache is warm, e.g. in a fresh clone on the same machine; -trimpath
# makes the cache independent of the checkout path). Pass -f to rebuild
# regardless.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${TETHER_KUBE_BIN_DIR:-$root/.cache/kube/bin}"

force=0
if [[ "${1:-}" == "-f" ]]; then
	force=1
	shift
fi
names=()
helm=0
for arg in "$@"; do
	case "$arg" in
	helm) helm=1 ;;
	node) names+=(kube-apiserver etcd kubelet kube-controller-manager kube-scheduler kube-proxy kubectl) ;;
	all)
		names+=(kube-apiserver etcd kubelet kube-controller-manager kube-scheduler kube-proxy kubectl)
		helm=1
		;;
	*)
		if [[ ! -f "$here/cmd/$arg/main.go" ]]; then
			echo "hack/kube/build.sh: no command $arg under $here/cmd (want one of: $(ls "$here/cmd" | tr '\n' ' ')helm, node, all)" >&2
			exit 2
		fi
		names+=("$arg")
		;;
	esac
done
if [[ $# -eq 0 ]]; then
	names=(kube-apiserver etcd)
	helm=1
fi
if [[ $helm -eq 1 ]]; then
	if [[ $force -eq 1 ]]; then
		bash "$root/hack/helm/build.sh" -f
	else
		bash "$root/hack/helm/build.sh"
	fi
fi
if [[ ${#names[@]} -eq 0 ]]; then
	exit 0
fi

# Version stamp, as k8s.io/kubernetes/hack/lib/version.sh does, so that the
# server reports v1.37.2 on /version rather than v0.0.0-master.
kube_version="$(sed -n 's/^[[:space:]]*k8s.io\/kubernetes \(v[0-9][^[:space:]]*\).*/\1/p' "$here/go.mod" | head -n1)"
if [[ -z "$kube_version" ]]; then
	echo "hack/kube/build.sh: cannot find the k8s.io/kubernetes version in $here/go.mod" >&2
	exit 1
fi
major="${kube_version#v}"
major="${major%%.*}"
minor="${kube_version#v*.}"
minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	ldflags+=" -X '$pkg.gitVersion=$kube_version' -X '$pkg.gitMajor=$major' -X '$pkg.gitMinor=$minor'"
	ldflags+=" -X '$pkg.gitTreeState=clean'"
done

stale=()
for name in "${names[@]}"; do
	bin="$out/$name"
	if [[ $force -eq 0 && -x "$bin" && "$bin" -nt "$here/go.mod" && "$bin" -nt "$here/go.sum" && "$bin" -nt "$here/cmd/$name/main.go" && "$bin" -nt "$here/build.sh" ]]; then
		echo "kube-bins: $bin is up to date"
	else
		stale+=("$name")
	fi
done

if [[ ${#stale[@]} -eq 0 ]]; then
	exit 0
fi

mkdir -p "$out"
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

pkgs=()
for name in "${stale[@]}"; do
	pkgs+=("./cmd/$name")
done
echo "kube-bins: building ${stale[*]} ($kube_version) into $out; a cold build takes several minutes"
start=$(date +%s)
(
	cd "$here"
	set -x
	CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}"
)
for name in "${stale[@]}"; do
	mv -f "$tmp/$name" "$out/$name"
	echo "kube-bins: wrote $out/$name"
done
echo "kube-bins: done in $(( $(date +%s) - start ))s"
