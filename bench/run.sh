#!/usr/bin/env bash
# Side-by-side benchmarks (BENCHMARKS.md): the gateway, the peer it replaces
# (Node Socket.IO 4.8 + Redis adapter) and the floor program, same scenarios,
# same client counts, server pinned to core 0 and generator to core 1.
#   bench/run.sh tiny    every scenario at a tiny size (CI runs this: it keeps the suite working)
#   bench/run.sh full    the sizes quoted in BENCHMARKS.md (long; not for CI)
#   bench/run.sh drain   only the backlog drain, at several redis.batch_events
#   bench/run.sh tls     only plain against TLS (ws/wss, native and Socket.IO), alternated three times
#                        (TLS_RUNS=N: N times)
#   bench/run.sh storm   only the reconnect storm: 10,000 clients back after a restart, plain and TLS
#                        (ACCEPT_RATE=N sets limits.accept_rate for it, STORM_RATE=N the events/s
#                        published meanwhile, 2 by default: 20,000 deliveries/s once all are back,
#                        on one kept-alive connection; STORM_FRESH=1: a new connection per event;
#                        STORM_TRANSPORTS="wss" only TLS; GATEWAY=path another gateway binary)
#   bench/run.sh soak    the one-hour soak (bench/soak.sh full)
#   bench/run.sh fleet   5,000 simulated boxes against the fleet views (bench/fleet.sh full)
# Results: one JSON line per run in bench/results/<mode>-<date>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-tiny}
[ "$mode" = soak ] && exec bench/soak.sh full
[ "$mode" = fleet ] && exec bench/fleet.sh full
case "$mode" in
  tiny) fanout_sizes="20"; idle_sizes="50"; seconds=2; rate=20; targeted=20; publish_rate=100; profile=ci-bench
        backlog=2000; drain_batches="500" ;;
  full) fanout_sizes="1000 10000"; idle_sizes="10000 19000"; seconds=10; rate=20; targeted=1000; publish_rate=1000; profile=release
        backlog=100000; drain_batches="500 2000" ;;
  drain) profile=release; backlog=100000; drain_batches="500 2000 5000" ;;
  tls) fanout_sizes="1000"; idle_sizes="10000"; seconds=10; rate=20; profile=release; drain_batches="" ;;
  storm) profile=release; drain_batches="" ;;
  *) echo "usage: bench/run.sh tiny|full|drain|tls|storm|soak|fleet" >&2; exit 2 ;;
esac

command -v python3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3; }
command -v taskset >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq util-linux; }
command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
command -v node >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
[ -d bench/peer/node_modules/socket.io ] || (cd bench/peer && npm ci --no-audit --no-fund)
cargo build --profile "$profile" -q -p smartwait-gateway -p smartwait-bench
bin="target/$profile"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# taskset execs its command, so "$!" of a pinned server is the server's own pid.
if [ "$(nproc)" -ge 2 ]; then server_pin=(taskset -c 0); client_pin=(taskset -c 1); else server_pin=(); client_pin=(); fi

