#!/usr/bin/env python3
"""Fuzz the running daemon over MQTT: seeded mutated command and OTA messages.

Starts a real Mosquitto on loopback and the real daemon (``python -m agent run``, CPU profile,
the bundled shapes classifier, OTA on with a trusted key), as the OTA end-to-end tests do. Then,
for each kind, publishes ``--count`` mutated messages in batches of ``--batch``:

* ``command``: valid requests of every command (and odd command names) on ``.../cmd/<name>``,
  mutated (truncated, deep, huge, many members, wrong types, lone surrogates, invalid UTF-8,
  number bombs, duplicate keys, not JSON, unknown keys);
* ``ota``: the signed envelope of a real inline push and its chunks, mutated the same ways plus
  forged chunks (counts, indexes, paths, data, padding), chunks for unannounced manifest ids and
  tampered manifests, on ``.../ota``.

After each batch the daemon must be alive and answer a ``ping`` (within ``--ping-timeout`` s;
``busy`` / ``rate_limited`` are waited out). A batch is **held** when it is, **crashed** when
the daemon exited or stopped answering (the daemon is then restarted and the batch's messages
listed for replay with the same ``--seed``). Finally (unless ``--no-final-push``) the real signed
push is published with forged chunks interleaved, and its final state reported.

Prints a Markdown table; ``--out`` writes the JSON report.

    .venv/bin/python scripts/bench_fuzz.py --count 200 --out fuzz.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.fleet.publish import PushRequest, plan_push, sign_and_publish, start_payload  # noqa: E402
from agent.fleet.push import chunk_messages  # noqa: E402
from tests.assets import SAMPLE_VIDEO  # noqa: E402
from tests.helpers.broker import Broker, Collector  # noqa: E402  (test helpers: real Mosquitto)
from tests.helpers.message_mutations import (  # noqa: E402
    GENERIC,
    OTA_SPECIFIC,
    Mutation,
    forged_chunk,
)
from tests.helpers.ota_e2e_util import (  # noqa: E402
    Daemon,
    copy_bundle,
    keygen,
    wait_until,
    write_config,
    write_profile,
)

FLEET, DEVICE = "fuzz", "fuzz-dev"
BASE = f"edge/{FLEET}/{DEVICE}"
PUSH_VERSION = 2
TERMINAL = ("active", "rejected", "failed", "rolled_back")
#: valid requests: command name → args
COMMANDS: dict[str, dict[str, Any]] = {
    "ping": {},
    "get-config": {},
    "snapshot": {"max_bytes": 65536, "quality": 80},
    "reload": {},
    "set-profile": {"name": "cpu"},
    "calib-collect": {"model": "shapes-cls", "count": 2},
    "rollback-model": {},
}
ODD_NAMES = ["nosuch", "x" * 300, "ünïcödé", "..", "%s%n", "a b", "PING"]


@dataclass
class Tally:
    """Messages of one kind: tried, held (daemon alive and answering after their batch),
    crashed (it exited or stopped answering)."""

    tried: int = 0
    held: int = 0
    crashed: int = 0
    crashes: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    label: str


class Bench:
    """The broker, the daemon and the observer; :meth:`fuzz` runs one kind."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.broker = Broker(work / "mqtt").start()
        key, pub = keygen(work / "keys", "fleet")
        trust = work / "trust"
        trust.mkdir()
        (trust / "fleet.pub").write_bytes(pub.read_bytes())
        self.key = key
        self.config = write_config(
            work / "agent.yaml",
            fleet=FLEET,
            device=DEVICE,
            bundle=copy_bundle(work / "base"),
            video=SAMPLE_VIDEO,
            state_dir=work / "state",
            trust_dir=trust,
        )
        _private_calib(self.config, work / "calib")
        self.profiles = write_profile(work / "profiles", telemetry_s=1.0)
        self.watch = Collector(self.broker.url, [f"{BASE}/cmd/response", f"{BASE}/model"])
        self.daemon: Daemon | None = None
        self.health_n = 0
        self.restarts = 0

    # ------------------------------------------------------------------ daemon

    def start_daemon(self) -> None:
        self.daemon = Daemon(
            self.config,
            cache_dir=self.work / "cache",
            profiles_dir=self.profiles,
            mqtt_url=self.broker.url,
            log=self.work / "daemon.log",
        )
        wait_until(lambda: self.ping(5.0), self.args.start_timeout, "the daemon to answer ping")

    def rss_mib(self) -> dict[str, float]:
        """VmRSS and VmHWM (peak) of the daemon, MiB."""
        assert self.daemon is not None
        out: dict[str, float] = {}
        try:
            text = Path(f"/proc/{self.daemon.pid}/status").read_text()
        except OSError:
            return out
        for line in text.splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line[:5]] = round(int(line.split()[1]) / 1024, 1)
        return out

    def ping(self, timeout_s: float) -> bool:
        """A ``pong`` within ``timeout_s`` (``busy`` / ``rate_limited`` retried after the hint)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.daemon is not None and not self.daemon.alive():
                return False
            self.health_n += 1
            rid = f"health-{self.health_n}"
            request = {"id": rid, "ts": time.time(), "ttl_s": 60, "client": "bench-health"}
            self.watch.client.publish(f"{BASE}/cmd/ping", json.dumps(request), qos=1)
            reply = self._reply(rid, deadline)
            if reply is None:
                return False
            code = (reply.get("error") or {}).get("code") if not reply.get("ok") else None
            if code not in ("busy", "rate_limited"):
                return True  # answered (a daemon without per-client limits refuses `client`)
            time.sleep(min(2.0, float(reply.get("retry_after_s") or 0.2)))
        return False

    def _reply(self, rid: str, deadline: float) -> dict[str, Any] | None:
        topic = f"{BASE}/cmd/response"

        def mine(_messages: object) -> bool:
            return any(_response_id(m.payload) == rid for m in self.watch.on(topic))

        if not self.watch.wait_for(mine, max(0.1, deadline - time.monotonic())):
            return None
        found = [m.payload for m in self.watch.on(topic) if _response_id(m.payload) == rid]
        doc = json.loads(found[-1])
        return doc if isinstance(doc, dict) else None

    def healthy(self) -> bool:
        return self.daemon is not None and self.daemon.alive() and self.ping(self.args.ping_timeout)

    # ------------------------------------------------------------------ messages

    def command_messages(self, count: int) -> list[Message]:
        names = [*COMMANDS, *ODD_NAMES]
        out: list[Message] = []
        for i in range(count):
            rng = random.Random(f"{self.args.seed}-command-{i}")
            name = rng.choice(names)
            base = {"id": f"fz-{i}", "ts": time.time(), "ttl_s": 60, "args": COMMANDS.get(name, {})}
            mutation = rng.choice(GENERIC)
            payload = mutation(json.dumps(base).encode(), rng)
            out.append(Message(f"{BASE}/cmd/{name}", payload, f"{name}:{mutation.__name__}:{i}"))
        return out

    def signed_push(self) -> tuple[bytes, list[bytes]]:
        """The envelope and chunks of a real inline push of ``PUSH_VERSION`` (not published)."""
        bundle = copy_bundle(self.work / f"v{PUSH_VERSION}", version=PUSH_VERSION)
        request = PushRequest(
            bundle_dir=bundle,
            key_path=self.key,
            version=PUSH_VERSION,
            fleet=FLEET,
            device=DEVICE,
            group=None,
            source="inline",
            chunk_kib=16,
        )
        plan = plan_push(request)
        payload, _server = start_payload(request, plan)
        result = sign_and_publish(request, plan, payload)
        chunks = list(chunk_messages(result.manifest, result.envelope["manifest"], plan.files))
        return json.dumps(result.envelope).encode(), chunks

    def ota_messages(self, count: int, envelope: bytes, chunks: list[bytes]) -> list[Message]:
        mutations: tuple[Mutation, ...] = (*GENERIC, *OTA_SPECIFIC, *OTA_SPECIFIC)
        out: list[Message] = []
        for i in range(count):
            rng = random.Random(f"{self.args.seed}-ota-{i}")
            base = envelope if rng.random() < 0.3 else rng.choice(chunks)
            mutation = rng.choice(mutations)
            what = "manifest" if base is envelope else "chunk"
            out.append(
                Message(f"{BASE}/ota", mutation(base, rng), f"{what}:{mutation.__name__}:{i}")
            )
        return out

    # ------------------------------------------------------------------ fuzzing

    def fuzz(self, messages: list[Message]) -> Tally:
        tally = Tally()
        for start in range(0, len(messages), self.args.batch):
            batch = messages[start : start + self.args.batch]
            self._publish_all([(m.topic, m.payload) for m in batch])
            tally.tried += len(batch)
            if self.healthy():
                tally.held += len(batch)
                continue
            tally.crashed += len(batch)
            assert self.daemon is not None
            tally.crashes.append(
                {
                    "exit_code": self.daemon.proc.poll(),
                    "messages": [m.label for m in batch],
                    "log_tail": self.daemon.tail(15),
                }
            )
            self.daemon.stop(5)
            self.restarts += 1
            self.start_daemon()
        return tally

    def final_push(self, envelope: bytes, chunks: list[bytes]) -> dict[str, Any]:
        """The real signed push with a forged copy of each chunk before it; the real chunks are
        sent again every ``--resend-s`` s until the update ends (as a sender retries a transfer
        whose messages were dropped): its final state and how many times it was re-sent."""
        rng = random.Random(f"{self.args.seed}-final")
        ota = f"{BASE}/ota"
        self._publish_all([(ota, envelope)])
        self._publish_all([(ota, m) for c in chunks for m in (forged_chunk(c, rng), c)])
        deadline = time.monotonic() + self.args.push_timeout
        resends = 0
        while time.monotonic() < deadline:
            doc = self._final_record()
            if doc is not None:
                return {"state": doc["state"], "reason": doc.get("reason"), "resends": resends}
            if self.watch.wait_for(lambda _m: self._final_record() is not None, self.args.resend_s):
                continue
            resends += 1
            self._publish_all([(ota, c) for c in chunks])
        return {"state": "timeout", "reason": None, "resends": resends}

    def _publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        infos = [self.watch.client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=10)

    def _final_record(self) -> dict[str, Any] | None:
        for msg in reversed(self.watch.on(f"{BASE}/model")):
            doc = json.loads(msg.payload)
            if doc.get("version") == PUSH_VERSION and doc.get("state") in TERMINAL:
                return doc
        return None

    def log_errors(self) -> int:
        """Error records and tracebacks in the daemon's log (it may hold on and still log them)."""
        try:
            text = (self.work / "daemon.log").read_text(errors="replace")
        except OSError:
            return 0
        return sum(
            1 for line in text.splitlines() if '"level": "error"' in line or "Traceback" in line
        )

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop(10)
        self.watch.close()
        self.broker.stop()


