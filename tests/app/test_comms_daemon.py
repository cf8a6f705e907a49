"""Issue #6 end to end: the real daemon (``python -m agent run``) against a real Mosquitto.

Birth, periodic metrics and events from the embedded default config with ``--mqtt-url``; the
retained last will after a SIGKILL; every command answered by the running daemon; metrics and
events spooled through a broker outage and delivered in order; rate-limited detections; the
Prometheus endpoint over real HTTP. One engine cache for the module: the engine is built once.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.core.fsutil import sha256_file
from tests.assets import DET_BUNDLE as BUNDLE
from tests.assets import DET_CALIB as CALIB
from tests.assets import REPO
from tests.helpers.broker import Broker, Collector, Message, free_port, mosquitto_binary

pytestmark = [
    pytest.mark.skipif(
        mosquitto_binary() is None,
        reason="mosquitto binary not installed (scripts/test.sh adds it)",
    ),
    pytest.mark.timeout(120),
]

FLEET, DEV = "e2e", "dev-e2e"
BASE = f"edge/{FLEET}/{DEV}"
PASSWORD = "s3cret-pass"
TELEMETRY_S = 1.0
ALT_TELEMETRY_S = 0.4
KEEPALIVE_S = 5


# --------------------------------------------------------------------------- helpers


class AgentProc:
    """``python -m agent run ...`` with a private HOME; stdout JSON log lines collected."""

    def __init__(self, args: list[str], home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(home))
        env.pop("XDG_CACHE_HOME", None)
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                with contextlib.suppress(ValueError), self._lock:
                    self.records.append(json.loads(line))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def find(self, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.records if pred(r)]

    def tail(self) -> str:
        with self._lock:
            out = [r.get("msg", "") for r in self.records[-15:]]
        return "\n".join(out) + "\nstderr: " + "".join(self.stderr)[-1500:]

    def wait_record(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(pred)
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no such log record within {timeout} s; log tail:\n{self.tail()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def _docs(col: Collector, topic: str) -> list[dict[str, Any]]:
    return [m.json() for m in col.on(topic)]


def _wait_docs(
    col: Collector,
    topic: str,
    pred: Callable[[dict[str, Any]], bool],
    timeout: float,
    what: str,
    *,
    agent: AgentProc | None = None,
) -> dict[str, Any]:
    def match(msgs: list[Message]) -> bool:
        return any(m.topic == topic and pred(m.json()) for m in msgs)

    if not col.wait_for(match, timeout):
        seen = [d.get("kind", d.get("seq")) for d in _docs(col, topic)][-20:]
        log_tail = agent.tail() if agent is not None else ""
        raise AssertionError(f"no {what} on {topic} within {timeout} s; saw {seen}\n{log_tail}")
    return [d for d in _docs(col, topic) if pred(d)][-1]


def _serving_engine_hash(agent: AgentProc) -> str:
    rec = agent.wait_record(lambda r: r.get("event") == "engine", 5)
    artifact = Path(rec["artifact"])
    manifest = json.loads((artifact / "artifact.json").read_text())
    return sha256_file(artifact / manifest["main_file"])


class Commander:
    """The fleet side: requests on ``.../cmd/<name>``, responses collected by id."""

    def __init__(self, url: str) -> None:
        self.col = Collector(url, [f"{BASE}/cmd/response"])
        host, port = url.split("://")[1].rsplit(":", 1)
        self.pub = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.pub.connect(host, int(port))
        self.pub.loop_start()

    def send_raw(self, name: str, payload: bytes) -> None:
        self.pub.publish(f"{BASE}/cmd/{name}", payload, qos=1).wait_for_publish(5)

    def send(self, name: str, args: dict[str, Any] | None = None) -> str:
        rid = uuid.uuid4().hex[:12]
        doc = {"id": rid, "expires": time.time() + 60, "args": args or {}}
        self.send_raw(name, json.dumps(doc).encode())
        return rid

    def responses(self) -> list[dict[str, Any]]:
        return _docs(self.col, f"{BASE}/cmd/response")

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict:
        ok = self.col.wait_for(lambda _m: any(pred(r) for r in self.responses()), timeout)
        assert ok, f"no response for {what} within {timeout} s; got {self.responses()[-5:]}"
        return [r for r in self.responses() if pred(r)][-1]

    def call(self, name: str, args: dict[str, Any] | None = None, timeout: float = 15) -> dict:
        rid = self.send(name, args)
        return self.wait(lambda r: r.get("id") == rid, timeout, f"{name} ({rid})")

    def close(self) -> None:
        self.pub.disconnect()
        self.pub.loop_stop()
        self.col.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One engine cache for every daemon of the module: the engine is built once."""
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="module")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped profiles with a 1 s telemetry interval on ``cpu``, plus ``cpu-alt``: the
    same build settings (switching to it reuses the cached engine), metrics every 0.4 s."""
    out = tmp_path_factory.mktemp("profiles")
    for path in (REPO / "device_profiles").glob("*.yaml"):
        shutil.copy(path, out / path.name)
    text = (out / "cpu.yaml").read_text()
    fast, n = re.subn(
        r"telemetry:\n  interval_s: [0-9.]+", f"telemetry:\n  interval_s: {TELEMETRY_S}", text
    )
    assert n == 1, "cpu.yaml has no telemetry.interval_s to shorten"
    (out / "cpu.yaml").write_text(fast)
    alt = fast.replace("name: cpu\n", "name: cpu-alt\n", 1).replace(
        f"telemetry:\n  interval_s: {TELEMETRY_S}", f"telemetry:\n  interval_s: {ALT_TELEMETRY_S}"
    )
    (out / "cpu-alt.yaml").write_text(alt)
    return out


@dataclass
class Env:
    broker: Broker
    agent: AgentProc
    config: Path
    calib: Path
    prom_port: int
    tmp: Path


def _write_config(
    path: Path, tmp: Path, broker: Broker, calib: Path, *, prom: int, fps: int
) -> None:
    path.write_text(
        f"""device_id: {DEV}