work=$(mktemp -d)
mkdir -p bench/results
out="bench/results/$mode-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
bench() { "${client_pin[@]}" $bin/smartwait-bench "$@" | tee -a "$out"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_gateway() {  # $1: extra env assignments (e.g. SMARTWAIT_REDIS_URL=...)
  gw_port=$(free_port)
  env SMARTWAIT_SERVER_LISTEN="127.0.0.1:$gw_port" SMARTWAIT_SERVER_STATE_DIR="$work/gw-$gw_port" \
      SMARTWAIT_AUTH_MODE=off SMARTWAIT_LIMITS_MAX_CONNECTIONS=30000 SMARTWAIT_LIMITS_ACCEPT_RATE=30000 SMARTWAIT_LIMITS_CONNECTIONS_PER_IP=30000 \
      SMARTWAIT_LIMITS_CLIENT_MSGS_PER_SEC=1000 SMARTWAIT_LIMITS_CLIENT_MSGS_BURST=1000 RUST_LOG=warn $1 \
      "${server_pin[@]}" $bin/smartwait-gateway &
  gw_pid=$!; pids+=("$gw_pid"); wait_port "$gw_port"
}
stop() { kill "$1" 2>/dev/null || true; sleep 0.5; }

# --- drain: a backlog built while Redis is down, then Redis comes back ---------------------
drain_run() {  # $1: redis.batch_events
  local drain_port; drain_port=$(free_port)
  start_gateway "SMARTWAIT_REDIS_URL=redis://127.0.0.1:$drain_port SMARTWAIT_REDIS_BATCH_EVENTS=$1"
  "${client_pin[@]}" $bin/smartwait-bench publish --addr "127.0.0.1:$gw_port" --rate "$backlog" --seconds 1 --connections 16 --label backlog >/dev/null
  redis-server --port "$drain_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
  pids+=($!)
  local start end left=x
  start=$(date +%s.%N)
  for _ in $(seq 1 1200); do
    left=$(python3 -c 'import json,sys,urllib.request; print(json.load(urllib.request.urlopen(sys.argv[1]))["redis"]["backlog"])' "http://127.0.0.1:$gw_port/health" 2>/dev/null || echo x)
    [ "$left" = "0" ] && break
    sleep 0.05
  done
  end=$(date +%s.%N)
  echo "{\"label\":\"gateway\",\"scenario\":\"drain\",\"backlog\":$backlog,\"batch_events\":$1,\"left\":\"$left\",\"seconds_from_redis_start\":$(python3 -c "print(round($end-$start,3))")}" | tee -a "$out"
  stop "$gw_pid"
}
for batch in $drain_batches; do drain_run "$batch"; done
[ "$mode" = drain ] && exit 0

# --- plain against TLS: ws/wss, native and Socket.IO, alternated (issue 17) -------------
# An ECDSA certificate for localhost signed by a CA made here (bench/make-cert.sh).
bench/make-cert.sh "$work"
tls_compare() {  # $1: runs of each transport, alternated
  local run transport env ca protocol n
  for run in $(seq 1 "$1"); do
    for transport in ws wss; do
      if [ "$transport" = wss ]; then
        env="SMARTWAIT_SERVER_TLS_CERT=$work/tls-cert.pem SMARTWAIT_SERVER_TLS_KEY=$work/tls-key.pem"; ca=(--tls-ca "$work/ca.pem")
      else
        env=""; ca=()
      fi
      for protocol in native socketio; do
        n=${fanout_sizes%% *}
        start_gateway "$env"
        bench fanout --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --protocol $protocol --clients "$n" --rate $rate --seconds $seconds --label "gateway-$transport-run$run" "${ca[@]}"
        bench burst --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --protocol $protocol --clients "$n" --rate $rate --seconds 1 --connections 8 --label "gateway-$transport-run$run" "${ca[@]}"
        stop "$gw_pid"
        start_gateway "$env"
        bench idle --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --protocol $protocol --clients "${idle_sizes%% *}" --seconds 3 --label "gateway-$transport-run$run" "${ca[@]}"
        stop "$gw_pid"
      done
    done
  done
}
case "$mode" in
  tls) tls_compare "${TLS_RUNS:-3}"; echo "results: $out"; exit 0 ;;
  tiny) tls_compare 1 ;;
  full) tls_compare 3 ;;
esac

