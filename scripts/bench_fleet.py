#!/usr/bin/env python3
"""Fleet controller benchmark: a real Mosquitto, a real ``edge-agent fleet serve`` (SQLite store)
and simulated devices (``python -m agent.fleet.sim``), all on this machine.

    python scripts/bench_fleet.py                       # 1,000 devices, 5 s metrics, --rate 600
    python scripts/bench_fleet.py --devices 200 --steady-s 20 --out bench.json --md bench.md

Phases, each measured on the controller side (its HTTP API and /proc of its process):

1. **register**: the simulated fleet connects; devices registered per second = devices / (last
   ``first_seen`` − first ``first_seen``) in the controller's registry.
2. **steady**: every device reports metrics every ``--interval`` s for ``--steady-s`` s; messages
   ingested per second and the controller's CPU (user + system time of its process / wall time,
   % of one core) and resident memory.
0. **burst** (first, while nothing else reports): one publisher sends ``--burst`` metrics
   messages for 200 devices of their own as fast as the broker takes them (QoS 1); the
   controller's ingest rate = messages taken / time until all are taken or dropped (the ceiling
   of one instance on this store; a burst above the intake queue, 10,000, is partly dropped and
   counted).
4. **rollout**: a rollout to every simulated device at ``--rate`` per minute (canary 1 %, waves
   10 %, 100 %, soak 0); the time from start to ``completed``, beside the floor the rate sets.

It prints a table and writes JSON (``--out``) and Markdown (``--md``). Figures depend on the
machine; run it on an idle one and compare runs, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.comms.mqtt import MqttClient  # noqa: E402
from agent.config.broker import MqttConfig  # noqa: E402
from agent.fleet.client import FleetClient  # noqa: E402
from agent.fleet.keygen import generate_keypair  # noqa: E402
from tests.assets import CLS_BUNDLE  # noqa: E402
from tests.helpers.broker import Broker  # noqa: E402  (test helpers: real Mosquitto)
from tests.helpers.fleet_messages import FLEET as MSG_FLEET  # noqa: E402
from tests.helpers.fleet_messages import Device  # noqa: E402

FLEET = "bench"
MODEL = "shapes-cls"
_TICKS = os.sysconf("SC_CLK_TCK")


def _raise_fd_limit() -> None:
    """A broker with 1,000+ sessions needs more than the usual 1,024 descriptors (children
    inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wait(pred: Callable[[], Any], timeout_s: float, what: str, step: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise SystemExit(f"bench: timed out after {timeout_s:.0f} s waiting for {what}")


class Bench:
    """The broker, the controller process and the simulator process of one run."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work, self.args = work, args
        self.broker = Broker(work / "mqtt").start()
        keys = generate_keypair(work / "keys", "bench")
        self.key = keys.private_key
        self.trust = work / "trust"
        self.trust.mkdir()
        (self.trust / keys.public_key.name).write_bytes(keys.public_key.read_bytes())
        self.token = "bench-" + os.urandom(16).hex()
        (work / "api.token").write_text(self.token + "\n")
        self.controller: subprocess.Popen[str] | None = None
        self.sim: subprocess.Popen[str] | None = None
        self.api: FleetClient | None = None

    def start_controller(self) -> None:
        cfg = {
            "fleet": FLEET,
            "mqtt": {"enabled": True, "url": self.broker.url, "reconnect_min_s": 0.2},
            "store": {"kind": "sqlite", "path": "fleet.db"},
            "api": {"host": "127.0.0.1", "port": 0, "token_file": "api.token"},
            "bundle_server": {"host": "127.0.0.1", "port": 0},
            "rollouts": {"offline_after_s": 120, "probation_timeout_s": 300},
            "instance_id": "bench-1",
        }
        config = self.work / "fleet.yaml"
        config.write_text(json.dumps(cfg))  # JSON is YAML
        self.controller = subprocess.Popen(
            [sys.executable, "-m", "agent", "fleet", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=(self.args.controller_log or self.work / "controller.log").open("wb"),
            text=True,
            cwd=REPO,
        )
        assert self.controller.stdout is not None
        for line in self.controller.stdout:
            if line.startswith("api:"):
                self.api = FleetClient(line.split(None, 1)[1].strip(), self.token)
                return
        raise SystemExit("bench: the controller exited before printing its API URL")

    def start_sim(self) -> None:
        a = self.args
        cmd = [sys.executable, "-m", "agent.fleet.sim", "--devices", str(a.devices)]
        cmd += ["--mqtt-url", self.broker.url, "--trust-dir", str(self.trust), "--fleet", FLEET]
        cmd += ["--model", MODEL, "--interval", str(a.interval), "--step", "0.1"]
        cmd += ["--progress", "3600", "--seed", "7", "--group", "sims"]
        self.sim = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, cwd=REPO
        )

    def health(self) -> dict[str, Any]:
        assert self.api is not None
        return self.api.get("/api/health")

    def devices(self) -> list[dict[str, Any]]:
        assert self.api is not None
        return self.api.devices()

    def stop(self) -> None:
        for proc in (self.sim, self.controller):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.broker.stop()


def _register(bench: Bench, n: int) -> dict[str, Any]:
    t0 = time.monotonic()
    bench.start_sim()

    def sims() -> list[dict[str, Any]]:
        found = [d for d in bench.devices() if d["device"].startswith("sim-")]
        return found if len(found) >= n else []

    found = _wait(sims, 120 + n / 10, f"{n} devices in the registry", step=0.5)
    firsts = sorted(float(d["first_seen"]) for d in found)
    span = max(firsts[-1] - firsts[0], 1e-3)
    return {
        "devices": n,
        "registered_per_s": round(n / span, 1),
        "span_s": round(span, 2),
        "wall_s": round(time.monotonic() - t0, 1),
    }


def _steady(bench: Bench, seconds: float) -> dict[str, Any]:
    assert bench.controller is not None
    pid = bench.controller.pid
    time.sleep(min(10.0, seconds / 3))  # let the phases spread
    taken0, cpu0, t0 = bench.health()["ingest"]["taken"], _proc_cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    health, cpu1, t1 = bench.health(), _proc_cpu_s(pid), time.monotonic()
    ingest = health["ingest"]
    return {
        "seconds": round(t1 - t0, 1),
        "messages_per_s": round((ingest["taken"] - taken0) / (t1 - t0), 1),
        "cpu_pct_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "rss_mib": round(_proc_rss_mib(pid), 1),
        "dropped": ingest["dropped"],
        "queued": ingest["queued"],
    }


def _burst(bench: Bench, count: int) -> dict[str, Any]:
    client = MqttClient(
        MqttConfig(enabled=True, url=bench.broker.url), client_id="bench-burst", max_inflight=1000
    )
    client.start()
    if not client.wait_connected(10):
        raise SystemExit("bench: the burst publisher could not connect")
    devices = [Device(f"burst-{i:04d}") for i in range(200)]
    taken0 = bench.health()["ingest"]["taken"]
    t0 = time.monotonic()
    infos = []
    for i in range(count):
        topic, payload = devices[i % len(devices)].metrics(ts=time.time())
        topic = topic.replace(f"edge/{MSG_FLEET}/", f"edge/{FLEET}/", 1)
        infos.append(client.publish(topic, payload, qos=1))
    published = time.monotonic() - t0

    def done() -> dict[str, Any] | None:
        ingest = bench.health()["ingest"]
        return ingest if ingest["taken"] - taken0 + ingest["dropped"] >= count else None

    ingest = _wait(done, 120 + count / 100, f"{count} burst messages ingested", step=0.05)
    elapsed = time.monotonic() - t0
    client.close()
    taken = ingest["taken"] - taken0
    return {
        "messages": count,
        "ingested": taken,
        "ingested_per_s": round(taken / elapsed, 1),
        "publish_s": round(published, 2),
        "dropped": ingest["dropped"],
        "sent": sum(1 for i in infos if i is not None),
    }


def _rollout(bench: Bench, n: int, rate: float) -> dict[str, Any]:
    assert bench.api is not None
    spec = {
        "bundle": str(CLS_BUNDLE),
        "version": 2,
        "target": "group:sims",  # not the burst phase's devices, which never answer
        "canary": "1%",
        "waves": ["10%", "100%"],
        "rate_per_min": rate,
        "soak_s": 0,
        "max_failed_pct": 100,
    }
    t0 = time.monotonic()
    status = bench.api.start_rollout(spec, bench.key)
    start_s = time.monotonic() - t0  # planning, copying and signing one manifest per device
    rollout_id = status["id"]

    def finished() -> dict[str, Any] | None:
        current = bench.api.rollout(rollout_id) if bench.api else {}
        return current if current.get("state") in ("completed", "aborted") else None

    final = _wait(finished, 120 + 2 * n * 60 / rate, "the rollout to end", step=1.0)
    elapsed = time.monotonic() - t0
    return {
        "devices": n,
        "rate_per_min": rate,
        "state": final["state"],
        "counts": final["counts"],
        "seconds": round(elapsed, 1),
        "start_s": round(start_s, 1),
        "floor_s": round(n * 60 / rate, 1),
    }


def _table(result: dict[str, Any]) -> str:
    r, s, b, o = result["register"], result["steady"], result["burst"], result["rollout"]
    rows = [
        ("devices registered per second", f"{r['registered_per_s']:,}", f"{r['devices']} devices"),
        (
            f"metrics ingested per second (steady, every {result['interval_s']:g} s)",
            f"{s['messages_per_s']:,}",
            f"dropped {s['dropped']}",
        ),
        (
            "controller CPU (steady)",
            f"{s['cpu_pct_one_core']} % of one core",
            f"RSS {s['rss_mib']} MiB",
        ),
        (
            "metrics ingested per second (burst, one instance)",
            f"{b['ingested_per_s']:,}",
            f"{b['ingested']} of {b['messages']} taken, {b['dropped']} dropped",
        ),
        (
            f"rollout to {o['devices']} devices at --rate {o['rate_per_min']:g}",
            f"{o['seconds']} s ({o['state']})",
            f"floor {o['floor_s']} s (the rate); start (plan + sign) {o['start_s']} s; "
            f"active {o['counts']['active']}",
        ),
    ]
    lines = ["| Figure | Value | Notes |", "|---|---|---|"]
    lines += [f"| {a} | {v} | {n} |" for a, v, n in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    p.add_argument("--interval", type=float, default=5.0, help="metrics interval, s (default 5)")
    p.add_argument("--steady-s", type=float, default=60.0, help="steady phase length, s")
    p.add_argument("--burst", type=int, default=8000, help="burst phase messages")
    p.add_argument("--rate", type=float, default=600.0, help="rollout --rate per minute")
    p.add_argument("--controller-log", type=Path, default=None, help="keep its log here")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    p.add_argument("--md", type=Path, default=None, help="write the table as Markdown")
    args = p.parse_args(argv)
    _raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        bench = Bench(Path(tmp), args)
        try:
            bench.start_controller()
            print(f"bench: controller up; starting {args.devices} simulated devices", flush=True)
            result: dict[str, Any] = {"interval_s": args.interval, "cpus": os.cpu_count()}
            result["burst"] = _burst(bench, args.burst)
            print(f"bench: burst {result['burst']}", flush=True)
            result["register"] = _register(bench, args.devices)
            print(f"bench: registered {result['register']}", flush=True)
            result["steady"] = _steady(bench, args.steady_s)
            print(f"bench: steady {result['steady']}", flush=True)
            result["rollout"] = _rollout(bench, args.devices, args.rate)
            print(f"bench: rollout {result['rollout']}", flush=True)
        finally:
            bench.stop()
    table = _table(result)
    print(table)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        args.md.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
