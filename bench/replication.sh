#!/usr/bin/env bash
# Replication between boxes (BENCHMARKS.md "Between boxes"): two gateways of
# one clinic on a real Redis — plain, Sentinel (primary + replica + three
# sentinels) and Cluster (three primaries, three replicas) — alternated
# run by run:
#   cross     publish on box A at 100 events/s, 10 screens on box B: A→B delivery latency
#   catchup   box B stopped while A publishes a backlog; B restarted: events/s caught up from the stream
#   wait      Sentinel only, a box with redis.wait_replicas 1 (its default) and one with 0,
#             alternated: cross-box latency from it, then the time for a burst of events to be
#             replicated (outbox empty), and how fast box B takes that burst in live (fan-in)
#   bench/replication.sh tiny   one run, tiny sizes (CI runs this: it keeps the script working)
#   bench/replication.sh full   three alternated runs, the sizes quoted in BENCHMARKS.md
#   bench/replication.sh wait   only the Sentinel WAIT comparison, three runs at full size
# Results: one JSON line per measurement in bench/results/replication-<mode>-<date>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-tiny}
case "$mode" in
  tiny) runs=1; seconds=2; backlog=2000; burst=1000; profile=ci-bench ;;
  full) runs=3; seconds=20; backlog=100000; burst=20000; profile=release ;;
  wait) runs=3; seconds=20; backlog=0; burst=20000; profile=release ;;
  *) echo "usage: bench/replication.sh tiny|full|wait" >&2; exit 2 ;;
esac
for tool in redis-server redis-sentinel redis-cli python3; do
  command -v "$tool" >/dev/null || need=1
done
if [ -n "${need:-}" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-sentinel python3
  service redis-server stop >/dev/null 2>&1 || true; service redis-sentinel stop >/dev/null 2>&1 || true
fi
cargo build --profile "$profile" -q -p smartwait-gateway -p smartwait-bench
bin="target/$profile"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
mkdir -p bench/results
out="bench/results/replication-$mode-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
# health FIELD.PATH of the gateway on port $1 ("x" when it does not answer)
health() { python3 -c 'import json,sys,urllib.request
v=json.load(urllib.request.urlopen(sys.argv[1]))
for k in sys.argv[2].split("."): v=v[k] if v is not None else None
print(json.dumps(v))' "http://127.0.0.1:$1/health" "$2" 2>/dev/null || echo x; }
wait_health() {  # port path expected-python-expression-on-v (seconds limit 60)
  for _ in $(seq 1 1200); do
    python3 -c "import json,sys; v=json.loads(sys.argv[1]); sys.exit(0 if ($3) else 1)" "$(health "$1" "$2")" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "gateway $1: $2 never satisfied $3 (last: $(health "$1" "$2"))" >&2; return 1
}

redis() {  # port [extra args]: a redis-server in its own directory
  local port=$1; shift
  mkdir -p "$work/redis-$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/redis-$port" "$@" >/dev/null &
  pids+=($!); wait_port "$port"
}

setup_redis() {  # $1: plain|sentinel|cluster; sets redis_env (the gateways' config)
  case "$1" in
    plain)
      local port; port=$(free_port); redis "$port"
      redis_env="SMARTWAIT_REDIS_URL=redis://127.0.0.1:$port" ;;
    sentinel)
      local primary replica sentinels=""; primary=$(free_port); replica=$(free_port)
      redis "$primary"; redis "$replica" --replicaof 127.0.0.1 "$primary"
      for n in 1 2 3; do
        local port; port=$(free_port)
        printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor clinic 127.0.0.1 %s 2\nsentinel down-after-milliseconds clinic 1000\n' \
          "$port" "$work" "$primary" > "$work/sentinel-$port.conf"
        redis-sentinel "$work/sentinel-$port.conf" >/dev/null &
        pids+=($!); wait_port "$port"
        sentinels="$sentinels\"127.0.0.1:$port\","
      done
      redis_env="SMARTWAIT_REDIS_URL=redis://clinic SMARTWAIT_REDIS_SENTINELS=[${sentinels%,}] SMARTWAIT_REDIS_SENTINEL_MASTER=clinic" ;;
    cluster)
      local nodes="" addresses=()
      for n in 1 2 3 4 5 6; do
        local port; port=$(free_port)
        redis "$port" --cluster-enabled yes --cluster-port "$(free_port)" --cluster-config-file "$work/redis-$port/nodes.conf"
        addresses+=("127.0.0.1:$port"); nodes="$nodes\"127.0.0.1:$port\","
      done
      redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
      for address in "${addresses[@]}"; do
        for _ in $(seq 1 300); do redis-cli -p "${address#*:}" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
      done
      redis_env="SMARTWAIT_REDIS_URL=redis://cluster SMARTWAIT_REDIS_CLUSTER_NODES=[${nodes%,}]" ;;
  esac
}

start_box() {  # $1: node name, $2: state dir, $3: extra env; sets box_port, box_pid
  box_port=$(free_port)
  env SMARTWAIT_SERVER_LISTEN="127.0.0.1:$box_port" SMARTWAIT_SERVER_STATE_DIR="$2" \
      SMARTWAIT_AUTH_MODE=off SMARTWAIT_CLINIC_ID=bench SMARTWAIT_CLINIC_NODE="$1" \
      SMARTWAIT_LIMITS_CLIENT_MSGS_PER_SEC=1000 SMARTWAIT_LIMITS_CLIENT_MSGS_BURST=1000 \
      SMARTWAIT_LIMITS_CLIENT_QUEUE=100000 RUST_LOG=warn $redis_env $3 $bin/smartwait-gateway &
  box_pid=$!; pids+=("$box_pid"); wait_port "$box_port"
  wait_health "$box_port" redis.state 'v == "connected"'
  wait_health "$box_port" redis.canary.lastRoundTripMs 'v is not None'
}
stop_redis_all() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
record() { echo "$1" | tee -a "$out"; }
# The events a publish run of the load generator really sent (its JSON report).
events_sent() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["events"])'; }