# --- the reconnect storm: every client back at once after a restart (issue 17) ---------
# N clients (native and Socket.IO alternately) joined to `patients` with its
# retained queue_update; SIGTERM, the gateway starts again on the same port
# and state, and every client reconnects with its backoff (Retry-After on a
# 503 of limits.accept_rate, left at its default here) and re-joins with
# `since`/`epoch`. The generator reports when all are current again
# (recovered, or given the retained state) and the latency of events
# published meanwhile; this adds the new gateway's CPU (peak over 0.25 s and
# total) and peak RSS, and how long the restart took.
storm_run() {  # $1: ws|wss, $2: clients
  local port state env=() ca=() old_pid new_pid stopped_at started_at peak=0 before now t0 total rss
  port=$(free_port); state="$work/storm-$1-$2"
  if [ "$1" = wss ]; then
    env=("SMARTWAIT_SERVER_TLS_CERT=$work/tls-cert.pem" "SMARTWAIT_SERVER_TLS_KEY=$work/tls-key.pem"); ca=(--tls-ca "$work/ca.pem")
  fi
  storm_gateway() {
    env SMARTWAIT_SERVER_LISTEN="127.0.0.1:$port" SMARTWAIT_SERVER_STATE_DIR="$state" SMARTWAIT_AUTH_MODE=off \
      SMARTWAIT_LIMITS_MAX_CONNECTIONS=30000 SMARTWAIT_LIMITS_CONNECTIONS_PER_IP=30000 RUST_LOG=warn "${env[@]}" \
      ${ACCEPT_RATE:+SMARTWAIT_LIMITS_ACCEPT_RATE=$ACCEPT_RATE} "${server_pin[@]}" "${GATEWAY:-$bin/smartwait-gateway}" &
    gw_pid=$!; pids+=("$gw_pid"); wait_port "$port"
  }
  storm_gateway; old_pid=$gw_pid
  rm -f "$work/ready"
  "${client_pin[@]}" $bin/smartwait-bench storm --addr "127.0.0.1:$port" --clients "$2" --seconds 180 --rate "${STORM_RATE:-2}" ${STORM_FRESH:+--fresh-publishes} --ready-file "$work/ready" "${ca[@]}" > "$work/storm.json" &
  local bench_pid=$!
  for _ in $(seq 1 1800); do [ -f "$work/ready" ] && break; sleep 0.1; done
  [ -f "$work/ready" ] || { echo "storm: the clients never all joined" >&2; return 1; }
  stopped_at=$(date +%s%N)
  kill -TERM "$old_pid"; wait "$old_pid" 2>/dev/null || true
  storm_gateway; new_pid=$gw_pid; started_at=$(date +%s%N)
  t0=$(awk '{print $14 + $15}' "/proc/$new_pid/stat"); before=$t0
  while kill -0 "$bench_pid" 2>/dev/null; do
    sleep 0.25
    now=$(awk '{print $14 + $15}' "/proc/$new_pid/stat" 2>/dev/null || echo "$before")
    [ $((now - before)) -gt "$peak" ] && peak=$((now - before))
    before=$now
  done
  wait "$bench_pid"
  total=$(( $(awk '{print $14 + $15}' "/proc/$new_pid/stat") - t0 ))
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$new_pid/status")
  python3 - "$work/storm.json" "$1" "$(getconf CLK_TCK)" "$peak" "$total" "$rss" "$stopped_at" "$started_at" "${ACCEPT_RATE:-default}" <<'PY' | tee -a "$out"
import json, sys
r = json.loads(open(sys.argv[1]).read()); hz = int(sys.argv[3])
r.update({"label": "gateway-storm-" + sys.argv[2], "accept_rate": sys.argv[9], "gateway_peak_cpu_share": round(int(sys.argv[4]) / hz / 0.25, 2),
          "gateway_cpu_s": round(int(sys.argv[5]) / hz, 2), "gateway_peak_rss_kib": int(sys.argv[6]),
          "restart_ms": (int(sys.argv[8]) - int(sys.argv[7])) // 1_000_000})
print(json.dumps(r))
PY
  stop "$new_pid"
}
case "$mode" in
  storm) for transport in ${STORM_TRANSPORTS:-ws wss}; do storm_run "$transport" 10000; done; echo "results: $out"; exit 0 ;;
  tiny) storm_run ws 200; storm_run wss 200 ;;
  full) storm_run ws 10000; storm_run wss 10000 ;;
esac

# --- the gateway, both protocols ---------------------------------------------------------
for protocol in native socketio; do
  for n in $fanout_sizes; do
    start_gateway ""
    bench fanout --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --protocol $protocol --clients "$n" --rate $rate --seconds $seconds --label gateway
    stop "$gw_pid"
  done
  for n in $idle_sizes; do
    start_gateway ""
    bench idle --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --protocol $protocol --clients "$n" --seconds 3 --label gateway
    stop "$gw_pid"
  done
done
start_gateway ""
bench targeted --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --clients "$targeted" --rate $rate --seconds $seconds --label gateway
bench burst --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --clients "${fanout_sizes%% *}" --rate $rate --seconds 1 --label gateway
bench burst --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --clients "${fanout_sizes%% *}" --rate $rate --seconds 1 --connections 8 --label gateway-8-publishers
bench burst --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --protocol socketio --clients "${fanout_sizes%% *}" --rate $rate --seconds 1 --connections 8 --label gateway-8-publishers
bench publish --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --rate $publish_rate --seconds $seconds --label gateway-durable
bench publish --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --rate $publish_rate --seconds $seconds --connections 16 --label gateway-durable-16-concurrent
stop "$gw_pid"

# --- start-up: from exec to accepting connections, five starts, no config ----------------
python3 - "$bin/smartwait-gateway" "$work" <<'PY' | tee -a "$out"
import json, os, socket, statistics, subprocess, sys, time
binary, work = sys.argv[1], sys.argv[2]
times = []
for n in range(5):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    env = dict(os.environ, SMARTWAIT_SERVER_LISTEN=f"127.0.0.1:{port}",
               SMARTWAIT_SERVER_STATE_DIR=f"{work}/start-{n}", RUST_LOG="warn")
    began = time.monotonic()
    server = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() - began > 10: raise SystemExit("the gateway never listened")
            time.sleep(0.001)
    times.append((time.monotonic() - began) * 1000)
    server.terminate(); server.wait()
