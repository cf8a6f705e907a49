"""The whole pipeline on the bundled detector: real file, synthetic and broken sources, the real
ONNX Runtime engine, and `edge-agent run` as a process (signals, exit codes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.backends.registry import get_backend
from agent.config.agent import SourceConfig
from agent.engine.build.outcome import BuildOutcome
from agent.engine.bundle import load_bundle
from agent.pipeline.assembly import build_pipeline
from agent.pipeline.pipeline import Pipeline, PipelineOptions
from agent.pipeline.pool.work import result_error
from agent.pipeline.sources.state import SourceStatus
from tests.assets import DET_BUNDLE as BUNDLE
from tests.assets import REPO
from tests.assets import SAMPLE_VIDEO as VIDEO
from tests.helpers.pipeline_util import ListSink


@pytest.fixture(scope="module")
def engine(det_int8_engine: BuildOutcome) -> BuildOutcome:
    """The session's shapes-det INT8 engine (tests/conftest.py)."""
    return det_int8_engine


def make_pipeline(
    engine: BuildOutcome,
    sources: list[SourceConfig],
    sink: ListSink,
    workers: int = 2,
    on_status: Callable[[SourceStatus], None] | None = None,
) -> Pipeline:
    bundle = load_bundle(BUNDLE)
    return build_pipeline(
        model="shapes-det",
        artifact=engine.artifact,
        backend=get_backend("onnxruntime"),
        bundle=bundle.config,
        labels=bundle.labels,
        sources=sources,
        sink=sink,
        options=PipelineOptions(workers=workers, max_batch=1, threads_per_worker=1),
        on_status=on_status,
    )


def test_file_source_every_frame_in_order(engine: BuildOutcome) -> None:
    sink = ListSink()
    src = SourceConfig(name="video", type="file", uri=str(VIDEO), model="shapes-det")
    pipe = make_pipeline(engine, [src], sink, workers=3).start()
    try:
        assert pipe.wait(timeout=60), "the file source should end and drain"
    finally:
        pipe.stop(timeout=5)
    indices = [r.index for r in sink.results]
    assert indices == list(range(150))  # no frame lost, none duplicated, in order
    assert all(result_error(r) is None for r in sink.results)
    # The sample video always shows shapes: most frames carry detections with sane boxes.
    with_boxes = [r for r in sink.results if r.detections]
    assert len(with_boxes) > 120
    for r in with_boxes:
        for d in r.detections:
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360
    stats = pipe.stats()
    assert stats.sources["video"].results == 150
    assert stats.sources["video"].dropped == 0
    assert stats.latency_ms["infer"].p50 is not None
    assert sink.closed


def test_dead_source_does_not_stop_the_others(engine: BuildOutcome, tmp_path: Path) -> None:
    sink = ListSink()
    sources = [
        SourceConfig(name="gone", type="file", uri=str(tmp_path / "missing.mp4"), model="m"),
        SourceConfig(name="live", type="synthetic", model="m", fps_cap=30),
    ]
    statuses: list[SourceStatus] = []
    pipe = make_pipeline(engine, sources, sink, on_status=statuses.append)  # typed events
    pipe.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stats = pipe.stats()
            if stats.sources["gone"].state == "failed" and len(sink.results) >= 20:
                break
            time.sleep(0.1)
    finally:
        pipe.stop(timeout=5)
    stats = pipe.stats()
    assert stats.sources["gone"].state in ("failed", "stopped")
    assert any(s.source == "gone" and "missing.mp4" in s.reason for s in statuses)
    live = [r for r in sink.results if r.source == "live"]
    assert len(live) >= 20
    assert [r.index for r in live] == sorted(r.index for r in live)


def test_resize_under_load_keeps_every_frame(engine: BuildOutcome) -> None:
    sink = ListSink()
    src = SourceConfig(name="video", type="file", uri=str(VIDEO), model="shapes-det")
    pipe = make_pipeline(engine, [src], sink, workers=3).start()
    try:
        time.sleep(0.2)
        pipe.resize(1)
        time.sleep(0.2)
        pipe.resize(2)
        assert pipe.wait(timeout=60)
    finally:
        pipe.stop(timeout=5)
    assert [r.index for r in sink.results] == list(range(150))


