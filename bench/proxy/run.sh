#!/usr/bin/env bash
# run.sh runs the sidecar data-path benchmark (bench/proxy): direct, a plain
# TCP relay pair, a Tether sidecar pair, a stunnel pair and an HAProxy pair,
# side by side on loopback with the same client and echo server. As root it
# installs stunnel4 and haproxy from Debian when they are missing. It builds
# tether-ca, tether, tether-sidecar and proxybench into a temporary
# directory, prints the machine, the exact command and the results
# (markdown), and stops every process it started. Flags go to proxybench,
# e.g. bench/proxy/run.sh -rounds 5 -duration 10s. Results go in the
# "Sidecar data path" section of docs/BENCHMARKS.md.
#
# -baseline-rev REV (e.g. main, or a commit) also builds the tether-sidecar
# of git revision REV (bench/proxy/build-base.sh) and runs it as setup
# tether-base beside tether: the report then gives tether ÷ tether-base per
# round and the spread of those ratios.
#
# bench/proxy/run.sh mem [flags] runs the memory benchmark instead
# (proxybench mem: 10 sidecars sharing one binary, idle and under load,
# beside 10 relays; section "Memory per extra sidecar"); -baseline-rev
# works there too.
set -euo pipefail
# Same build tags as the Makefile (see its GOFLAGS comment).
[[ " ${GOFLAGS:-} " == *grpcnotrace* ]] || export GOFLAGS="${GOFLAGS:-} -tags=grpcnotrace"
cd "$(dirname "$0")/../.."

sub=() base_rev="" args=()
if [ "${1:-}" = mem ]; then
  sub=(mem)
  shift
fi
while [ $# -gt 0 ]; do
  case $1 in
    -baseline-rev | --baseline-rev)
      [ $# -ge 2 ] || { echo "bench/proxy/run.sh: -baseline-rev needs a git revision, e.g. -baseline-rev main" >&2; exit 2; }
      base_rev=$2; shift ;;
    -baseline-rev=* | --baseline-rev=*) base_rev=${1#*=} ;;
    *) args+=("$1") ;;
  esac
  shift
done
set -- ${args[@]+"${args[@]}"}

if [ ${#sub[@]} = 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing="$missing stunnel4"
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing="$missing haproxy"
  if [ -n "$missing" ]; then
    echo "installing:$missing" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/proxybench.XXXXXX")
pid=""
cleanup() {
  # proxybench stops its children (echo, tether-ca, the pairs) on SIGTERM;
  # they also get SIGKILL if it dies first.
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o "$work/bin/tether-ca" ./cmd/ca
go build -o "$work/bin/tether-sidecar" ./cmd/sidecar
go build -o "$work/bin/tether" ./cmd/tether
go build -o "$work/bin/proxybench" ./bench/proxy
base=()
if [ -n "$base_rev" ]; then
  bench/proxy/build-base.sh "$base_rev" "$work/base"
  base=(-baseline-bin "$work/base")
fi

version() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo "not installed"; }
cpus=$(nproc)
load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- pkg/proxy internal/sidecar cmd/sidecar 2>/dev/null; then
  rev="$rev + uncommitted changes in the data path"
fi
echo "# $(date -u +%FT%TZ); $cpus CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1); load average $load"
echo "# $(go version | cut -d' ' -f3-); commit $rev"
[ -z "$base_rev" ] || echo "# tether-base: $base_rev = commit $(git rev-parse --short "$base_rev")"
[ ${#sub[@]} != 0 ] || echo "# Debian: stunnel4 $(version stunnel4), haproxy $(version haproxy), libssl3 $(version libssl3)"
if awk -v l="${load%% *}" -v n="$cpus" 'BEGIN { exit !(l > n / 2) }'; then
  echo "# warning: load average ${load%% *} on $cpus CPUs; other work will skew the figures" >&2
fi
echo "# bench/proxy/run.sh ${sub[*]:+${sub[*]} }${base_rev:+-baseline-rev $base_rev }$*"
echo "# = proxybench ${sub[*]:+${sub[*]} }-bin <tmp>/bin ${base_rev:+-baseline-bin <tmp>/base }$*"
echo
"$work/bin/proxybench" ${sub[@]+"${sub[@]}"} -bin "$work/bin" ${base[@]+"${base[@]}"} "$@" &
pid=$!
wait "$pid"