print(json.dumps({"label": "gateway", "scenario": "start", "starts": len(times),
                  "median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}))
PY

# --- more cores: one large room, the gateway on one core vs both (generator on both) -----
if [ "$mode" = full ] && [ "$(nproc)" -ge 2 ]; then
  one_core=("${server_pin[@]}")
  for cores in 1 2; do
    if [ "$cores" = 1 ]; then server_pin=("${one_core[@]}"); gen_pin=(taskset -c 1); else server_pin=(taskset -c 0,1); gen_pin=(taskset -c 0,1); fi
    start_gateway ""
    "${gen_pin[@]}" $bin/smartwait-bench fanout --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --clients 10000 --rate 2 --seconds $seconds --label "gateway-$cores-cores" | tee -a "$out"
    stop "$gw_pid"
  done
  server_pin=("${one_core[@]}")
fi

# --- the gateway replicating to a local Redis ----------------------------------------------
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null &
pids+=($!); wait_port "$redis_port"
start_gateway "SMARTWAIT_REDIS_URL=redis://127.0.0.1:$redis_port"
bench publish --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --rate $publish_rate --seconds $seconds --label gateway-durable-replicated
bench publish --addr "127.0.0.1:$gw_port" --pid "$gw_pid" --rate $publish_rate --seconds $seconds --connections 16 --label gateway-durable-replicated-16-concurrent
stop "$gw_pid"


# --- the peer: Node Socket.IO + Redis adapter ----------------------------------------------
for n in $fanout_sizes; do
  peer_port=$(free_port)
  REDIS_URL="redis://127.0.0.1:$redis_port" PORT=$peer_port "${server_pin[@]}" node bench/peer/server.js >/dev/null &
  peer_pid=$!; pids+=("$peer_pid"); wait_port "$peer_port"
  bench fanout --addr "127.0.0.1:$peer_port" --pid "$peer_pid" --protocol socketio --clients "$n" --rate $rate --seconds $seconds --label peer
  stop "$peer_pid"
done
peer_port=$(free_port)
REDIS_URL="redis://127.0.0.1:$redis_port" PORT=$peer_port "${server_pin[@]}" node bench/peer/server.js >/dev/null &
peer_pid=$!; pids+=("$peer_pid"); wait_port "$peer_port"
bench burst --addr "127.0.0.1:$peer_port" --pid "$peer_pid" --protocol socketio --clients "${fanout_sizes%% *}" --rate $rate --seconds 1 --connections 8 --label peer-8-publishers
stop "$peer_pid"
for n in $idle_sizes; do
  peer_port=$(free_port)
  REDIS_URL="redis://127.0.0.1:$redis_port" PORT=$peer_port "${server_pin[@]}" node bench/peer/server.js >/dev/null &
  peer_pid=$!; pids+=("$peer_pid"); wait_port "$peer_port"
  bench idle --addr "127.0.0.1:$peer_port" --pid "$peer_pid" --protocol socketio --clients "$n" --seconds 3 --label peer
  stop "$peer_pid"
done

# --- the floor ---------------------------------------------------------------------------------
for n in $fanout_sizes; do
  floor_port=$(free_port)
  "${server_pin[@]}" $bin/smartwait-floor "127.0.0.1:$floor_port" >/dev/null &
  floor_pid=$!; pids+=("$floor_pid"); wait_port "$floor_port"
  bench fanout --addr "127.0.0.1:$floor_port" --pid "$floor_pid" --protocol native --clients "$n" --rate $rate --seconds $seconds --label floor
  stop "$floor_pid"
done
floor_port=$(free_port)
"${server_pin[@]}" $bin/smartwait-floor "127.0.0.1:$floor_port" >/dev/null &
floor_pid=$!; pids+=("$floor_pid"); wait_port "$floor_port"
bench burst --addr "127.0.0.1:$floor_port" --pid "$floor_pid" --protocol native --clients "${fanout_sizes%% *}" --rate $rate --seconds 1 --connections 8 --label floor-8-publishers
stop "$floor_pid"

echo "results: $out"
# A run that lost or duplicated deliveries is a failure of the suite, whatever the speed.
python3 - "$out" <<'PY'
import json, sys
bad = [r for r in map(json.loads, open(sys.argv[1])) if r.get("lost") or r.get("duplicates") or r.get("foreign")]
for r in bad: print("LOST/DUPLICATED/FOREIGN:", r["label"], r["scenario"], r.get("protocol"), r.get("lost"), r.get("duplicates"), r.get("foreign"))
sys.exit(1 if bad else 0)
PY
