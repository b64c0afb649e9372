#!/usr/bin/env bash
# The soak (BENCHMARKS.md "Soak"): a long run of a replicating gateway with
# clients that keep reconnecting with `since`, and a central Redis that goes
# away for a while in the middle. It samples the gateway's RSS, open files,
# state.db and WAL size and replication backlog, reports each as a slope per
# minute, and fails when any client saw a gap, a duplicate or a resume that
# did not recover, or when the stream in Redis does not hold every event
# exactly once, in order.
#   bench/soak.sh short   two minutes, 200 clients, Redis away 30 s (CI runs this)
#   bench/soak.sh full    one hour, 1,000 clients, 50 events/s, 10 reconnects/s,
#                         Redis away 5 minutes (the figures in BENCHMARKS.md)
# Any of CLIENTS RATE SOAK_SECONDS RECONNECTS AWAY_AT AWAY_FOR SAMPLE_EVERY overrides the mode.
# Result: one JSON line appended to bench/results/soak-<mode>-<date>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-short}
case "$mode" in
  short) clients=200; rate=50; seconds=120; reconnects=10; away_at=30; away_for=30; sample_every=5; profile=ci-bench ;;
  full) clients=1000; rate=50; seconds=3600; reconnects=10; away_at=1200; away_for=300; sample_every=60; profile=release ;;
  *) echo "usage: bench/soak.sh short|full" >&2; exit 2 ;;
esac
clients=${CLIENTS:-$clients}; rate=${RATE:-$rate}; seconds=${SOAK_SECONDS:-$seconds}
reconnects=${RECONNECTS:-$reconnects}; away_at=${AWAY_AT:-$away_at}; away_for=${AWAY_FOR:-$away_for}
sample_every=${SAMPLE_EVERY:-$sample_every}

command -v python3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3; }
command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
cargo build --profile "$profile" -q -p smartwait-gateway -p smartwait-bench
bin="target/$profile"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
mkdir -p bench/results "$work/redis" "$work/state"
out="bench/results/soak-$mode-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

# Redis keeps its data across the outage (an fsync'd append-only file), as a
# central Redis that restarts does; what the gateway held meanwhile must follow.
redis_port=$(free_port)
start_redis() {
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --appendonly yes \
    --appendfsync always --save "" --daemonize no >"$work/redis.log" 2>&1 &
  redis_pid=$!; pids+=("$redis_pid"); wait_port "$redis_port"
}
start_redis

gw_port=$(free_port)
SMARTWAIT_SERVER_LISTEN="127.0.0.1:$gw_port" SMARTWAIT_SERVER_STATE_DIR="$work/state" \
  SMARTWAIT_AUTH_MODE=off SMARTWAIT_LIMITS_MAX_CONNECTIONS=30000 SMARTWAIT_LIMITS_ACCEPT_RATE=30000 SMARTWAIT_LIMITS_CONNECTIONS_PER_IP=30000 \
  SMARTWAIT_REDIS_URL="redis://127.0.0.1:$redis_port" SMARTWAIT_REDIS_STREAM_MAXLEN=100000000 \
  SMARTWAIT_CLINIC_ID=soak SMARTWAIT_CLINIC_NODE=box-1 RUST_LOG=warn \
  $bin/smartwait-gateway 2>"$work/gateway.log" &
gw_pid=$!; pids+=("$gw_pid"); wait_port "$gw_port"

$bin/smartwait-bench soak --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --clients "$clients" \
  --rate "$rate" --seconds "$seconds" --reconnects-per-s "$reconnects" --sample-every "$sample_every" \
  --state-dir "$work/state" --redis "redis://127.0.0.1:$redis_port" --clinic soak >"$work/report.json" &
soak_pid=$!; pids+=("$soak_pid")

# The outage: the bench starts publishing ~2 s after it starts.
sleep $((away_at + 2))
echo "soak: stopping Redis for ${away_for}s" >&2
kill -TERM "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
sleep "$away_for"
echo "soak: Redis is back" >&2
start_redis
wait "$soak_pid"
tee -a "$out" <"$work/report.json"
echo "results: $out" >&2

python3 - "$work/report.json" "$work/gateway.log" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
stream = report.get("stream") or {}
problems = {key: report[key] for key in ("lost", "duplicates", "unrecovered_resumes", "connect_failures") if report[key]}
problems.update({"publish " + key: report["publish"][key] for key in ("failures",) if report["publish"][key]})
problems.update({"stream " + key: value for key, value in stream.items() if key != "entries" and value})
if not report["backlog_drained"]:
    problems["backlog_drained"] = False
if report["resumes"] == 0:
    problems["resumes"] = 0
print("soak: %d deliveries, %d resumes, stream %s entries; per minute: %s"
      % (report["deliveries"], report["resumes"], stream.get("entries"), report["per_minute"]), file=sys.stderr)
if problems:
    print("SOAK FAILED:", problems, file=sys.stderr)
    print(open(sys.argv[2]).read()[-4000:], file=sys.stderr)
    sys.exit(1)
PY
