#!/usr/bin/env bash
# build-base.sh REV DIR [BINARY...] builds the tether-sidecar (or the
# binaries named, e.g. tether-ca tether) of git revision REV (a commit,
# branch or tag of this repository) into DIR, for proxybench's
# tether-base setup (-baseline-bin DIR) and `proxybench mem -baseline-bin
# DIR`: the older sidecar measured side by side with the current one in
# the same run (both get their SVIDs from the current tether-ca, so only
# the sidecar is built); bench/ca/run.sh builds tether-ca and tether with
# it. It checks REV out in a temporary git worktree,
# builds with the Makefile's tags (GOFLAGS=-tags=grpcnotrace), writes
# DIR/REVISION (the full commit) and removes the worktree, also when the
# build fails or is interrupted. bench/proxy/run.sh -baseline-rev REV runs
# it for you.
set -euo pipefail
if [ $# -lt 2 ] || [ -z "$1" ] || [ -z "$2" ]; then
  echo "usage: bench/proxy/build-base.sh REV DIR [BINARY...]  (e.g. bench/proxy/build-base.sh main /tmp/tether-base tether-ca tether)" >&2
  exit 2
fi
rev=$1 out=$2
shift 2
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(tether-sidecar)
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
  for b in "${bins[@]}"; do
    case $b in
      tether) pkg=./cmd/tether ;;
      tether-*) pkg=./cmd/${b#tether-} ;;
      *) echo "build-base.sh: unknown binary $b (want tether or tether-NAME)" >&2; exit 2 ;;
    esac
    go build -o "$out/$b" "$pkg"
  done
)
echo "$commit" >"$out/REVISION"
echo "build-base.sh: built $(git log -1 --format='%h %s' "$commit") into $out" >&2