def _run_cli(args: list[str], cache: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--cache-dir", str(cache), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _records(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_run_default_config_ends_with_the_video(tmp_path: Path, engine: BuildOutcome) -> None:
    proc = _run_cli(["--stats-interval", "1", "--workers", "2"], tmp_path)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    records = _records(stdout)
    stats = [r for r in records if r.get("event") == "stats"]
    final = next(r for r in records if r.get("event") == "final_stats")
    assert stats, "a periodic stats line is printed"
    assert final["reason"] == "sources ended"
    assert final["stats"]["sources"]["sample"]["results"] == 150
    assert final["stats"]["precision"] in ("int8", "fp32")
    assert "fps" in stats[0]["msg"] and "latency" in stats[0]["msg"]


def test_run_stops_cleanly_on_sigterm(tmp_path: Path, engine: BuildOutcome) -> None:
    proc = _run_cli(["--source", "synthetic", "--stats-interval", "0.5"], tmp_path)
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    seen_stats = False
    while time.monotonic() < deadline and not seen_stats:
        line = proc.stdout.readline()
        if not line:
            break
        seen_stats = '"event": "stats"' in line
    assert seen_stats, "the pipeline should be running before the signal"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, _stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert time.monotonic() - started < 15
    final = next(r for r in _records(stdout) if r.get("event") == "final_stats")
    assert final["reason"] == "SIGTERM"


def test_run_rejects_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("device_id: a\nfleet: b\nmodels: []\nsorces: []\n")
    proc = _run_cli(["--config", str(bad)], tmp_path)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"{bad}:4: sorces:" in stderr
    assert "Traceback" not in stderr


def test_governor_shrinks_the_pool_on_memory_pressure(
    tmp_path: Path, engine: BuildOutcome, sysfs_root: Callable[[str], Path]
) -> None:
    root = sysfs_root("x86-host")
    meminfo = root / "proc" / "meminfo"
    total_kb = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
    lines = [
        f"MemAvailable:   {total_kb // 50} kB" if ln.startswith("MemAvailable:") else ln
        for ln in meminfo.read_text().splitlines()
    ]
    meminfo.write_text("\n".join(lines) + "\n")  # 98 % used: above memory_critical_pct
    proc = _run_cli(
        [
            "--source",
            "synthetic",
            "--monitor-source",
            "host",
            "--root",
            str(root),
            "--duration",
            "6",
            "--stats-interval",
            "1",
        ],
        tmp_path / "cache",
    )
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    records = _records(stdout)
    actions = [r for r in records if r.get("event") == "governor"]
    assert actions and actions[0]["governor"]["action"] == "memory_critical"
    assert actions[0]["governor"]["reading"]["memory_used_pct"] >= 97.9
    shrunk = [r for r in records if r.get("event") == "stats" and r["stats"]["workers"] == 1]
    assert shrunk, "the pool follows the governor down to one worker"
    assert shrunk[-1]["governor"]["state"] == "memory_critical"


def test_governor_limits_cap_and_shed_live_frames(engine: BuildOutcome) -> None:
    sink = ListSink()
    src = SourceConfig(name="cam", type="synthetic", model="m", fps_cap=60)
    pipe = make_pipeline(engine, [src], sink).start()
    try:
        time.sleep(1.0)
        pipe.limit(fps_cap=10, shed_frames=False)
        with sink.lock:
            before = len(sink.results)
        time.sleep(3.0)
        with sink.lock:
            during = len(sink.results) - before
        stats = pipe.stats()
    finally:
        pipe.stop(timeout=5)
    assert stats.fps_cap == 10
    assert 20 <= during <= 40  # ~10 fps over 3 s (not the source's 60 fps)
    assert stats.sources["cam"].shed > 60  # the rest were shed, and counted
