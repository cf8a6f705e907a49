"""Helpers for the end-to-end OTA tests and ``scripts/bench_ota.py``: the real daemon as a
subprocess, real pushes through the CLI, bundles of the bundled shapes classifier with a
different engine, a data-dependent NaN or slow path, and a bright test video.

Data-dependent models: the validation gate measures on held-out calibration frames (mean pixel
0.2–0.77 for ``calib/shapes-cls``), the daemon serves :func:`write_bright_video` (mean pixel
≈ 0.97). A model whose graph branches on ``ReduceMean(images) > BRIGHT_THRESHOLD`` therefore
passes the gate on the normal path and misbehaves only on the frames the daemon serves — as a
model that breaks on the real camera but not on the validation set does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

from tests.assets import CLS_CALIB as CALIB
from tests.assets import REPO
from tests.helpers.broker import Broker
from tests.helpers.ota_support import copy_bundle as plain_copy

MODEL = "shapes-cls"
#: served frames are brighter than this (mean of the /255 input), held-out frames are darker
BRIGHT_THRESHOLD = 0.9


# --------------------------------------------------------------------------- bundles


def copy_bundle(dest: Path, *, version: int | None = None) -> Path:
    """A copy of the bundled shapes classifier with its held-out set; ``version`` goes into
    model.yaml."""
    plain_copy(dest, heldout=True)
    if version is not None:
        _edit_yaml(dest, version=version)
    return dest


def _edit_yaml(bundle: Path, **fields: Any) -> None:
    path = bundle / "model.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.update(fields)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _load(bundle: Path) -> onnx.ModelProto:
    return onnx.load(str(bundle / "model.onnx"))


def _save(model: onnx.ModelProto, bundle: Path) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(bundle / "model.onnx"))


def perturbed_bundle(dest: Path, *, version: int, salt: int) -> Path:
    """The classifier with ``fc.bias`` nudged by a ``salt``-dependent 1e-3: same answers, a
    different ONNX file and so a different engine (and engine hash)."""
    copy_bundle(dest, version=version)
    model = _load(dest)
    for init in model.graph.initializer:
        if init.name == "fc.bias":
            bias = numpy_helper.to_array(init).copy()
            bias += np.float32(1e-3 * (1 + salt % 997))
            init.CopyFrom(numpy_helper.from_array(bias.astype(np.float32), init.name))
    _save(model, dest)
    return dest


def _rename_output(model: onnx.ModelProto) -> tuple[str, str]:
    """Route the graph's output through a new tensor; returns (raw name, output name)."""
    graph = model.graph
    out = graph.output[0].name
    raw = f"{out}_raw"
    for node in graph.node:
        node.output[:] = [raw if o == out else o for o in node.output]
    return raw, out


def nan_bundle(dest: Path, *, version: int, threshold: float = BRIGHT_THRESHOLD) -> Path:
    """The classifier plus ``0 · log(threshold − mean(images))``: finite on the held-out frames
    (the gate passes it), NaN on every frame brighter than ``threshold``."""
    copy_bundle(dest, version=version)
    model = _load(dest)
    graph = model.graph
    raw, out = _rename_output(model)
    inp = graph.input[0].name
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(threshold, np.float32), "ota_t"),
            numpy_helper.from_array(np.array(0.0, np.float32), "ota_zero"),
        ]
    )
    nodes = [
        helper.make_node("ReduceMean", [inp], ["ota_mean"], name="ota_mean", keepdims=0),
        helper.make_node("Sub", ["ota_t", "ota_mean"], ["ota_margin"], name="ota_margin"),
        helper.make_node("Log", ["ota_margin"], ["ota_log"], name="ota_log"),
        helper.make_node("Mul", ["ota_log", "ota_zero"], ["ota_poison"], name="ota_poison"),
        helper.make_node("Add", [raw, "ota_poison"], [out], name="ota_out"),
    ]
    graph.node.extend(nodes)
    _save(model, dest)
    _edit_yaml(dest, keep_float=[n.name for n in nodes])
    return dest