fleet: {FLEET}
profile: cpu
state_dir: {tmp / "state"}
cache_dir: {tmp / "unused-cache"}
models:
  - name: shapes-det
    bundle: {BUNDLE}
    calib_dir: {calib}
sources:
  - {{name: synth, type: synthetic, model: shapes-det, fps_cap: {fps}}}
mqtt:
  enabled: true
  url: {broker.url}
  keepalive_s: {KEEPALIVE_S}
  username: edge
  password: {PASSWORD}
  reconnect_min_s: 0.2
  reconnect_max_s: 1.0
  detections_enabled: true
  detections_max_per_s: 2
metrics:
  enabled: true
  port: {prom}
logging:
  level: info
daemon:
  stats_interval_s: 2
  stop_timeout_s: 5
"""
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, cache: Path, profiles: Path) -> Iterator[Env]:
    """A broker and one daemon (MQTT with detections, Prometheus, synthetic source) shared by
    the tests that do not kill the daemon."""
    tmp = tmp_path_factory.mktemp("daemon")
    broker = Broker(tmp / "broker").start()
    calib = tmp / "calib"
    shutil.copytree(CALIB, calib)  # same frames as calib/shapes-det: the cached engine fits
    prom = free_port()
    config = tmp / "agent.yaml"
    _write_config(config, tmp, broker, calib, prom=prom, fps=10)
    args = ["--config", str(config), "--cache-dir", str(cache), "--profiles-dir", str(profiles)]
    agent = AgentProc([*args, "--monitor-source", "host"], tmp / "home")
    try:
        agent.wait_record(lambda r: r.get("event") == "ready", 110)
        yield Env(broker, agent, config, calib, prom, tmp)
    finally:
        agent.stop()
        broker.stop()


# --------------------------------------------------------------------------- 1. default config


def test_cli_mqtt_url_on_the_default_config(tmp_path: Path, cache: Path, profiles: Path) -> None:
    """The embedded default (MQTT off) + ``--mqtt-url``: retained birth, periodic metrics with
    the documented fields, ``source.state`` events, clean ``offline`` on exit."""
    with Broker(tmp_path / "broker") as broker:
        col = Collector(broker.url, ["edge/#"])
        args = ["--mqtt-url", broker.url, "--cache-dir", str(cache), "--no-monitor"]
        args += ["--profiles-dir", str(profiles), "--duration", "6"]
        agent = AgentProc(args, tmp_path / "home")
        base = "edge/demo/demo-cpu"
        try:
            online = _wait_docs(
                col, f"{base}/state", lambda d: d["state"] == "online", 60, "birth", agent=agent
            )
            assert online["device"] == "demo-cpu" and online["boot"] == 1 and online["version"]
            metrics = _wait_docs(
                col,
                f"{base}/metrics",
                lambda d: d.get("sources", {}).get("sample", {}).get("frames", 0) >= 10,
                60,
                "metrics with frames",
                agent=agent,
            )
            # a late subscriber gets the birth as a retained message
            with Collector(broker.url, [f"{base}/state"]) as late:
                assert late.wait_for(bool, 5), "no retained state"
                first = late.messages[0]
                assert first.retain and first.json()["state"] == "online"
            assert agent.proc.wait(40) == 0, agent.tail()
        finally:
            agent.kill()
            col.close()

    src = metrics["sources"]["sample"]
    assert src["state"] == "streaming"
    assert src["fps"] > 0 and src["frames"] >= 10 and src["drops"] >= 0
    assert set(src["latency_ms"]) >= {"p50", "p99"} and src["latency_ms"]["p50"] > 0
    assert set(metrics["stages_ms"]) >= {"preprocess", "infer", "postprocess"}
    assert all(v >= 0 for v in metrics["stages_ms"].values())
    assert metrics["schema"] == "edge-agent/metrics/2" and metrics["device"] == "demo-cpu"
    assert src["latency_seconds"]["0.5"] == pytest.approx(src["latency_ms"]["p50"] / 1000)
    assert metrics["uptime_seconds"] == metrics["uptime_s"]  # metrics/1 fields kept, deprecated
    # what the fleet table shows in its board and profile columns (a CPU host: OS and machine)
    assert (
        metrics["profile"] == "cpu"
        and metrics["board"] == f"{platform.system()} {platform.machine()}"
    )
    assert 0 < metrics["uptime_s"] < 120 and metrics["boot"] == 1
    model = metrics["model"]
    assert model["name"] == "shapes-det" and model["version"] >= 1
    assert model["precision"] in ("int8", "fp32")
    assert model["engine_hash"] == _serving_engine_hash(agent), "engine_hash is not the file's"
    assert metrics["models"]["shapes-det"] == model
    comms = metrics["comms"]  # store-and-forward counters reach the fleet
    assert comms["dropped"] == 0 and comms["spooled"] >= 0 and comms["sent"] >= 1

    all_metrics = _docs(col, f"{base}/metrics")
    assert len(all_metrics) >= 3, f"metrics every {TELEMETRY_S} s: got {len(all_metrics)}"
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(all_metrics)]
    assert all(0.5 * TELEMETRY_S <= g <= 3 * TELEMETRY_S for g in gaps), gaps
    events = _docs(col, f"{base}/events")
    states = [e["data"]["new"] for e in events if e["kind"] == "source.state"]
    assert "streaming" in states, f"no source.state → streaming event: {states}"
    assert any(e["kind"] == "build.progress" for e in events)
    seqs = [d["seq"] for d in sorted(events + all_metrics, key=lambda d: d["seq"])]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a spooled seq went missing"
    last = _docs(col, f"{base}/state")[-1]
    assert last["state"] == "offline" and last["reason"] == "shutdown"


def test_invalid_mqtt_url_is_a_cli_error(tmp_path: Path) -> None:
    agent = AgentProc(["--mqtt-url", "http://broker:1883"], tmp_path / "home")
    try:
        assert agent.proc.wait(60) == 2
    finally:
        agent.kill()
    err = "".join(agent.stderr)
    assert "--mqtt-url" in err and "mqtt://host:port" in err, err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- 2. last will


def test_sigkill_leaves_retained_offline_within_keepalive(
    tmp_path: Path, cache: Path, profiles: Path
) -> None:
    with Broker(tmp_path / "broker") as broker:
        calib = tmp_path / "calib"
        shutil.copytree(CALIB, calib)
        config = tmp_path / "agent.yaml"
        _write_config(config, tmp_path, broker, calib, prom=free_port(), fps=5)
        col = Collector(broker.url, [f"{BASE}/state"])
        args = ["--config", str(config), "--cache-dir", str(cache), "--no-monitor"]
        agent = AgentProc([*args, "--profiles-dir", str(profiles)], tmp_path / "home")
        try:
            _wait_docs(
                col, f"{BASE}/state", lambda d: d["state"] == "online", 60, "birth", agent=agent
            )
            killed = time.monotonic()
            agent.kill()
            offline = _wait_docs(
                col,
                f"{BASE}/state",
                lambda d: d["state"] == "offline",
                1.5 * KEEPALIVE_S,
                f"last will within 1.5 x keepalive ({KEEPALIVE_S} s)",
            )
            took = time.monotonic() - killed
            assert offline["reason"] == "lost" and offline["device"] == DEV, offline
            assert took <= 1.5 * KEEPALIVE_S, took
            with Collector(broker.url, [f"{BASE}/state"]) as late:
                assert late.wait_for(bool, 5), "no retained state"
                assert late.messages[0].retain
                assert late.messages[0].json()["state"] == "offline"
        finally:
            agent.kill()
            col.close()


# --------------------------------------------------------------------------- 5. detections


def test_detections_are_published_rate_limited(env: Env) -> None:
    topic = f"{BASE}/detections"
    with Collector(env.broker.url, [topic]) as col:
        window = 4.0
        time.sleep(window)
        docs = _docs(col, topic)
    assert docs, f"no detections in {window} s; log:\n{env.agent.tail()}"
    # 2 msg/s (a burst of 2 allowed) while the synthetic source serves 10 frames/s
    assert len(docs) <= 2 * window + 3, f"{len(docs)} detections messages in {window} s"
    doc = docs[-1]
    assert doc["schema"] == "edge-agent/detections/1" and doc["source"] == "synth"
    seqs = [d["seq"] for d in docs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    det = doc["detections"][0]
    assert isinstance(det["label"], str) and 0 <= det["score"] <= 1 and len(det["box"]) == 4
    assert doc["frame_ts"] <= doc["ts"] + 0.01


def test_prometheus_serves_the_daemons_figures(env: Env) -> None:
    with Collector(env.broker.url, [f"{BASE}/metrics"]) as col:
        metrics = _wait_docs(
            col, f"{BASE}/metrics", lambda d: d["sources"]["synth"]["fps"] > 0, 10, "metrics"
        )
    url = f"http://127.0.0.1:{env.prom_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    fps = re.search(r'^edge_agent_source_fps\{source="synth"\} ([0-9.e+-]+)$', text, re.M)
    assert fps and float(fps.group(1)) > 0, text[:2000]
    assert 'edge_agent_source_state{source="synth",state="streaming"} 1.0' in text
    assert re.search(
        r'^edge_agent_stage_seconds\{quantile="0.5",stage="infer"\} [0-9.e+-]+$', text, re.M
    )
    assert re.search(r'^edge_agent_source_frames_total\{source="synth"\} [0-9.e+-]+$', text, re.M)
    assert "# TYPE edge_agent_source_frames_total counter" in text
    up = re.search(r"^edge_agent_uptime_seconds ([0-9.e+-]+)$", text, re.M)
    assert up and float(up.group(1)) > 0
    engine = metrics["model"]["engine_hash"]
    assert f'engine_hash="{engine}"' in text and 'model="shapes-det"' in text
    # with the monitor on (host readings): memory and governor figures in both
    assert metrics["memory"]["total_mib"] > 0 and metrics["governor"]["state"]
    total = re.search(r"^edge_agent_memory_total_bytes ([0-9.e+-]+)$", text, re.M)
    assert total and float(total.group(1)) == metrics["memory"]["total_bytes"]
    assert "edge_agent_mqtt_sent_total" in text  # the spool counters
    assert "edge_agent_governor_workers" in text
    board = re.escape(f'board="{metrics["board"]}"')
    assert re.search(
        rf"^edge_agent_device_info\{{{board},profile=\"{metrics['profile']}\"\}} 1.0$", text, re.M
    )


# --------------------------------------------------------------------------- 4. broker outage


def test_broker_outage_spools_and_replays_in_order(env: Env) -> None:
    """Broker SIGKILLed; meanwhile metrics keep coming and a SIGHUP with a changed source makes
    ``source.state`` events; after the restart a persistent-session subscriber gets every
    one of them, in seq order, none lost."""
    topics = [f"{BASE}/events", f"{BASE}/metrics"]
    col = Collector(env.broker.url, topics, client_id="e2e-outage")
    try:
        first = _wait_docs(col, topics[1], lambda d: True, 10, "metrics before the outage")
        time.sleep(1.5)  # the broker autosaves the persistent session
        env.broker.kill()
        killed, killed_at = time.monotonic(), time.time()
        env.config.write_text(env.config.read_text().replace("fps_cap: 10", "fps_cap: 8"))
        t_hup = time.time()
        env.agent.proc.send_signal(signal.SIGHUP)
        env.agent.wait_record(
            lambda r: r.get("event") == "reload" and r.get("ok") is True and _after(r, t_hup),
            30,
        )
        time.sleep(max(0.0, 4.0 - (time.monotonic() - killed)))
        env.broker.start()
        # every seq from the first one seen up to a metrics message sent after the restart
        restarted = time.time()
        last = _wait_docs(
            col, topics[1], lambda d: d["ts"] > restarted + 0.5, 30, "metrics after restart"
        )
        docs = [m.json() for m in col.messages]
        order: list[int] = []
        for d in docs:
            if d["seq"] not in order:
                order.append(d["seq"])
        assert order == sorted(order), "replayed out of order"
        expected = list(range(first["seq"], last["seq"] + 1))
        missing = sorted(set(expected) - set(order))
        assert not missing, f"lost while the broker was down: {missing}"
        down = [d for d in docs if killed_at <= d["ts"] < restarted]
        kinds = {d.get("kind", "metrics") for d in docs if d["ts"] < restarted}
        assert "source.state" in kinds, kinds
        assert len([d for d in down if "kind" not in d]) >= 2, "no metrics spooled while down"
    finally:
        col.close()
        env.broker.start()


# --------------------------------------------------------------------------- 3. commands


def test_commands_through_the_running_daemon(env: Env) -> None:
    agent = env.agent
    cmd = Commander(env.broker.url)
    watch = Collector(env.broker.url, [f"{BASE}/metrics"])
    try:
        pong = cmd.call("ping")
        assert pong["ok"] and pong["result"]["pong"] is True, pong
        assert pong["result"]["boot"] >= 1 and pong["device"] == DEV

        cfg = cmd.call("get-config")
        assert cfg["ok"], cfg
        assert cfg["result"]["mqtt"]["password"] == "***"
        assert cfg["result"]["device_id"] == DEV and cfg["result"]["mqtt"]["username"] == "edge"
        assert PASSWORD not in json.dumps(cfg)

        snap = cmd.call("snapshot", {"max_bytes": 20000})
        assert snap["ok"], snap
        res = snap["result"]
        jpeg = base64.b64decode(res["jpeg_b64"])
        assert len(jpeg) == res["bytes"] <= 20000
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None, "snapshot is not a decodable JPEG"
        assert image.shape[:2] == (res["height"], res["width"]) and image.std() > 1.0

        # reload: same config, the daemon reloads and keeps serving
        t0 = time.time()
        rel = cmd.call("reload")
        assert rel["ok"] and "reload" in rel["result"]["summary"], rel
        done = agent.wait_record(
            lambda r: r.get("event") == "reload" and r.get("ok") is True and _after(r, t0), 30
        )
        assert done["restarted"] == [], done

        bad = cmd.call("set-profile", {"name": "no-such-board"})
        assert not bad["ok"] and bad["error"]["code"] == "failed", bad
        assert "no-such-board" in bad["error"]["message"]
        assert "cpu-alt" in bad["error"]["message"] and "orin-nano-8gb" in bad["error"]["message"]

        if not _tensorrt_usable():  # a Jetson profile on this host: refused, not half-applied
            jetson = cmd.call("set-profile", {"name": "orin-nano-8gb"})
            assert not jetson["ok"], jetson
            assert "backend 'tensorrt' is not usable here" in jetson["error"]["message"], jetson

        t1 = time.time()
        good = cmd.call("set-profile", {"name": "cpu-alt"})
        assert good["ok"] and "cpu-alt" in good["result"]["summary"], good
        switched = agent.wait_record(
            lambda r: r.get("event") == "reload" and r.get("ok") is True and _after(r, t1), 60
        )
        assert switched["restarted"] == ["shapes-det"], switched  # engines for the new profile
        # the new profile's telemetry interval applies
        t_switched = time.time()
        _wait_docs(
            watch,
            f"{BASE}/metrics",
            lambda d: d["ts"] > t_switched + 6 * ALT_TELEMETRY_S,
            10,
            "metrics after the profile switch",
            agent=agent,
        )
        stamps = [d["ts"] for d in _docs(watch, f"{BASE}/metrics") if d["ts"] > t_switched]
        gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
        assert gaps[len(gaps) // 2] < 0.75 * TELEMETRY_S, f"interval not the new profile's: {gaps}"

        rb = cmd.call("rollback-model")
        assert not rb["ok"] and "over-the-air updates are off" in rb["error"]["message"], rb

        unknown = cmd.call("self-destruct")
        assert not unknown["ok"] and unknown["error"]["code"] == "unknown_command", unknown
        assert "ping" in unknown["error"]["message"]
        cmd.send_raw("ping", b"{not json")  # no id to answer to: dropped, counted, logged
        junk = agent.wait_record(lambda r: r.get("msg") == "command dropped: not_json", 10)
        assert junk["command"] == "ping" and junk["dropped"] >= 1, junk

        # still serving: fresh metrics with frames flowing, and commands still answered
        after = watch.messages[-1].json()["seq"] if watch.messages else 0
        fresh = _wait_docs(
            watch,
            f"{BASE}/metrics",
            lambda d: d["seq"] > after + 1 and d["sources"]["synth"]["fps"] > 0,
            15,
            "metrics after the refused commands",
            agent=agent,
        )
        assert fresh["sources"]["synth"]["state"] == "streaming"
        assert cmd.call("ping")["ok"]
        assert agent.proc.poll() is None

        # last: new calibration frames change the engine cache key of later builds
        before = set(env.calib.iterdir())
        col = cmd.call("calib-collect", {"model": "shapes-det", "count": 3}, timeout=30)
        assert col["ok"], col
        assert col["result"]["saved"] == 3 and Path(col["result"]["dir"]) == env.calib, col
        new = sorted(set(env.calib.iterdir()) - before)
        assert len(new) == 3, new
        for path in new:
            assert path.suffix == ".jpg"
            frame = cv2.imread(str(path))
            assert frame is not None and frame.std() > 1.0, path
    finally:
        watch.close()
        cmd.close()


def test_thousand_pings_at_500_per_s_through_the_running_daemon(env: Env) -> None:
    """Issue #14 item 5 against the running daemon: every ping gets exactly one response (ok,
    or busy / rate_limited with a retry-after), none is dropped silently."""
    cmd = Commander(env.broker.url)
    topic = f"{BASE}/cmd/response"
    try:
        before = len(cmd.col.on(topic))
        ids: list[str] = []
        start = time.monotonic()
        for i in range(1000):
            rid = f"flood-{i:04d}"
            doc = {"id": rid, "expires": time.time() + 60, "args": {}}
            cmd.pub.publish(f"{BASE}/cmd/ping", json.dumps(doc).encode(), qos=1)
            ids.append(rid)
            pause = start + (i + 1) / 500 - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        wanted = set(ids)
        cmd.col.wait_for(lambda msgs: sum(m.topic == topic for m in msgs) - before >= 1000, 60)
        responses = [r for r in cmd.responses() if r.get("id") in wanted]
        counts: dict[str, int] = {}
        for r in responses:
            counts[r["id"]] = counts.get(r["id"], 0) + 1
        assert set(counts) == wanted, f"{len(wanted - set(counts))} pings got no response"
        assert set(counts.values()) == {1}, "a ping was answered twice"
        kinds = {"ok" if r["ok"] else r["error"]["code"] for r in responses}
        assert kinds <= {"ok", "busy", "rate_limited"}, kinds
        refused = [r for r in responses if not r["ok"]]
        assert all(r.get("retry_after_s") is not None for r in refused)
    finally:
        cmd.close()


def _after(record: dict[str, Any], t: float) -> bool:
    """The log record's ISO timestamp is at or after epoch ``t`` (1 ms resolution)."""
    import datetime as dt

    stamp = dt.datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
    return stamp >= t - 0.002


def _tensorrt_usable() -> bool:
    from agent.backends.registry import get_backend
    from agent.core.errors import EdgeAgentError

    try:
        get_backend("tensorrt")
    except EdgeAgentError:
        return False
    return True
