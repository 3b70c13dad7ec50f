#!/usr/bin/env bash
# Builds helm (helm.sh/helm/v4 at the version hack/helm/go.mod pins, from the
# Go module proxy) into $TETHER_KUBE_BIN_DIR/helm (default
# <repo root>/.cache/kube/bin/helm) for internal/install's test that
# `helm template` and `tether install` render the same objects.
# hack/kube/build.sh runs it (make kube-bins, make test).
#
#   build.sh [-f]
#
# The binary is reused when it is newer than go.mod, go.sum, main.go and
# this script; -f rebuilds regardless. Measured on the shared 2-core machine
# (docs/install.md, "Tests of the chart"): cold 2159 s under heavy load,
# warm 12 s, up to date 0.2 s.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${TETHER_KUBE_BIN_DIR:-$root/.cache/kube/bin}"
bin="$out/helm"

if [[ "${1:-}" != "-f" && -x "$bin" && "$bin" -nt "$here/go.mod" && "$bin" -nt "$here/go.sum" && "$bin" -nt "$here/main.go" && "$bin" -nt "$here/build.sh" ]]; then
	echo "kube-bins: $bin is up to date"
	exit 0
fi

version="$(sed -n 's/^require helm.sh\/helm\/v4 \(v[0-9][^[:space:]]*\).*/\1/p' "$here/go.mod" | head -n1)"
if [[ -z "$version" ]]; then
	echo "hack/helm/build.sh: cannot find the helm.sh/helm/v4 version in $here/go.mod" >&2
	exit 1
fi
mkdir -p "$out"
tmp="$(mktemp -d "$out/.build-helm.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "kube-bins: building helm $version into $out; a cold build takes a few minutes"
start=$(date +%s)
(
	cd "$here"
	set -x
	CGO_ENABLED=0 go build -mod=readonly -trimpath \
		-ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version" -o "$tmp/helm" .
)
mv -f "$tmp/helm" "$bin"
echo "kube-bins: wrote $bin ($("$bin" version --short 2>/dev/null || echo "version unknown")) in $(( $(date +%s) - start ))s"