wait_comparison() {  # $1: run; on the Sentinel set-up, with box B at $b_port
  for replicas in 1 0; do
    start_box "w$replicas-$1" "$work/w$replicas-$1" "SMARTWAIT_REDIS_WAIT_REPLICAS=$replicas"; w_port=$box_port; w_pid=$box_pid
    line=$($bin/smartwait-bench fanout --addr "127.0.0.1:$b_port" --publish-addr "127.0.0.1:$w_port" \
      --clients 10 --rate 100 --seconds "$seconds" --label "cross-sentinel-wait-$replicas")
    record "$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["run"]=int(sys.argv[2]); print(json.dumps(r))' "$line" "$1")"
    b_before=$(health "$b_port" lastSeq)
    began=$(date +%s.%N)
    # As many as the tool really sent (it splits them evenly over its 16 connections).
    sent=$($bin/smartwait-bench publish --addr "127.0.0.1:$w_port" --rate "$burst" --seconds 1 --connections 16 --label burst | events_sent)
    published=$(date +%s.%N)
    wait_health "$w_port" redis.backlog 'v == 0'
    replicated=$(date +%s.%N)
    wait_health "$b_port" lastSeq "v >= $b_before + $sent"
    taken_in=$(date +%s.%N)
    record "$(python3 -c 'import json,sys; b=float(sys.argv[2]); r=float(sys.argv[3])-b; f=float(sys.argv[4])-b; n=int(sys.argv[5]); p=float(sys.argv[7])-b; print(json.dumps({"label":"wait-replicas-"+sys.argv[1],"scenario":"wait","run":int(sys.argv[6]),"events":n,"publish_seconds":round(p,3),"seconds_to_replicated":round(r,3),"replicated_after_last_publish_s":round(r-p,3),"events_per_s":round(n/r),"fan_in_seconds_on_b":round(f,3),"fan_in_events_per_s":round(n/f)}))' "$replicas" "$began" "$replicated" "$taken_in" "$sent" "$1" "$published")"
    kill "$w_pid"; wait "$w_pid" 2>/dev/null || true
  done
}

for run in $(seq 1 "$runs"); do
  if [ "$mode" = wait ]; then
    setup_redis sentinel
    start_box b "$work/b-wait-$run" ""; b_port=$box_port
    wait_comparison "$run"
    stop_redis_all
    continue
  fi
  for setup in plain sentinel cluster; do
    setup_redis "$setup"
    start_box a "$work/a-$setup-$run" ""; a_port=$box_port
    start_box b "$work/b-$setup-$run" ""; b_port=$box_port; b_pid=$box_pid
    # cross: A → B, 10 screens on B
    line=$($bin/smartwait-bench fanout --addr "127.0.0.1:$b_port" --publish-addr "127.0.0.1:$a_port" \
      --clients 10 --rate 100 --seconds "$seconds" --label "cross-$setup")
    record "$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["run"]=int(sys.argv[2]); print(json.dumps(r))' "$line" "$run")"
    # catchup: B away while A publishes a backlog
    kill "$b_pid"; wait "$b_pid" 2>/dev/null || true
    sent=$($bin/smartwait-bench publish --addr "127.0.0.1:$a_port" --rate "$backlog" --seconds 1 --connections 16 --label backlog | events_sent)
    wait_health "$a_port" redis.backlog 'v == 0'
    began=$(date +%s.%N)
    start_box b "$work/b-$setup-$run" ""; b_port=$box_port
    wait_health "$b_port" redis.stream.caughtUp "v >= $sent"
    ended=$(date +%s.%N)
    record "$(python3 -c 'import json,sys; s=float(sys.argv[3])-float(sys.argv[2]); print(json.dumps({"label":"catchup-"+sys.argv[1],"scenario":"catchup","run":int(sys.argv[5]),"events":int(sys.argv[4]),"seconds_from_start":round(s,3),"events_per_s":round(int(sys.argv[4])/s)}))' "$setup" "$began" "$ended" "$sent" "$run")"
    [ "$setup" = sentinel ] && wait_comparison "$run"
    stop_redis_all
  done
done

echo "results: $out"
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
bad = [r for r in rows if r.get("lost") or r.get("duplicates")]
for r in bad: print("LOST/DUPLICATED:", r["label"], r.get("lost"), r.get("duplicates"))
by = {}
for r in rows: by.setdefault(r["label"], []).append(r)
for label, rs in by.items():
    if "per_delivery" in rs[0]:
        print(f'{label:28} p50 {statistics.median(r["per_delivery"]["p50_ms"] for r in rs):7.2f} ms  p99 {statistics.median(r["per_delivery"]["p99_ms"] for r in rs):7.2f} ms  (median of {len(rs)})')
    else:
        extra = (f'  replicated {statistics.median(r["replicated_after_last_publish_s"] for r in rs):6.3f} s after the last publish'
                 f'  fan-in on b {statistics.median(r["fan_in_events_per_s"] for r in rs):7.0f} events/s') if "fan_in_events_per_s" in rs[0] else ""
        print(f'{label:28} {statistics.median(r["events_per_s"] for r in rs):9.0f} events/s{extra}  (median of {len(rs)})')
sys.exit(1 if bad else 0)
PY
