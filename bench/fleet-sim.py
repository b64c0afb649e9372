#!/usr/bin/env python3
"""Heartbeats of N simulated boxes into a real redis-server, as the gateway
writes them (replication::fleet): every 10 s per box the health key (EX 30),
the last report, the fleet index; a state event at each box's first report.
After `--settle` seconds, 1 % of the boxes change: half stop gracefully
(stopped report and event), half vanish (no more heartbeats). RESP is piped
into `redis-cli --pipe`, one round of all boxes spread over the 10 s.
Usage: fleet-sim.py PORT BOXES SECONDS [SETTLE_SECONDS]"""
import json, subprocess, sys, time

port, boxes, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
settle = float(sys.argv[4]) if len(sys.argv) > 4 else 25.0

def resp(*args):
    out = [f"*{len(args)}\r\n"]
    for arg in args:
        data = str(arg)
        out.append(f"${len(data.encode())}\r\n{data}\r\n")
    return "".join(out)

def iso(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + ".%03dZ" % (ms % 1000)

started = int(time.time() * 1000)
pipe = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe"], stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL, text=True)
changed = set(range(0, boxes, 100))  # 1 %
gone = set()
round_no = 0
begin = time.monotonic()
while time.monotonic() - begin < seconds:
    round_start = time.monotonic()
    for n in range(boxes):
        clinic, node = f"clinic-{n // 2:05d}", f"box-{n % 2}"
        if n in gone:
            continue
        now = int(time.time() * 1000)
        report = {"node": node, "clinic": clinic, "status": "up", "why": None, "version": "0.1.0",
                  "startedAt": iso(started), "connectedClients": 12, "backlog": 0,
                  "replicationLagSeconds": 0.0, "droppedEvents": 0, "lastReplicatedSeq": 100 + round_no,
                  "lastSeq": 100 + round_no, "store": {"state": "ok"}, "freeBytes": 10**9,
                  "clock": {"synchronized": True, "offsetMs": 3}, "uptimeSeconds": (now - started) // 1000,
                  "timestamp": iso(now)}
        commands = []
        if n in changed and time.monotonic() - begin > settle:
            gone.add(n)
            if n % 200 == 0:  # half stop gracefully, half vanish
                report.update(status="stopped", stoppedAt=iso(now), stoppedAtMs=now, stopReason="SIGTERM")
                commands.append(resp("DEL", f"smartwait:{{{clinic}}}:nodes:{node}:health"))
                commands.append(resp("XADD", "smartwait:fleet:events", "MAXLEN", "~", 100000, "*",
                                     "clinic", clinic, "node", node, "state", "stopped", "at", iso(now)))
            else:
                continue
        else:
            commands.append(resp("SET", f"smartwait:{{{clinic}}}:nodes:{node}:health", json.dumps(report), "EX", 30))
            if round_no == 0:
                commands.append(resp("XADD", "smartwait:fleet:events", "MAXLEN", "~", 100000, "*",
                                     "clinic", clinic, "node", node, "state", "up", "at", iso(now)))
        commands.append(resp("SET", f"smartwait:{{{clinic}}}:nodes:{node}:last", json.dumps(report)))
        commands.append(resp("ZADD", "smartwait:fleet:seen", now, f"{clinic}/{node}"))
        pipe.stdin.write("".join(commands))
        if n % 500 == 499:
            pipe.stdin.flush()
            # Spread the round over 10 s, as real boxes are.
            target = round_start + 10.0 * (n + 1) / boxes
            pause = target - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    pipe.stdin.flush()
    round_no += 1
    pause = round_start + 10.0 - time.monotonic()
    if pause > 0:
        time.sleep(pause)
pipe.stdin.close()
pipe.wait()