def _private_calib(config: Path, calib: Path) -> None:
    """A copy of the calibration frames in the work dir: ``calib-collect`` writes there, never
    into the package's ``agent/data/calib/``."""
    doc = yaml.safe_load(config.read_text())
    for model in doc["models"]:
        shutil.copytree(model["calib_dir"], calib / model["name"])
        model["calib_dir"] = str(calib / model["name"])
    config.write_text(yaml.safe_dump(doc, sort_keys=False))


def _response_id(payload: bytes) -> Any:
    try:
        return json.loads(payload).get("id")
    except (ValueError, AttributeError):
        return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-fuzz-"))
    bench = Bench(work, args)
    started = time.monotonic()
    try:
        bench.start_daemon()
        rss_start = bench.rss_mib()
        envelope, chunks = bench.signed_push()
        kinds = {
            "command": bench.fuzz(bench.command_messages(args.count)),
            "ota": bench.fuzz(bench.ota_messages(args.count, envelope, chunks)),
        }
        rss_end = bench.rss_mib()
        final = None if args.no_final_push else bench.final_push(envelope, chunks)
        alive = bench.healthy()
        log_errors = bench.log_errors()
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "seed": args.seed,
        "count": args.count,
        "batch": args.batch,
        "kinds": {k: asdict(v) for k, v in kinds.items()},
        "restarts": bench.restarts,
        "alive_at_end": alive,
        "daemon_log_errors": log_errors,
        "rss_mib": {
            "start": rss_start.get("VmRSS"),
            "end": rss_end.get("VmRSS"),
            "peak": rss_end.get("VmHWM"),
        },
        "final_push": final,
        "wall_s": round(time.monotonic() - started, 1),
        "workdir": str(work) if args.keep else None,
    }


