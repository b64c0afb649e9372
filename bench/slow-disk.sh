#!/usr/bin/env bash
# Publish latency on a slow card: the gateway's state on the fault-injecting
# FUSE file system (tests/faultfs) with every write and fsync delayed by
# DELAY_MS (default 20), N sequential publishes (default 600, ~8 KiB each)
# from one client; prints p50, p99 and the longest stall in ms.
# Usage: bench/slow-disk.sh [BINARY] [N]   (as root, after scripts/test made
# tests/faultfs/.venv). Compare two builds: farm-bench --vs 'bench/slow-disk.sh B' -- bench/slow-disk.sh A
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
binary="$(realpath "${1:-$root/target/release/smartwait-gateway}")"
count="${2:-600}"
delay="${DELAY_MS:-20}"
work="$(mktemp -d)"
mkdir "$work/backing" "$work/mnt"
coproc FS { "$root/tests/faultfs/.venv/bin/python" "$root/tests/faultfs/faultfs.py" "$work/backing" "$work/mnt" 2>/dev/null; }
fs_in=${FS[1]}
fs_out=${FS[0]}
# Until it says ready; a file system that died (no venv, no FUSE) ends the run.
while :; do
  read -r line <&"$fs_out" || { echo "faultfs.py did not start (see scripts/test)" >&2; exit 1; }
  [ "$line" = ready ] && break
done
cleanup() {
  [ -n "${gateway:-}" ] && kill "$gateway" 2>/dev/null && wait "$gateway" 2>/dev/null || true
  echo quit >&"$fs_in" || true
  sleep 0.5
  fusermount3 -u -z "$work/mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cd "$work/mnt"
token=$("$binary" token --role service 2>"$work/token.log") || { cat "$work/token.log" >&2; exit 1; }
SMARTWAIT_SERVER_LISTEN="127.0.0.1:$port" RUST_LOG=warn "$binary" 2>"$work/gateway.log" &
gateway=$!
python3 - "$port" <<'PY'
import socket, sys, time
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
PY
echo "delay $delay" >&"$fs_in"
read -r _ <&"$fs_out"
python3 - "$port" "$token" "$count" <<'PY'
import http.client, json, sys, time
port, token, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
connection = http.client.HTTPConnection("127.0.0.1", port)
latencies = []
for n in range(count):
    body = json.dumps({"waiting": n, "message": "x" * 8000})
    start = time.perf_counter()
    connection.request("POST", "/api/queue/update", body,
                       {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    answer = connection.getresponse()
    answer.read()
    assert answer.status == 202, answer.status
    latencies.append((time.perf_counter() - start) * 1000)
latencies.sort()
pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
print(f"p50 {pick(0.50):.1f} ms  p99 {pick(0.99):.1f} ms  max {latencies[-1]:.1f} ms  ({count} publishes)")
PY
