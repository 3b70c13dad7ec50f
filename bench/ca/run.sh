#!/usr/bin/env bash
# run.sh runs the CA load benchmark (bench/ca): a real tether-ca process
# flooded with idle unauthenticated connections (20,000 by default, from 8
# loopback source addresses and then from one), while a legitimate caller
# bootstraps SVIDs; it reports the CA's memory and the issuance latency and
# success. It builds tether-ca, tether and cabench into a temporary
# directory, prints the machine, the exact command and the results
# (markdown), and stops every process it started. Flags go to cabench, e.g.
# bench/ca/run.sh -conns 20000 -hold 20s -rounds 3. Results go in the "CA
# under unauthenticated load" section of docs/BENCHMARKS.md.
#
# -baseline-rev REV (e.g. main, or a commit) also builds the tether-ca and
# tether of git revision REV (bench/proxy/build-base.sh) and runs them in
# the same rounds: the report then gives tether ÷ tether-base.
#
# It raises the open-file limit (cabench does, for itself and the CA): run
# it as root or with a hard limit above twice -conns.
set -euo pipefail
[[ " ${GOFLAGS:-} " == *grpcnotrace* ]] || export GOFLAGS="${GOFLAGS:-} -tags=grpcnotrace"
cd "$(dirname "$0")/../.."

base_rev="" args=()
while [ $# -gt 0 ]; do
  case $1 in
    -baseline-rev | --baseline-rev)
      [ $# -ge 2 ] || { echo "bench/ca/run.sh: -baseline-rev needs a git revision, e.g. -baseline-rev main" >&2; exit 2; }
      base_rev=$2; shift ;;
    -baseline-rev=* | --baseline-rev=*) base_rev=${1#*=} ;;
    *) args+=("$1") ;;
  esac
  shift
done
set -- ${args[@]+"${args[@]}"}

work=$(mktemp -d "${TMPDIR:-/tmp}/cabench.XXXXXX")
pid=""
cleanup() {
  # cabench stops its tether-ca on SIGTERM; the CA also gets SIGKILL if
  # cabench dies first.
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o "$work/bin/tether-ca" ./cmd/ca
go build -o "$work/bin/tether" ./cmd/tether
go build -o "$work/bin/cabench" ./bench/ca
base=()
if [ -n "$base_rev" ]; then
  bench/proxy/build-base.sh "$base_rev" "$work/base" tether-ca tether
  base=(-baseline-bin "$work/base")
fi

cpus=$(nproc)
load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- pkg/identity internal/caserver cmd/ca 2>/dev/null; then
  rev="$rev + uncommitted changes in the CA"
fi
echo "# $(date -u +%FT%TZ); $cpus CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1); load average $load"
echo "# $(go version | cut -d' ' -f3-); commit $rev"
[ -z "$base_rev" ] || echo "# tether-base: $base_rev = commit $(git rev-parse --short "$base_rev")"
if awk -v l="${load%% *}" -v n="$cpus" 'BEGIN { exit !(l > n / 2) }'; then
  echo "# warning: load average ${load%% *} on $cpus CPUs; other work will skew the figures" >&2
fi
echo "# bench/ca/run.sh ${base_rev:+-baseline-rev $base_rev }$*"
echo "# = cabench -bin <tmp>/bin ${base_rev:+-baseline-bin <tmp>/base }$*"
echo
"$work/bin/cabench" -bin "$work/bin" ${base[@]+"${base[@]}"} "$@" &
pid=$!
wait "$pid"
