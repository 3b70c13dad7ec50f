#!/usr/bin/env bash
# run.sh runs the CA signing benchmark (bench/signbench) with the default
# settings, or with the flags given, after printing the exact command and the
# machine's load. `make bench` calls it; results go in docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=(go run ./bench/signbench "$@")
go build -o /dev/null ./bench/signbench # compile before the clock starts
echo "# $(date -u +%FT%TZ), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
echo "# ${cmd[*]}"
exec "${cmd[@]}"
