#!/usr/bin/env bash
# run.sh runs the sidecar data-path benchmark (bench/proxy): direct, a plain
# TCP relay pair, a Tether sidecar pair, a stunnel pair and an HAProxy pair,
# side by side on loopback with the same client and echo server. As root it
# installs stunnel4 and haproxy from Debian when they are missing. It builds
# tether-ca, tether, tether-sidecar and proxybench into a temporary
# directory, prints the machine, the exact command and the results
# (markdown), and stops every process it started. Flags go to proxybench,
# e.g. bench/proxy/run.sh -rounds 5 -duration 10s (-setups tether-flows,tether-noflows:
# the cost of flow reporting, issue 15). Results go in the
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
. bench/lib.sh

sub=()
if [ "${1:-}" = mem ]; then
  sub=(mem)
  shift
fi
bench_args bench/proxy/run.sh "$@"
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

# proxybench stops its children (echo, tether-ca, the pairs) on SIGTERM;
# they also get SIGKILL if it dies first.
bench_workdir proxybench

go build -o "$work/bin/tether-ca" ./cmd/ca
go build -o "$work/bin/tether-sidecar" ./cmd/sidecar
go build -o "$work/bin/tether-discovery" ./cmd/discovery
go build -o "$work/bin/tether" ./cmd/tether
go build -o "$work/bin/proxybench" ./bench/proxy
base=()
if [ -n "$base_rev" ]; then
  bench/proxy/build-base.sh "$base_rev" "$work/base"
  base=(-baseline-bin "$work/base")
fi

version() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo "not installed"; }
bench_machine "the data path" pkg/proxy internal/sidecar cmd/sidecar
[ ${#sub[@]} != 0 ] || echo "# Debian: stunnel4 $(version stunnel4), haproxy $(version haproxy), libssl3 $(version libssl3)"
bench_load_warning
echo "# bench/proxy/run.sh ${sub[*]:+${sub[*]} }${base_rev:+-baseline-rev $base_rev }$*"
echo "# = proxybench ${sub[*]:+${sub[*]} }-bin <tmp>/bin ${base_rev:+-baseline-bin <tmp>/base }$*"
echo
bench_run "$work/bin/proxybench" ${sub[@]+"${sub[@]}"} -bin "$work/bin" ${base[@]+"${base[@]}"} "$@"
