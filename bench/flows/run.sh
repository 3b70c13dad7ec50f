#!/usr/bin/env bash
# run.sh runs the observed-traffic table benchmark (bench/flows): the
# memory of tether-discovery's edge table at 10,000 services and 1,000
# sidecars beside a plain map of the same edges, with the default
# settings or the flags given, after printing the machine, the commit and
# the exact command. Results go in docs/BENCHMARKS.md, "Observed-traffic
# table".
set -euo pipefail
[[ " ${GOFLAGS:-} " == *grpcnotrace* ]] || export GOFLAGS="${GOFLAGS:-} -tags=grpcnotrace"
cd "$(dirname "$0")/../.."
. bench/lib.sh
bench_args bench/flows/run.sh "$@"
set -- ${args[@]+"${args[@]}"}
bench_workdir flowsbench
go build -o "$work/flowsbench" ./bench/flows # compile before the clock starts
bench_machine "the flow table" pkg/discovery/flows bench/flows
bench_load_warning
echo "# bash bench/flows/run.sh $*"
echo
bench_run "$work/flowsbench" "$@"
