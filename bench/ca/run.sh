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
. bench/lib.sh

bench_args bench/ca/run.sh "$@"
set -- ${args[@]+"${args[@]}"}

# cabench stops its tether-ca on SIGTERM; the CA also gets SIGKILL if
# cabench dies first.
bench_workdir cabench

go build -o "$work/bin/tether-ca" ./cmd/ca
go build -o "$work/bin/tether" ./cmd/tether
go build -o "$work/bin/cabench" ./bench/ca
base=()
if [ -n "$base_rev" ]; then
  bench/proxy/build-base.sh "$base_rev" "$work/base" tether-ca tether
  base=(-baseline-bin "$work/base")
fi

bench_machine "the CA" pkg/identity internal/caserver cmd/ca
bench_load_warning
echo "# bench/ca/run.sh ${base_rev:+-baseline-rev $base_rev }$*"
echo "# = cabench -bin <tmp>/bin ${base_rev:+-baseline-bin <tmp>/base }$*"
echo
bench_run "$work/bin/cabench" -bin "$work/bin" ${base[@]+"${base[@]}"} "$@"
