#!/usr/bin/env bash
# TLS handshakes, full against resumed (BENCHMARKS.md "TLS session resumption"):
# the release gateway with a self-signed certificate (ECDSA P-256 and RSA-2048,
# made here), and `openssl s_time` opening connections for 3 s each, `-new`
# (a full handshake every time) and `-reuse` (the session resumed), alternated
# three times; each connection fetches /health so TLS 1.3 tickets arrive.
# Reports the gateway's CPU per connection (from /proc) as JSON lines.
#   bench/tls-handshakes.sh [full]   the figures in BENCHMARKS.md
#   bench/tls-handshakes.sh tiny     one short run each (CI: keeps the script working)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-full}" in
  full) profile=release; runs=3; seconds=3 ;;
  tiny) profile=ci-bench; runs=1; seconds=1 ;;
  *) echo "usage: bench/tls-handshakes.sh full|tiny" >&2; exit 2 ;;
esac
command -v openssl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; }
cargo build --profile "$profile" -q -p smartwait-gateway
bin="$PWD/target/$profile/smartwait-gateway"
work=$(mktemp -d)
gw_pid=
cleanup() { [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p bench/results
out="bench/results/tls-handshakes-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
for kind in ec rsa; do
  case $kind in
    ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa) newkey=(-newkey rsa:2048) ;;
  esac
  openssl req -x509 "${newkey[@]}" -nodes -keyout "$work/$kind-key.pem" -out "$work/$kind-cert.pem" \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -days 2 2>/dev/null
  mkdir -p "$work/state-$kind"
  SMARTWAIT_SERVER_LISTEN="127.0.0.1:$port" SMARTWAIT_SERVER_STATE_DIR="$work/state-$kind" \
    SMARTWAIT_SERVER_TLS_CERT="$work/$kind-cert.pem" SMARTWAIT_SERVER_TLS_KEY="$work/$kind-key.pem" \
    SMARTWAIT_LIMITS_ACCEPT_RATE=100000 RUST_LOG=warn "$bin" >"$work/gw.log" 2>&1 &
  gw_pid=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  for run in $(seq 1 "$runs"); do
    for mode in new reuse; do
      t0=$(awk '{print $14+$15}' "/proc/$gw_pid/stat")
      line=$(openssl s_time -connect "127.0.0.1:$port" -"$mode" -time "$seconds" -www /health 2>&1 | grep -E "connections in [0-9.]+s")
      t1=$(awk '{print $14+$15}' "/proc/$gw_pid/stat")
      n=$(echo "$line" | awk '{print $1}')
      [ "${n:-0}" -gt 0 ] || { echo "no TLS connection was made ($mode)" >&2; exit 1; }
      echo "{\"scenario\":\"tls-handshake\",\"certificate\":\"$kind\",\"mode\":\"$mode\",\"run\":$run,\"connections\":$n,\"server_us_per_connection\":$(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) / n ))}" | tee -a "$out"
    done
  done
  kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true; gw_pid=
done
echo "results: $out"
