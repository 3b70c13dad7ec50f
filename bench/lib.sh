# lib.sh: the shell common to bench/ca/run.sh and bench/proxy/run.sh.
# Source it from the repository root, after `set -euo pipefail`.

# bench_args SCRIPT ARG...: base_rev gets the git revision of
# -baseline-rev REV (or -baseline-rev=REV), args the other arguments.
bench_args() {
  local script=$1
  shift
  base_rev="" args=()
  while [ $# -gt 0 ]; do
    case $1 in
      -baseline-rev | --baseline-rev)
        [ $# -ge 2 ] || { echo "$script: -baseline-rev needs a git revision, e.g. -baseline-rev main" >&2; exit 2; }
        base_rev=$2; shift ;;
      -baseline-rev=* | --baseline-rev=*) base_rev=${1#*=} ;;
      *) args+=("$1") ;;
    esac
    shift
  done
}

# bench_workdir NAME: work becomes a new temporary directory, removed at
# exit; the process whose id is in pid then gets SIGTERM first and is
# waited for (the benchmark drivers stop their children on SIGTERM; the
# children also get SIGKILL if the driver dies first).
bench_workdir() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  pid=""
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}

# bench_machine WHAT PATH...: prints the machine, the Go version and the
# commit (marked when PATH... has uncommitted changes, "in WHAT") as
# comment lines, and the baseline's commit with -baseline-rev; sets cpus
# and load.
bench_machine() {
  local what=$1 rev
  shift
  cpus=$(nproc)
  load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)
  rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if ! git diff --quiet HEAD -- "$@" 2>/dev/null; then
    rev="$rev + uncommitted changes in $what"
  fi
  echo "# $(date -u +%FT%TZ); $cpus CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1); load average $load"
  echo "# $(go version | cut -d' ' -f3-); commit $rev"
  [ -z "$base_rev" ] || echo "# tether-base: $base_rev = commit $(git rev-parse --short "$base_rev")"
}

# bench_load_warning: warns on standard error when the load average is above
# half the CPUs (after bench_machine).
bench_load_warning() {
  if awk -v l="${load%% *}" -v n="$cpus" 'BEGIN { exit !(l > n / 2) }'; then
    echo "# warning: load average ${load%% *} on $cpus CPUs; other work will skew the figures" >&2
  fi
}

# bench_run CMD ARG...: runs the benchmark driver in the background, so that
# bench_cleanup can stop it, and waits for it.
bench_run() {
  "$@" &
  pid=$!
  wait "$pid"
}