def markdown(report: dict[str, Any]) -> str:
    rows = ["| kind | tried | held | crashed |", "|---|---|---|---|"]
    for kind, tally in report["kinds"].items():
        rows.append(f"| {kind} | {tally['tried']} | {tally['held']} | {tally['crashed']} |")
    rss = report["rss_mib"]
    rows.append("")
    rows.append(
        f"daemon RSS {rss['start']} → {rss['end']} MiB (peak {rss['peak']} MiB); "
        f"restarts {report['restarts']}; alive at end: {report['alive_at_end']}; "
        f"error/traceback lines in the daemon log: {report['daemon_log_errors']}; "
        f"final signed push: {report['final_push']}; {report['wall_s']} s, "
        f"seed {report['seed']}"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=60, help="messages per kind (default 60)")
    parser.add_argument("--batch", type=int, default=15, help="messages between health checks")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--ping-timeout", type=float, default=15.0)
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--push-timeout", type=float, default=60.0)
    parser.add_argument("--resend-s", type=float, default=10.0, help="final push: resend after")
    parser.add_argument("--no-final-push", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (daemon.log)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    report = run(args)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(markdown(report))
    crashed = sum(t["crashed"] for t in report["kinds"].values())
    return 1 if crashed or not report["alive_at_end"] else 0


if __name__ == "__main__":
    sys.exit(main())
