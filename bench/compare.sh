#!/usr/bin/env bash
# Two builds of the gateway in one sitting, alternated run by run (A B A B ...),
# on the scenarios a change to the delivery path must not slow down: fan-out
# to 1,000 clients, burst with 8 publishers (native and Socket.IO over
# WebSocket), and idle memory per connection (native and Socket.IO). Quote the medians (BENCHMARKS.md).
#   bench/compare.sh BEFORE_BINARY AFTER_BINARY [runs per build, default 3]
#   TLS=1 bench/compare.sh ...   the same over TLS (wss://, a certificate made here)
# Build the "before" binary from another checkout, e.g.
#   git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release)
# Results: one JSON line per run in bench/results/compare-<date>.jsonl, with
# "label" set to before/after; the medians are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bench/compare.sh BEFORE_BINARY AFTER_BINARY [runs]" >&2; exit 2; }
before=$(realpath "$1"); after=$(realpath "$2"); runs=${3:-3}
for binary in "$before" "$after"; do [ -x "$binary" ] || { echo "not an executable: $binary" >&2; exit 2; }; done
command -v python3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3; }
command -v taskset >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq util-linux; }
cargo build --release -q -p smartwait-bench
generator=target/release/smartwait-bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(nproc)" -ge 2 ]; then server_pin=(taskset -c 0); client_pin=(taskset -c 1); else server_pin=(); client_pin=(); fi

work=$(mktemp -d)
mkdir -p bench/results
out="bench/results/compare-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
tls_env=(); tls_ca=()
if [ -n "${TLS:-}" ]; then
  bench/make-cert.sh "$work"
  tls_env=("SMARTWAIT_SERVER_TLS_CERT=$work/tls-cert.pem" "SMARTWAIT_SERVER_TLS_KEY=$work/tls-key.pem")
  tls_ca=(--tls-ca "$work/ca.pem")
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

# One scenario against one build: a fresh gateway, the generator, the gateway stopped.
one() {  # $1 label, $2 binary, then the generator's arguments
  local label=$1 binary=$2; shift 2
  local port; port=$(free_port)
  # From the work directory: neither build may read this checkout's config/gateway.toml.
  (cd "$work" && exec env SMARTWAIT_SERVER_LISTEN="127.0.0.1:$port" SMARTWAIT_SERVER_STATE_DIR="$work/$label-$port" \
      SMARTWAIT_AUTH_MODE=off SMARTWAIT_LIMITS_MAX_CONNECTIONS=30000 SMARTWAIT_LIMITS_ACCEPT_RATE=30000 SMARTWAIT_LIMITS_CONNECTIONS_PER_IP=30000 \
      SMARTWAIT_LIMITS_CLIENT_MSGS_PER_SEC=1000 SMARTWAIT_LIMITS_CLIENT_MSGS_BURST=1000 RUST_LOG=warn "${tls_env[@]}" \
      "${server_pin[@]}" "$binary") &
  local pid=$!; pids+=("$pid"); wait_port "$port"
  "${client_pin[@]}" $generator "$@" --addr "127.0.0.1:$port" --pid "$pid" --label "$label" "${tls_ca[@]}" | tee -a "$out"
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; sleep 0.5
}

for run in $(seq 1 "$runs"); do
  for label in before after; do
    if [ "$label" = before ]; then binary=$before; else binary=$after; fi
    one "$label" "$binary" fanout --protocol native --clients 1000 --rate 20 --seconds 10
    one "$label" "$binary" burst --protocol native --clients 1000 --rate 20 --seconds 1 --connections 8
    one "$label" "$binary" fanout --protocol socketio --clients 1000 --rate 20 --seconds 10
    one "$label" "$binary" burst --protocol socketio --clients 1000 --rate 20 --seconds 1 --connections 8
    one "$label" "$binary" idle --protocol native --clients 10000 --seconds 3
    one "$label" "$binary" idle --protocol socketio --clients 10000 --seconds 3
  done
done

echo "results: $out"
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
bad = [r for r in rows if r.get("lost") or r.get("duplicates") or r.get("foreign")]
groups = {}
for r in rows:
    groups.setdefault((r["scenario"], r.get("protocol"), r["label"]), []).append(r)
numeric = lambda r: {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
for (scenario, protocol, label), runs in sorted(groups.items()):
    keys = sorted(set().union(*(numeric(r).keys() for r in runs)))
    medians = {k: statistics.median(r[k] for r in runs if k in r) for k in keys}
    print(f"{scenario:7} {protocol or '':9} {label:6} n={len(runs)} " + " ".join(f"{k}={v:g}" for k, v in medians.items()))
for r in bad: print("LOST/DUPLICATED/FOREIGN:", r)
sys.exit(1 if bad else 0)
PY
