#!/usr/bin/env bash
# run.sh runs the two discovery-side benchmarks of docs/BENCHMARKS.md, one
# after the other, and prints their tables:
#
#   1. bench/dns: the sidecar's DNS server (pkg/proxy/dns) with dnsperf,
#      side by side with a minimal miekg/dns server (DNS_ARGS);
#   2. bench/discoveryscale: a registry of 10,000 services / 50,000
#      endpoints / 2,000 AccessPolicies served to 1,000 ADS clients, side by
#      side with the same mesh at 1/10 scale (DISCOVERY_ARGS).
#
# As root it installs Debian's dnsperf when it is missing. Both programs
# are built into a temporary directory first and stop every process they
# start. `make bench-discovery` calls it; `bench/discovery/run.sh dns` or
# `bench/discovery/run.sh discovery` runs one of them. Example:
#   DISCOVERY_ARGS="-rounds 5" DNS_ARGS="-rounds 9" bench/discovery/run.sh
# Results go in the "Discovery at scale" and "Sidecar DNS" sections of
# docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
which=${1:-all}

if [ "$which" != discovery ] && ! command -v dnsperf >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing: dnsperf" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf >/dev/null
  else
    echo "bench/discovery/run.sh: dnsperf is missing; install Debian's dnsperf (as root this script does)" >&2
    exit 1
  fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/discoverybench.XXXXXX")
trap 'rm -rf "$work"' EXIT
go build -o "$work/dnsbench" ./bench/dns
go build -o "$work/discoveryscale" ./bench/discoveryscale

rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD -- pkg/discovery pkg/proxy/dns 2>/dev/null; then
  rev="$rev + uncommitted changes in pkg/discovery or pkg/proxy/dns"
fi
header() {
  echo "# $(date -u +%FT%TZ); $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1); load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# $(go version | cut -d' ' -f3-); commit $rev"
  echo "# $*"
}

if [ "$which" = all ] || [ "$which" = dns ]; then
  header "dnsbench run ${DNS_ARGS:-}"
  # shellcheck disable=SC2086
  "$work/dnsbench" run ${DNS_ARGS:-}
  echo
fi
if [ "$which" = all ] || [ "$which" = discovery ]; then
  header "discoveryscale ${DISCOVERY_ARGS:-}"
  # shellcheck disable=SC2086
  "$work/discoveryscale" ${DISCOVERY_ARGS:-}
fi
