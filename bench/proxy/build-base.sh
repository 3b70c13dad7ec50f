#!/usr/bin/env bash
# build-base.sh REV DIR builds the tether-sidecar of git revision REV (a
# commit, branch or tag of this repository) into DIR, for proxybench's
# tether-base setup (-baseline-bin DIR) and `proxybench mem -baseline-bin
# DIR`: the older sidecar measured side by side with the current one in
# the same run (both get their SVIDs from the current tether-ca, so only
# the sidecar is built). It checks REV out in a temporary git worktree,
# builds with the Makefile's tags (GOFLAGS=-tags=grpcnotrace), writes
# DIR/REVISION (the full commit) and removes the worktree, also when the
# build fails or is interrupted. bench/proxy/run.sh -baseline-rev REV runs
# it for you.
set -euo pipefail
if [ $# -ne 2 ] || [ -z "$1" ] || [ -z "$2" ]; then
  echo "usage: bench/proxy/build-base.sh REV DIR  (e.g. bench/proxy/build-base.sh main /tmp/tether-base)" >&2
  exit 2
fi
rev=$1 out=$2
[[ " ${GOFLAGS:-} " == *grpcnotrace* ]] || export GOFLAGS="${GOFLAGS:-} -tags=grpcnotrace"
cd "$(dirname "$0")/../.."
commit=$(git rev-parse --verify --quiet "$rev^{commit}") || {
  echo "build-base.sh: $rev is not a commit of this repository" >&2
  exit 2
}
mkdir -p "$out"
out=$(cd "$out" && pwd)
tree=$(mktemp -d "${TMPDIR:-/tmp}/tether-base.XXXXXX")
cleanup() {
  git worktree remove --force "$tree" 2>/dev/null || true
  rm -rf "$tree"
  git worktree prune 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
git worktree add --quiet --detach "$tree" "$commit"
(
  cd "$tree"
  go build -o "$out/tether-sidecar" ./cmd/sidecar
)
echo "$commit" >"$out/REVISION"
echo "build-base.sh: built $(git log -1 --format='%h %s' "$commit") into $out" >&2