def slow_bundle(
    dest: Path,
    *,
    version: int,
    threshold: float = BRIGHT_THRESHOLD,
    size: int = 256,
    depth: int = 24,
) -> Path:
    """The classifier plus an ``If`` on ``mean(images) > threshold``: the held-out frames take
    the normal path (the gate measures the usual latency); brighter frames run ``depth``
    ``size``×``size`` MatMuls whose result is added times zero (same answers, far slower)."""
    copy_bundle(dest, version=version)
    model = _load(dest)
    graph = model.graph
    raw, out = _rename_output(model)
    inp = graph.input[0].name
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((size, size)))  # orthogonal: norms stay put
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(threshold, np.float32), "ota_t"),
            numpy_helper.from_array(np.array(0.0, np.float32), "ota_zero"),
            numpy_helper.from_array(q.astype(np.float32), "ota_a"),
        ]
    )
    heavy = [helper.make_node("Mul", ["ota_a", "ota_mean"], ["ota_y0"], name="ota_y0")]
    for i in range(depth):
        heavy.append(
            helper.make_node("MatMul", [f"ota_y{i}", "ota_a"], [f"ota_y{i + 1}"], name=f"ota_mm{i}")
        )
    heavy += [
        helper.make_node("ReduceSum", [f"ota_y{depth}"], ["ota_s"], name="ota_s", keepdims=0),
        helper.make_node("Mul", ["ota_s", "ota_zero"], ["ota_s0"], name="ota_s0"),
        helper.make_node("Add", [raw, "ota_s0"], ["ota_heavy_out"], name="ota_heavy_out"),
    ]
    logits_type = helper.make_tensor_value_info("ota_heavy_out", TensorProto.FLOAT, None)
    then_branch = helper.make_graph(heavy, "ota_heavy", [], [logits_type])
    else_branch = helper.make_graph(
        [helper.make_node("Identity", [raw], ["ota_light_out"], name="ota_light")],
        "ota_light",
        [],
        [helper.make_tensor_value_info("ota_light_out", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("ReduceMean", [inp], ["ota_mean"], name="ota_mean", keepdims=0),
        helper.make_node("Greater", ["ota_mean", "ota_t"], ["ota_bright"], name="ota_bright"),
        helper.make_node(
            "If",
            ["ota_bright"],
            [out],
            name="ota_if",
            then_branch=then_branch,
            else_branch=else_branch,
        ),
    ]
    graph.node.extend(nodes)
    _save(model, dest)
    _edit_yaml(dest, keep_float=[n.name for n in nodes])
    return dest


def write_bright_video(path: Path, *, frames: int = 60, fps: float = 15.0) -> Path:
    """A small MP4 of bright frames (mean pixel ≈ 0.97, a moving dark square)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (96, 96))
    try:
        for i in range(frames):
            img = np.full((96, 96, 3), 250, np.uint8)
            x = (i * 3) % 80
            img[30:46, x : x + 16] = 40
            writer.write(img)
    finally:
        writer.release()
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"OpenCV could not write {path}")
    return path


# --------------------------------------------------------------------------- a device


def write_profile(directory: Path, *, telemetry_s: float = 0.5) -> Path:
    """The cpu profile with a short telemetry interval, in ``directory`` (--profiles-dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load((REPO / "device_profiles" / "cpu.yaml").read_text())
    doc["telemetry"]["interval_s"] = telemetry_s
    (directory / "cpu.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


def write_config(
    path: Path,
    *,
    fleet: str,
    device: str,
    bundle: Path,
    video: Path,
    state_dir: Path,
    trust_dir: Path,
    probation_s: float = 2.0,
    extra_ota: dict[str, Any] | None = None,
) -> Path:
    doc: dict[str, Any] = {
        "device_id": device,
        "fleet": fleet,
        "profile": "cpu",
        "state_dir": str(state_dir),
        "models": [{"name": MODEL, "bundle": str(bundle), "calib_dir": str(CALIB)}],
        "sources": [
            {"name": "video", "type": "file", "uri": str(video), "model": MODEL, "loop": True}
        ],
        "ota": {
            "enabled": True,
            "trust_dir": str(trust_dir),
            "probation_s": probation_s,
            "probation_interval_s": 0.5,
            "download_timeout_s": 10,
            **(extra_ota or {}),
        },
        "daemon": {"stats_interval_s": 1, "stop_timeout_s": 5},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cli_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("XDG_CACHE_HOME", None)
    return env


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def keygen(directory: Path, name: str) -> tuple[Path, Path]:
    """``edge-agent keygen``: (private key, public key)."""
    res = run_cli("keygen", "--out", str(directory), "--name", name, "--json")
    if res.returncode != 0:
        raise AssertionError(f"keygen failed: {res.stderr}")
    info = json.loads(res.stdout)
    return Path(info["private_key"]), Path(info["public_key"])


class Daemon:
    """``python -m agent run`` as a subprocess; stdout/stderr collected on threads."""

    def __init__(
        self,
        config: Path,
        *,
        cache_dir: Path,
        profiles_dir: Path,
        mqtt_url: str,
        log: Path,
        extra: tuple[str, ...] = (),
    ) -> None:
        command = [sys.executable, "-m", "agent", "run", "--config", str(config)]
        command += ["--cache-dir", str(cache_dir), "--profiles-dir", str(profiles_dir)]
        command += ["--mqtt-url", mqtt_url, "--no-monitor", "--realtime", *extra]
        self.log_path = log
        self._log = open(log, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line)
            self._log.write(line)
            self._log.flush()

    def tail(self, n: int = 40) -> str:
        with self._lock:
            return "".join(self.lines[-n:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, the way a power cut or the OOM killer stops it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        self._log.close()
        return self.proc.returncode


def _parents() -> dict[int, int]:
    """pid → parent pid of every process, from /proc/<pid>/stat."""
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry.name)] = int(fields[1])
    return out


def build_children(pid: int) -> list[int]:
    """Descendants of ``pid`` that lead their own session (the isolated build children)."""
    parents = _parents()
    descendants: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        descendants.extend(kids)
        frontier.extend(kids)
    found: list[int] = []
    for child in descendants:
        try:
            if os.getsid(child) == child:
                found.append(child)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def wait_until(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """``pred()``'s first truthy value within ``timeout`` s, else AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


# --------------------------------------------------------------------------- the e2e set-up


@dataclass
class Env:
    root: Path
    broker: Broker
    key: Path
    rogue_key: Path
    trust: Path
    profiles: Path
    cache: Path
    video: Path
    base: Path
    pushes: list[subprocess.Popen[str]] = field(default_factory=list[subprocess.Popen[str]])


@contextmanager
def open_env(root: Path) -> Iterator[Env]:
    """Keys (a trusted fleet key and a rogue one), a trust dir, a running Mosquitto, a profile
    dir, the bright test video and a base bundle under ``root``; pushes left running and the
    broker are stopped on exit."""
    key, pub = keygen(root / "keys", "fleet")
    rogue, _ = keygen(root / "rogue-keys", "rogue")
    trust = root / "trust"
    trust.mkdir()
    (trust / "fleet.pub").write_bytes(pub.read_bytes())
    broker = Broker(root / "mqtt").start()
    e = Env(
        root=root,
        broker=broker,
        key=key,
        rogue_key=rogue,
        trust=trust,
        profiles=write_profile(root / "profiles", telemetry_s=0.5),
        cache=root / "cache",
        video=write_bright_video(root / "bright.mp4"),
        base=copy_bundle(root / "base"),
    )
    try:
        yield e
    finally:
        for proc in e.pushes:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        broker.stop()
