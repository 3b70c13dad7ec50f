#!/usr/bin/env bash
# Runs Tether's standalone default on loopback: starts tether-ca on a disk
# store in .tether/, creates a join token, and fetches an SVID with the CLI.
# Leaves the CA running with --keep; otherwise stops it at the end.
set -euo pipefail
# Same build tags as the Makefile (see its GOFLAGS comment).
[[ " ${GOFLAGS:-} " == *grpcnotrace* ]] || export GOFLAGS="${GOFLAGS:-} -tags=grpcnotrace"
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = "--keep" ] && keep=true
home=${TETHER_HOME:-$PWD/.tether}
ca_addr=${TETHER_CA_ADDR:-127.0.0.1:8443}
admin_addr=${TETHER_CA_ADMIN_ADDR:-127.0.0.1:15014}
id=${TETHER_SPIFFE_ID:-spiffe://cluster.local/ns/default/sa/demo}

echo "== building tether-ca and tether into bin/"
mkdir -p bin
go build -o bin/tether-ca ./cmd/ca
go build -o bin/tether ./cmd/tether

mkdir -p "$home"
echo "== starting tether-ca (state in $home/ca, log in $home/ca.log)"
bin/tether-ca --store-dir "$home/ca" --listen "$ca_addr" --admin-listen "$admin_addr" >"$home/ca.log" 2>&1 &
ca_pid=$!
stop() { kill "$ca_pid" 2>/dev/null && wait "$ca_pid" 2>/dev/null || true; }
$keep || trap stop EXIT
for _ in $(seq 100); do
  [ -S "$home/ca/admin.sock" ] && break
  kill -0 "$ca_pid" 2>/dev/null || { cat "$home/ca.log"; echo "tether-ca exited"; exit 1; }
  sleep 0.1
done
export TETHER_CA_ADMIN_SOCKET="$home/ca/admin.sock"

echo "== creating a join token for $id"
rm -f "$home/join.token"
bin/tether ca token create --spiffe-id "$id" --ttl 10m --out "$home/join.token"

echo "== fetching an SVID with it (read from the 0600 file, not the command line)"
bin/tether svid fetch --ca "$ca_addr" --bundle "$home/ca/bundle.pem" --join-token-file "$home/join.token" --out "$home/svid"

if command -v openssl >/dev/null; then
  echo "== openssl verify"
  openssl verify -CAfile "$home/svid/bundle.pem" -untrusted "$home/svid/svid.pem" "$home/svid/svid.pem"
  openssl x509 -in "$home/svid/svid.pem" -noout -ext subjectAltName
fi
echo "== CA status"
bin/tether ca status
if $keep; then
  echo "tether-ca keeps running (pid $ca_pid); stop it with: kill $ca_pid"
fi
