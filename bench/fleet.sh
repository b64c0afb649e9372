#!/usr/bin/env bash
# The fleet at scale (BENCHMARKS.md "The fleet at scale"): a generator writes
# N boxes' heartbeats into a real redis-server as gateways do (bench/fleet-sim.py);
# 1 % of them stop gracefully or vanish after a while. Then, three times each:
# `fleet --json` (its exit status must be 1: boxes are missing), a /metrics
# scrape of `fleet serve`, and /fleet rendered in headless Chromium until it
# shows every box; meanwhile the fleet service's CPU and memory and Redis's
# commands per second per box.
#   bench/fleet.sh tiny    200 boxes, short (CI runs this: it keeps the script working)
#   bench/fleet.sh full    5,000 boxes (the figures in BENCHMARKS.md); BOXES=50000 to go further
# Result: JSON lines in bench/results/fleet-<mode>-<date>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-tiny}
case "$mode" in
  tiny) boxes=${BOXES:-200}; settle=5; profile=ci-bench ;;
  full) boxes=${BOXES:-5000}; settle=25; profile=release ;;
  *) echo "usage: bench/fleet.sh tiny|full" >&2; exit 2 ;;
esac
# The vanished 1 % are missing 30 s after their last report.
sim_seconds=$((settle + 90))
for tool in redis-server curl node; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server curl nodejs npm; break; }
done
[ -d tests/browser/node_modules/playwright-core ] || (cd tests/browser && npm ci --no-audit --no-fund)
cargo build --profile "$profile" -q -p smartwait-gateway
bin="target/$profile/smartwait-gateway"
work=$(mktemp -d)
mkdir -p bench/results
out="bench/results/fleet-$mode-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
ms() { python3 -c 'import time; print(int(time.time()*1000))'; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null &
pids+=($!); wait_port "$redis_port"
url="redis://127.0.0.1:$redis_port"
python3 bench/fleet-sim.py "$redis_port" "$boxes" "$sim_seconds" "$settle" &
pids+=($!)

service_port=$(free_port)
(cd "$work" && RUST_LOG=warn SMARTWAIT_SERVER_STATE_DIR="$work" "$OLDPWD/$bin" fleet serve --redis "$url" --listen "127.0.0.1:$service_port") &
service_pid=$!; pids+=("$service_pid"); wait_port "$service_port"
token=$(cd "$work" && SMARTWAIT_SERVER_STATE_DIR="$work" "$OLDPWD/$bin" token --role monitor --sub bench)

# Wait until the vanished boxes count as missing.
sleep $((settle + 45))
cpu_ticks() { awk '{print $14 + $15}' "/proc/$service_pid/stat"; }
commands() { redis-cli -p "$redis_port" info stats | awk -F: '/total_commands_processed/ {print $2}' | tr -d '\r'; }
ticks_before=$(cpu_ticks); commands_before=$(commands); window_start=$(ms)
for run in 1 2 3; do
  began=$(ms)
  set +e; SMARTWAIT_SERVER_STATE_DIR="$work" $bin fleet --redis "$url" --json > "$work/fleet.json"; status=$?; set -e
  ended=$(ms)
  python3 -c 'import json,sys; b=json.load(open(sys.argv[1])); s={}
for x in b: s[x["state"]]=s.get(x["state"],0)+1
print(json.dumps({"scenario":"fleet-command","run":int(sys.argv[4]),"boxes":len(b),"states":s,"exit":int(sys.argv[5]),"ms":int(sys.argv[3])-int(sys.argv[2])}))' \
    "$work/fleet.json" "$began" "$ended" "$run" "$status" | tee -a "$out"
  began=$(ms)
  curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$service_port/metrics" -o "$work/metrics.txt"
  ended=$(ms)
  echo "{\"scenario\":\"fleet-metrics\",\"run\":$run,\"ms\":$((ended - began)),\"bytes\":$(wc -c < "$work/metrics.txt"),\"box_up_series\":$(grep -c '^smartwait_fleet_box_up{' "$work/metrics.txt")}" | tee -a "$out"
  node bench/fleet-page.js "http://127.0.0.1:$service_port/fleet?token=$token" "$boxes" | \
    python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r["run"]=int(sys.argv[1]); print(json.dumps(r))' "$run" | tee -a "$out"
done
window_ms=$(( $(ms) - window_start ))
ticks_after=$(cpu_ticks); commands_after=$(commands)
hz=$(getconf CLK_TCK)
python3 - "$service_pid" "$ticks_before" "$ticks_after" "$hz" "$window_ms" "$commands_before" "$commands_after" "$boxes" <<'PY' | tee -a "$out"
import json, sys
pid, t0, t1, hz, window_ms, c0, c1, boxes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
seconds = window_ms / 1000
print(json.dumps({"scenario": "fleet-service", "boxes": boxes, "window_s": round(seconds, 1),
                  "cpu_share": round((t1 - t0) / hz / seconds, 3),
                  "rss_kib": int(status["VmRSS"].split()[0]), "peak_rss_kib": int(status["VmHWM"].split()[0]),
                  "redis_commands_per_s_per_box": round((c1 - c0) / seconds / boxes, 3)}))
PY
echo "results: $out"
# The run is wrong, whatever its speed, unless the fleet saw the vanished boxes as missing and said so.
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
bad = [r for r in rows if r["scenario"] == "fleet-command" and (r["exit"] != 1 or not r["states"].get("missing") or not r["states"].get("stopped"))]
bad += [r for r in rows if r["scenario"] == "fleet-page" and not r["missing"]]
for r in bad: print("WRONG:", r)
sys.exit(1 if bad else 0)
PY
