#!/usr/bin/env bash
# run.sh runs the admission webhook benchmark (bench/inject) with the
# default settings, or with the flags given, after printing the exact
# command and the machine's load. `make bench-inject` calls it; results go
# in docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
go build -o .cache/injectbench ./bench/inject # compile before the clock starts
echo "# $(date -u +%FT%TZ), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
echo "# bash bench/inject/run.sh $*"
exec .cache/injectbench "$@"
