#!/usr/bin/env python3
"""Benchmark an over-the-air update end to end on this host's CPU profile.

Starts a real Mosquitto and the real daemon (``python -m agent run --jsonl ...``) serving the
bundled sample video (looping, paced at its own frame rate), then pushes ``--pushes`` new
versions of the bundled shapes classifier with ``edge-agent push --serve``; each version has a
slightly different ONNX file, so each one is downloaded, built (int8 + fp32), validated, hot
swapped and watched for ``--probation`` seconds. Reports:

* push-to-active: from starting ``edge-agent push`` to the retained ``model`` state ``active``
  (median of the pushes), and from ``received`` to ``active``;
* the time in each state, from the ``ts`` of the retained ``model`` state messages: verify
  (received → verified), download (verified → downloaded), build_and_gate (building →
  validating: prepare, calibrate, quantize, build, validation gate — or an engine-cache hit),
  golden (validating → activating: golden checks, when the push has them), activate
  (activating → probation: warm-up of the new workers + swap),
  probation (probation → active); the ``model.swapped`` event's dispatch gap;
* frames lost during the swaps: the result indices of the video source in the ``--jsonl``
  output must be every index once, in order.

    .venv/bin/python scripts/bench_ota.py --pushes 3 --out ota-bench.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.assets import SAMPLE_VIDEO  # noqa: E402
from tests.helpers.broker import Broker, Collector  # noqa: E402  (test helpers: real Mosquitto)
from tests.helpers.ota_e2e_util import (  # noqa: E402
    Daemon,
    cli_env,
    copy_bundle,
    keygen,
    perturbed_bundle,
    wait_until,
    write_config,
    write_profile,
)

FLEET, DEVICE = "bench", "bench-dev"
#: (label, from state, to state) of the breakdown
PHASES = [
    ("verify", "received", "verified"),
    ("download", "verified", "downloaded"),
    ("admit", "downloaded", "building"),
    ("build_and_gate", "building", "validating"),
    ("golden", "validating", "activating"),
    ("activate", "activating", "probation"),
    ("probation", "probation", "active"),
]


def _push(env: dict[str, Any], bundle: Path, version: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "agent", "push", str(bundle), "--key", str(env["key"])]
    cmd += ["--version", str(version), "--serve", "--serve-for", "300", "--device", DEVICE]
    cmd += ["--fleet", FLEET, "--mqtt-url", env["url"], "--wait", "0"]  # it times states itself
    return subprocess.Popen(
        cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _states(watch: Collector, version: int) -> dict[str, float]:
    """First ``ts`` of each state of ``version`` on the model topic."""
    seen: dict[str, float] = {}
    for msg in watch.on(f"edge/{FLEET}/{DEVICE}/model"):
        doc = msg.json()
        if doc.get("version") == version and doc.get("state") not in seen:
            seen[doc["state"]] = float(doc["ts"])
    return seen


def _final(watch: Collector, version: int) -> dict[str, Any] | None:
    for msg in watch.on(f"edge/{FLEET}/{DEVICE}/model"):
        doc = msg.json()
        if doc.get("version") == version and doc.get("state") in (
            "active",
            "rejected",
            "failed",
            "rolled_back",
        ):
            return doc
    return None


def frame_check(jsonl: Path, source: str) -> dict[str, Any]:
    """Indices of ``source`` in the JSONL results: lost, duplicated, out of order."""
    indices = [
        int(doc["index"])
        for doc in (json.loads(line) for line in jsonl.read_text().splitlines() if line.strip())
        if doc.get("source") == source
    ]
    if not indices:
        return {"results": 0, "lost": None, "duplicates": None, "out_of_order": None}
    expected = set(range(indices[0], indices[-1] + 1))
    return {
        "results": len(indices),
        "first": indices[0],
        "last": indices[-1],
        "lost": len(expected - set(indices)),
        "duplicates": len(indices) - len(set(indices)),
        "out_of_order": sum(1 for a, b in itertools.pairwise(indices) if b <= a),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-ota-"))
    broker = Broker(work / "mqtt").start()
    daemon: Daemon | None = None
    pushes: list[subprocess.Popen[str]] = []
    try:
        key, pub = keygen(work / "keys", "fleet")
        trust = work / "trust"
        trust.mkdir()
        (trust / "fleet.pub").write_bytes(pub.read_bytes())
        config = write_config(
            work / "agent.yaml",
            fleet=FLEET,
            device=DEVICE,
            bundle=copy_bundle(work / "base"),
            video=SAMPLE_VIDEO,
            state_dir=work / "state",
            trust_dir=trust,
            probation_s=args.probation,
        )
        jsonl = work / "results.jsonl"
        topic = f"edge/{FLEET}/{DEVICE}"
        watch = Collector(broker.url, [f"{topic}/model", f"{topic}/events", f"{topic}/metrics"])
        daemon = Daemon(
            config,
            cache_dir=work / "cache",
            profiles_dir=write_profile(work / "profiles", telemetry_s=1.0),
            mqtt_url=broker.url,
            log=work / "daemon.log",
            extra=("--jsonl", str(jsonl)),
        )
        wait_until(lambda: watch.on(f"{topic}/metrics"), 120, "the daemon to serve")
        env = {"key": key, "url": broker.url}
        runs: list[dict[str, Any]] = []
        for i in range(args.pushes):
            version = i + 2
            bundle = perturbed_bundle(work / f"v{version}", version=version, salt=version)
            t_push = time.time()
            pushes.append(_push(env, bundle, version))
            final = wait_until(lambda v=version: _final(watch, v), args.timeout, f"v{version}")
            states = _states(watch, version)
            phases = {
                label: round(states[b] - states[a], 3)
                for label, a, b in PHASES
                if a in states and b in states
            }
            swapped = [
                m.json()["data"]
                for m in watch.on(f"{topic}/events")
                if m.json().get("kind") == "model.swapped"
            ]
            runs.append(
                {
                    "version": version,
                    "state": final["state"],
                    "reason": final.get("reason"),
                    "push_to_active_s": round(states.get("active", float("nan")) - t_push, 3),
                    "received_to_active_s": round(
                        states.get("active", float("nan")) - states["received"], 3
                    ),
                    "phases_s": phases,
                    "swap": swapped[-1] if swapped else None,
                }
            )
            print(f"v{version}: {final['state']} {runs[-1]}", file=sys.stderr, flush=True)
        time.sleep(2.0)  # frames after the last swap
        daemon.stop()
        daemon = None
        frames = frame_check(jsonl, "video")
        ok = [r for r in runs if r["state"] == "active"]

        def median(values: list[float]) -> float | None:
            return round(statistics.median(values), 3) if values else None

        summary = {
            "pushes": len(runs),
            "active": len(ok),
            "probation_s": args.probation,
            "push_to_active_s": median([r["push_to_active_s"] for r in ok]),
            "received_to_active_s": median([r["received_to_active_s"] for r in ok]),
            "phases_s": {
                label: median([r["phases_s"][label] for r in ok if label in r["phases_s"]])
                for label, _a, _b in PHASES
            },
            "swap_gap_ms": median([r["swap"]["gap_ms"] for r in ok if r["swap"]]),
            "swap_warmup_s": median([r["swap"]["warmup_s"] for r in ok if r["swap"]]),
            "frames": frames,
            "host": {"python": sys.version.split()[0], "profile": "cpu"},
        }
        return {"summary": summary, "runs": runs}
    finally:
        for proc in pushes:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        if daemon is not None and daemon.alive():
            daemon.stop()
        broker.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work dir kept: {work}", file=sys.stderr)


def print_table(result: dict[str, Any]) -> None:
    s = result["summary"]
    rows = [
        ("pushes (active)", f"{s['pushes']} ({s['active']})"),
        ("push → active, median", f"{s['push_to_active_s']} s"),
        ("received → active, median", f"{s['received_to_active_s']} s"),
    ]
    rows += [(f"  {k}", f"{v} s") for k, v in s["phases_s"].items()]
    rows += [
        ("swap warm-up, median", f"{s['swap_warmup_s']} s"),
        ("swap dispatch gap, median", f"{s['swap_gap_ms']} ms"),
        ("probation window (configured)", f"{s['probation_s']} s"),
    ]
    f = s["frames"]
    rows += [
        ("file-source results", str(f["results"])),
        (
            "frames lost / duplicated / out of order",
            f"{f['lost']} / {f['duplicates']} / {f['out_of_order']}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=3, help="versions pushed (median over them)")
    parser.add_argument("--probation", type=float, default=2.0, help="ota.probation_s (s)")
    parser.add_argument("--timeout", type=float, default=180.0, help="per push (s)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    result = run(args)
    print_table(result)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    s = result["summary"]
    return 0 if s["active"] == s["pushes"] and s["frames"]["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
