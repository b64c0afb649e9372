#!/usr/bin/env bash
# User-space instructions the gateway spends per delivery, counted by
# valgrind's callgrind: repeatable whatever else the machine is doing, so a
# code change can be compared before/after on this noisy machine.
# Two runs with the same clients (fanout, native) differ only in the number
# of events; the difference of their totals divided by the extra deliveries
# is the cost of one delivery (connections, joins and start-up cancel out).
# Kernel time (the socket writes) is not counted: see BENCHMARKS.md for CPU.
# Usage: bench/instructions.sh [clients, default 100]
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-100}
command -v valgrind >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; }
command -v python3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3; }
cargo build --profile ci-bench -q -p smartwait-gateway -p smartwait-bench
bin="${CARGO_TARGET_DIR:-target}/ci-bench"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() {  # $1: seconds of publishing at 10 events/s; prints the gateway's total instructions
  local port; port=$(free_port)
  env SMARTWAIT_SERVER_LISTEN="127.0.0.1:$port" SMARTWAIT_SERVER_STATE_DIR="$work/gw-$1" \
      SMARTWAIT_AUTH_MODE=off RUST_LOG=warn \
      valgrind --tool=callgrind --callgrind-out-file="$work/cg-$1" $bin/smartwait-gateway 2>"$work/vg-$1.log" &
  local pid=$!
  for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  $bin/smartwait-bench fanout --addr "127.0.0.1:$port" --clients "$clients" --rate 10 --seconds "$1" --label callgrind >"$work/bench-$1.json"
  kill -INT "$pid"; wait "$pid" || true
  python3 - "$work/cg-$1" "$work/bench-$1.json" <<'PY'
import json, sys
total = 0
for line in open(sys.argv[1]):
    if line.startswith("summary:") or line.startswith("totals:"):
        total = int(line.split()[1])
report = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print(total, report.get("deliveries", report.get("delivered", 0)))
PY
}
read -r short_total short_deliveries < <(run 3)
read -r long_total long_deliveries < <(run 9)
python3 - "$short_total" "$short_deliveries" "$long_total" "$long_deliveries" "$clients" <<'PY'
import sys
st, sd, lt, ld, clients = map(int, sys.argv[1:])
per = (lt - st) / max(ld - sd, 1)
print(f'{{"scenario":"instructions","clients":{clients},"deliveries":[{sd},{ld}],"instructions":[{st},{lt}],"instructions_per_delivery":{per:.0f}}}')
PY
