#!/usr/bin/env python3
"""MQTT telemetry benchmark: CommsService → local Mosquitto at QoS 1, zero loss checked.

    .venv/bin/python scripts/bench_mqtt.py [--seconds 60] [--rate 1000] [--out bench.json]
                                           [--url mqtt://127.0.0.1:1883]

Without ``--url`` a private mosquitto is started on a free loopback port. The agent side runs
in this process (events and metrics through ``publish_event``/``publish_metrics``, 9:1); a
subscriber in a separate process counts messages and checks every ``seq`` arrived. Reports
achieved rate, loss, duplicates, end-to-end latency and the agent's CPU cost (process CPU
time / wall, and per thread from /proc).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.comms.service import CommsService
from agent.config.broker import MqttConfig

FLEET, DEVICE = "bench", "bench-dev"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence false",
        "max_queued_messages 1000000",
        "max_inflight_messages 0",
        "log_type error",
    ]
    if os.geteuid() == 0:
        lines.insert(0, "user root")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def _subscriber(url: str, ready: Any, stop: Any, results: Any) -> None:
    """Child process: count every message and check sequence numbers."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = url.split("://")[1].rsplit(":", 1)
    seen: set[int] = set()
    stats = {"received": 0, "duplicates": 0, "out_of_order": 0}
    latencies: list[float] = []
    last = [0]

    def on_connect(c: paho.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe([(f"edge/{FLEET}/{DEVICE}/events", 1), (f"edge/{FLEET}/{DEVICE}/metrics", 1)])

    def on_subscribe(c: paho.Client, u: Any, mid: int, rcs: Any, p: Any) -> None:
        ready.set()

    def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        seq = int(doc["seq"])
        stats["received"] += 1
        if seq in seen:
            stats["duplicates"] += 1
            return
        if seq < last[0]:
            stats["out_of_order"] += 1
        last[0] = max(last[0], seq)
        seen.add(seq)
        latencies.append(time.time() - float(doc["ts"]))

    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-sub")
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, int(port))
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3, 2)

    results.put(
        {
            **stats,
            "unique": len(seen),
            "seqs": sorted(seen),
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)} if latencies else {},
        }
    )


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process (Linux /proc), keyed by thread name."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / tick
        name = names.get(int(task.name), f"tid-{task.name}")
        out[name] = out.get(name, 0.0) + cpu
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="MQTT telemetry benchmark (QoS 1, zero loss).")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    parser.add_argument("--url", help="existing broker (default: start a private mosquitto)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    broker = None
    url = args.url
    if url is None:
        broker, url = _start_broker(work)
    ctx = mp.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    sub = ctx.Process(target=_subscriber, args=(url, ready, stop, results), daemon=True)
    sub.start()
    if not ready.wait(15):
        raise SystemExit("subscriber did not subscribe")
    cfg = MqttConfig(enabled=True, url=url, keepalive_s=30, reconnect_min_s=0.2)
    svc = CommsService(cfg, fleet=FLEET, device_id=DEVICE, state_dir=work / "state")
    svc.start()
    assert svc.client is not None
    if not svc.client.wait_connected(10):
        raise SystemExit("agent did not connect")
    metrics = {
        "uptime_s": 1.0,
        "sources": {
            "cam0": {
                "state": "running",
                "fps": 15.0,
                "latency_ms": {"p50": 20.0, "p99": 35.0},
                "drops": 0,
                "frames": 100,
            },
        },
        "power_w": 7.5,
        "temperatures_c": {"cpu": 50.0, "gpu": 48.0},
        "memory": {"used_mib": 3000.0, "total_mib": 7620.0},
        "gpu_load_pct": 60.0,
        "fps_per_w": 2.0,
    }
    total = int(args.rate * args.seconds)
    tick = 0.01
    per_tick = args.rate * tick
    cpu0, wall0, threads0 = time.process_time(), time.monotonic(), _thread_cpu()
    sent = 0
    next_t = wall0
    while sent < total:
        due = min(total, int((time.monotonic() - wall0) / tick * per_tick) + int(per_tick))
        while sent < due:
            if sent % 10 == 9:
                svc.publish_metrics(metrics)
            else:
                svc.publish_event("bench.tick", {"i": sent, "source": "cam0", "state": "running"})
            sent += 1
        next_t += tick
        time.sleep(max(0.0, next_t - time.monotonic()))
    publish_wall = time.monotonic() - wall0
    drained = svc.wait_drained(60)
    wall = time.monotonic() - wall0
    cpu = time.process_time() - cpu0
    threads1 = _thread_cpu()
    status = svc.status().as_dict()
    time.sleep(1.0)
    stop.set()
    sub_res = results.get(timeout=60)
    sub.join(10)
    svc.close()
    if broker is not None:
        broker.terminate()
        broker.wait(10)
    seqs = sub_res.pop("seqs")
    expected = set(range(1, total + 1))
    missing = len(expected - set(seqs))
    per_thread = {}
    for name, secs in threads1.items():
        used = secs - threads0.get(name, 0.0)
        if used > 0.01:
            per_thread[name] = round(used, 2)
    result = {
        "seconds": args.seconds,
        "target_rate": args.rate,
        "messages": total,
        "publish_wall_s": round(publish_wall, 2),
        "achieved_rate": round(total / publish_wall, 1),
        "drained": drained,
        "drain_wall_s": round(wall, 2),
        # what reached the broker per second, publishing and the final drain together
        "delivered_rate": round(total / wall, 1),
        "drain_tail_s": round(wall - publish_wall, 2),
        "acked": status["sent"],
        "received_unique": sub_res["unique"],
        "missing": missing,
        "duplicates": sub_res["duplicates"],
        "out_of_order": sub_res["out_of_order"],
        "latency_ms": sub_res["latency_ms"],
        "agent_cpu_s": round(cpu, 2),
        "agent_cpu_pct_of_one_core": round(100 * cpu / wall, 1),
        "agent_cpu_per_thread_s": per_thread,
        "spool_dropped": status["dropped"],
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    rows = [
        ("messages (QoS 1)", f"{total}"),
        ("target rate", f"{args.rate:.0f} msg/s for {args.seconds:g} s"),
        ("achieved publish rate", f"{result['achieved_rate']} msg/s"),
        ("delivered rate", f"{result['delivered_rate']} msg/s (tail {result['drain_tail_s']} s)"),
        ("acknowledged (PUBACK)", f"{status['sent']}"),
        ("received unique", f"{sub_res['unique']}"),
        ("missing / duplicates", f"{missing} / {sub_res['duplicates']}"),
        ("out of order", f"{sub_res['out_of_order']}"),
        ("latency p50/p99/max", "{p50}/{p99}/{max} ms".format(**sub_res["latency_ms"])),
        ("agent CPU", f"{cpu:.2f} s = {result['agent_cpu_pct_of_one_core']}% of one core"),
    ]
    for name, secs in sorted(per_thread.items(), key=lambda kv: -kv[1]):
        rows.append((f"  thread {name}", f"{secs:.2f} s"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    # The broker must keep up, not only the spool: after the last publish, what is left must
    # drain in about a second (a backlog would mean delivery slower than the target rate).
    kept_up = wall - publish_wall <= 1.0 + 0.02 * args.seconds
    ok = missing == 0 and drained and kept_up and result["achieved_rate"] >= 0.98 * args.rate
    print("PASS" if ok else "FAIL")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
