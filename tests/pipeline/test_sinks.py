"""Result sinks: console lines, JSONL with rotation, atomic annotated snapshots, fan-out."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.pipeline import sinks as sinks_mod
from agent.pipeline.frames import Detection, Result
from agent.pipeline.sinks import ConsoleSink, FanoutSink, JsonlSink, Sink, SnapshotSink


def result(
    index: int,
    source: str = "cam0",
    *,
    frame: np.ndarray | None = None,
    detections: tuple[Detection, ...] = (),
    error: str | None = None,
) -> Result:
    return Result(
        source=source,
        index=index,
        wall_time=1_700_000_000.0 + index,
        model="shapes-det",
        task="detect",
        detections=detections,
        raw={"error": error, "stage": "infer"} if error else None,
        timings_ms={"total": 12.5},
        frame=frame,
    )


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


BOX = Detection("square", 1, 0.9, (20.0, 30.0, 100.0, 90.0))


def test_console_lines_and_summary() -> None:
    out = io.StringIO()
    sink = ConsoleSink(out)
    sink.write(result(3, detections=(BOX,)))
    sink.write(result(4, error="ValueError: bad frame"))
    lines = out.getvalue().splitlines()
    assert lines == ["cam0#3 det=1 square:0.90 12.5ms", "cam0#4 ERROR ValueError: bad frame 12.5ms"]

    out, clock = io.StringIO(), Clock()
    sink = ConsoleSink(out, summary_every_s=10.0, clock=clock)
    for i in range(20):
        clock.t = i * 0.5
        sink.write(result(i, error="x" if i == 5 else None))
    assert out.getvalue() == ""  # 9.5 s so far: nothing yet
    clock.t = 10.0
    sink.write(result(20))
    (line,) = out.getvalue().splitlines()
    assert line == "[10s] cam0: 2.1 fps, 1 err, 12.5 ms"
    sink.close()  # flushes what the period has so far (nothing)
    assert len(out.getvalue().splitlines()) == 1


def test_console_without_stream_logs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=sinks_mod.__name__):
        ConsoleSink().write(result(1, detections=(BOX,)))
    assert [r.getMessage() for r in caplog.records] == ["cam0#1 det=1 square:0.90 12.5ms"]


def test_jsonl_lines_parse_and_rotate(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.jsonl"
    sink = JsonlSink(path, max_bytes=1000, backups=2)
    for i in range(40):
        sink.write(result(i, detections=(BOX,), error="boom" if i == 39 else None))
    sink.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["results.jsonl", "results.jsonl.1", "results.jsonl.2"]  # oldest dropped
    records: list[dict[str, Any]] = []
    for name in ("results.jsonl.2", "results.jsonl.1", "results.jsonl"):
        p = path.parent / name
        assert p.stat().st_size <= 1000
        records += [json.loads(line) for line in p.read_text().splitlines()]
    indices = [r["index"] for r in records]
    assert indices == list(range(indices[0], 40))  # contiguous, newest kept, nothing torn
    assert records[-1]["error"] == "boom" and "error" not in records[0]
    assert records[0]["detections"] == [
        {"label": "square", "class_id": 1, "score": 0.9, "box": [20.0, 30.0, 100.0, 90.0]}
    ]
    with pytest.raises(ValueError, match="closed"):
        sink.write(result(41))


def test_jsonl_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"index": -1}\n')
    sink = JsonlSink(path)
    sink.write(result(0))
    sink.close()
    assert [json.loads(x)["index"] for x in path.read_text().splitlines()] == [-1, 0]


def _gray(h: int = 120, w: int = 160) -> np.ndarray:
    return np.full((h, w, 3), 128, np.uint8)


def test_snapshots_are_annotated_atomic_rate_limited_and_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    (tmp_path / ".tmp-cam0-x.jpg").write_bytes(b"half")  # left by a crash: swept
    sink = SnapshotSink(tmp_path, every_s=1.0, max_files=3, clock=clock)
    assert not list(tmp_path.glob(".tmp-*"))

    # atomic: the bytes go to a hidden temporary file, which is renamed over the final name
    replaced: list[tuple[str, str]] = []
    real_replace = sinks_mod.os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        assert Path(src).name.startswith(".tmp-") and Path(src).read_bytes()[:2] == b"\xff\xd8"
        replaced.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(sinks_mod.os, "replace", spy)
    sink.write(result(0, frame=_gray(), detections=(BOX,)))
    assert replaced == [(".tmp-cam0-00000000-1700000000000.jpg", "cam0-00000000-1700000000000.jpg")]

    clock.t = 0.5
    sink.write(result(1, frame=_gray()))  # within every_s of the last one: skipped
    sink.write(result(1, "cam 1/x", frame=_gray()))  # another source has its own period
    sink.write(result(2))  # no frame: skipped
    names = sorted(p.name for p in tmp_path.glob("*.jpg"))
    assert names == ["cam0-00000000-1700000000000.jpg", "cam_1_x-00000001-1700000001000.jpg"]

    img = cv2.imread(str(tmp_path / names[0]))
    assert img is not None and img.shape == (120, 160, 3)
    # the box edge is drawn in colour, the inside stays the grey frame
    edge = img[60, 20].astype(int)
    inside = img[60, 60].astype(int)
    assert np.abs(edge - 128).max() > 60
    assert np.abs(inside - 128).max() < 12

    for i in range(3, 8):
        clock.t = float(i)
        sink.write(result(i, frame=_gray()))
    kept = sorted(p.name for p in tmp_path.glob("*.jpg"))
    assert kept == [f"cam0-{i:08d}-{1_700_000_000_000 + i * 1000}.jpg" for i in (5, 6, 7)]
    assert not list(tmp_path.glob(".tmp-*"))
    sink.close()


def test_fanout_isolates_a_failing_sink(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def write(self, result: Result) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            raise OSError("still full")

    out = io.StringIO()
    jsonl = JsonlSink(tmp_path / "r.jsonl")
    fan = FanoutSink([Broken(), ConsoleSink(out), jsonl])
    assert all(isinstance(s, Sink) for s in fan.sinks)
    with caplog.at_level(logging.ERROR, logger=sinks_mod.__name__):
        for i in range(3):
            fan.write(result(i))
        fan.close()
    assert len(out.getvalue().splitlines()) == 3
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 3
    assert fan.failures == {0: 4}
    assert len(caplog.records) == 2  # first write failure and first close failure, not each one
