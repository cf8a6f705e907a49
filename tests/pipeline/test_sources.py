"""Camera sources against real files, real images, a real loopback MJPEG server."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.config.agent import SourceConfig
from agent.core.errors import InternalError
from agent.core.redact import redact_text
from agent.pipeline.frames import Frame
from agent.pipeline.sources.backoff import Backoff
from agent.pipeline.sources.base import Source
from agent.pipeline.sources.factory import make_source
from agent.pipeline.sources.gstreamer import (
    GSTREAMER_MISSING,
    GStreamerSource,
    gst_csi_pipeline,
    gst_rtsp_hw_pipeline,
    opencv_has_gstreamer,
)
from agent.pipeline.sources.queue import DropPolicy, FrameQueue
from agent.pipeline.sources.state import (
    TERMINAL,
    TRANSITIONS,
    SourceState,
    SourceStateMachine,
    SourceStatus,
)
from agent.pipeline.sources.synthetic import SyntheticSource
from tests.assets import SAMPLE_VIDEO as SAMPLE
from tests.helpers.mjpeg_server import MjpegServer

pytestmark = pytest.mark.timeout(30)

LOGGER = "agent.pipeline.sources"  # the package: its modules log below it
S = SourceState


def wait_for(pred: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def drain(src: Source, timeout: float = 5.0) -> list[Frame]:
    """Everything the source produces until its queue is closed and empty."""
    out: list[Frame] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = src.read(timeout=0.5)
        if frame is not None:
            out.append(frame)
        elif src.queue.exhausted:
            break
    return out


def cfg(**kw: object) -> SourceConfig:
    return SourceConfig.model_validate({"model": "m", **kw})


def fast_backoff() -> Backoff:
    return Backoff(base=0.02, max_delay=0.2, rng=random.Random(0))


class Recorder:
    """A status callback that records events (thread-safe)."""

    def __init__(self) -> None:
        self.events: list[SourceStatus] = []
        self._lock = threading.Lock()

    def __call__(self, event: SourceStatus) -> None:
        with self._lock:
            self.events.append(event)

    def snapshot(self) -> list[SourceStatus]:
        with self._lock:
            return list(self.events)

    def states(self) -> list[SourceState]:
        return [e.new for e in self.snapshot() if e.kind == "transition"]


@pytest.fixture
def started() -> Iterator[list[Source]]:
    """Sources appended here are stopped at teardown whatever happens."""
    sources: list[Source] = []
    yield sources
    for src in sources:
        src.stop(timeout=3.0)


# --------------------------------------------------------------------------- files


def test_video_file_all_frames_in_order_then_ended(started: list[Source]) -> None:
    rec = Recorder()
    src = make_source(cfg(name="file", type="file", uri=str(SAMPLE)), queue_depth=2, on_status=rec)
    started.append(src.start())
    assert src.policy is DropPolicy.BLOCK
    frames = []
    for i, frame in enumerate(drain(src, timeout=15.0)):
        if i < 5:
            time.sleep(0.02)  # a slow consumer: BLOCK makes the decoder wait, nothing is lost
        frames.append(frame)
    assert [f.index for f in frames] == list(range(150))
    assert all(f.image.shape == (360, 640, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.source == "file" for f in frames)
    stats = src.stats()
    assert stats.dropped == 0 and stats.frames == 150 and stats.invalid == 0
    assert src.state is S.ENDED
    assert rec.states() == [S.CONNECTING, S.STREAMING, S.ENDED]
    assert "end of file" in rec.snapshot()[-1].reason


def test_video_file_loops(started: list[Source]) -> None:
    src = make_source(cfg(name="loop", type="file", uri=str(SAMPLE), loop=True), queue_depth=4)
    started.append(src.start())
    frames = [src.read(timeout=5.0) for _ in range(320)]
    assert all(f is not None for f in frames)
    assert [f.index for f in frames if f is not None] == list(range(320))
    assert src.stop(timeout=3.0)
    assert src.state is S.STOPPED
    assert src.stats().dropped == 0


def test_video_file_realtime_paces_to_file_fps(started: list[Source]) -> None:
    src = make_source(cfg(name="rt", type="file", uri=str(SAMPLE)), queue_depth=4, realtime=True)
    started.append(src.start())
    first = src.read(timeout=5.0)
    t0 = time.monotonic()
    for _ in range(6):
        assert src.read(timeout=5.0) is not None
    assert first is not None
    assert time.monotonic() - t0 >= 6 / 15.0 * 0.8  # the sample is 15 fps


def test_missing_file_is_a_status_event_not_an_exception(started: list[Source]) -> None:
    rec = Recorder()
    missing = "/nonexistent/dir/cam.mp4"
    src = make_source(
        cfg(name="gone", type="file", uri=missing), queue_depth=2, on_status=rec,
        backoff=fast_backoff(), max_attempts=1,
    )  # fmt: skip
    started.append(src.start())
    assert wait_for(lambda: S.FAILED in rec.states())
    assert rec.states() == [S.CONNECTING, S.RECONNECTING, S.CONNECTING, S.FAILED]
    reconnecting = next(e for e in rec.snapshot() if e.new is S.RECONNECTING)
    assert f"video file not found: {missing}" in reconnecting.reason
    failed = rec.snapshot()[-1]
    assert "not found" in failed.reason and "gave up after 1 reconnect attempt" in failed.reason
    assert src.read(timeout=0.1) is None and src.queue.exhausted


# --------------------------------------------------------------------------- image folder


def test_image_folder_sorted_with_conversion_and_rejection(
    tmp_path: Path, started: list[Source], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    rng = np.random.default_rng(0)
    shade = [int(v) for v in np.linspace(20, 220, 4)]
    for i, v in enumerate(shade):  # 000..003: BGR JPEGs, brightness tells the order
        cv2.imwrite(str(tmp_path / f"{i:03d}.jpg"), np.full((48, 64, 3), v, np.uint8))
    cv2.imwrite(str(tmp_path / "004_gray.png"), rng.integers(0, 255, (48, 64), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "005_bgra.png"), np.full((48, 64, 4), 99, np.uint8))
    cv2.imwrite(str(tmp_path / "006_big.jpg"), np.zeros((96, 128, 3), np.uint8))
    (tmp_path / "007_bad.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "notes.txt").write_text("ignored")
    rec = Recorder()
    src = make_source(
        cfg(name="imgs", type="images", uri=str(tmp_path)), queue_depth=2, on_status=rec
    )
    started.append(src.start())
    frames = drain(src)
    assert [f.index for f in frames] == list(range(6))
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    means = [float(f.image.mean()) for f in frames[:4]]
    assert means == sorted(means) and abs(means[0] - 20) < 3  # name order
    assert float(frames[5].image.mean()) == pytest.approx(99, abs=1)  # BGRA → BGR
    assert src.state is S.ENDED
    assert src.stats().invalid == 2
    rejected = [e for e in rec.snapshot() if e.kind == "frame"]
    assert len(rejected) == 2
    assert "frame size changed from 64x48 to 128x96" in rejected[0].reason
    assert "undecodable" in rejected[1].reason
    assert any("frame rejected" in r.getMessage() for r in caplog.records)


def test_image_folder_loops(tmp_path: Path, started: list[Source]) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((40, 40, 3), i * 50, np.uint8))
    src = make_source(
        cfg(name="imgloop", type="images", uri=str(tmp_path), loop=True), queue_depth=2
    )
    started.append(src.start())
    frames = [src.read(timeout=5.0) for _ in range(7)]
    assert [int(f.image[0, 0, 0]) for f in frames if f is not None] == [0, 50, 100, 0, 50, 100, 0]


# --------------------------------------------------------------------------- synthetic


def test_synthetic_newest_wins_drops_for_a_slow_consumer(started: list[Source]) -> None:
    src = make_source(
        cfg(name="syn", type="synthetic", fps_cap=120, width=96, height=64), queue_depth=2
    )
    started.append(src.start())
    assert src.policy is DropPolicy.NEWEST_WINS
    frames = []
    for _ in range(8):
        time.sleep(0.06)  # slower than 120 fps
        frame = src.read(timeout=2.0)
        assert frame is not None
        frames.append(frame)
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))
    assert indices[-1] - indices[0] > len(indices)  # gaps: frames were dropped
    stats = src.stats()
    assert stats.dropped > 0
    assert stats.fps > 30
    assert stats.last_frame_age_s is not None and stats.last_frame_age_s < 1.0
    assert frames[0].image.shape == (64, 96, 3)
    assert src.state is S.STREAMING


def test_raising_status_callback_does_not_kill_the_thread(
    started: list[Source], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    def boom(event: SourceStatus) -> None:
        raise RuntimeError(f"handler broke on {event.new.value}")

    src = SyntheticSource("boom", queue_depth=2, on_status=boom, fps_cap=100, size=(64, 64))
    started.append(src.start())
    got = [src.read(timeout=2.0) for _ in range(5)]
    assert all(f is not None for f in got)
    assert src.state is S.STREAMING
    assert any("status callback raised RuntimeError" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- MJPEG over HTTP


def test_mjpeg_over_http_recovers_when_the_server_dies_and_returns(
    started: list[Source], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server = MjpegServer(fps=20).start()
    try:
        port = server.port
        url = f"http://user:secret@127.0.0.1:{port}/stream.mjpg"
        rec = Recorder()
        src = make_source(
            cfg(name="mjpeg", type="http", uri=url, stall_timeout_s=1.0), queue_depth=4,
            on_status=rec, backoff=fast_backoff(),
        )  # fmt: skip
        started.append(src.start())
        first = [src.read(timeout=5.0) for _ in range(5)]
        assert all(f is not None and f.image.shape == (240, 320, 3) for f in first)
        assert src.state is S.STREAMING

        server.stop()  # kill it: listening socket and the live connection
        assert wait_for(lambda: S.RECONNECTING in rec.states(), timeout=5.0)
        n_before = len(rec.states())
        time.sleep(0.3)  # a few refused reconnects while it is down
        assert src.state in (S.RECONNECTING, S.CONNECTING)

        server.start()  # same port; the source must come back on its own
        assert server.port == port
        assert wait_for(lambda: S.STREAMING in rec.states()[n_before:], timeout=5.0)
        last = max(f.index for f in first if f is not None)
        resumed = [src.read(timeout=5.0) for _ in range(5)]
        assert all(f is not None for f in resumed)
        assert min(f.index for f in resumed if f is not None) > last
        assert src.stats().reconnects >= 1
        src.stop(timeout=3.0)
    finally:
        server.stop()

    events = rec.snapshot()
    assert events and all(e.uri == f"http://***@127.0.0.1:{port}/stream.mjpg" for e in events)
    for e in events:
        assert "secret" not in str(e.to_json()) and "user:" not in str(e.to_json())
    assert caplog.records
    for r in caplog.records:
        assert "secret" not in r.getMessage()
        assert "secret" not in str(getattr(r, "fields", ""))


def test_mjpeg_stall_goes_stalled_then_reconnects(started: list[Source]) -> None:
    with MjpegServer(fps=25) as server:
        rec = Recorder()
        src = make_source(
            cfg(name="stall", type="http", uri=server.url, stall_timeout_s=0.4), queue_depth=2,
            on_status=rec, backoff=fast_backoff(),
        )  # fmt: skip
        started.append(src.start())
        assert src.read(timeout=5.0) is not None
        server.pause()  # connection stays open, nothing arrives
        assert wait_for(lambda: S.STALLED in rec.states(), timeout=5.0)
        stalled = next(e for e in rec.snapshot() if e.new is S.STALLED)
        assert stalled.old is S.STREAMING and "no frame for" in stalled.reason
        assert wait_for(lambda: S.RECONNECTING in rec.states(), timeout=2.0)
        server.resume()
        n = rec.states().index(S.STALLED)
        assert wait_for(lambda: S.STREAMING in rec.states()[n:], timeout=5.0)


def test_unreachable_url_fails_after_max_attempts(started: list[Source]) -> None:
    server = MjpegServer().start()
    port = server.port
    server.stop()  # a port nobody listens on
    rec = Recorder()
    src = make_source(
        cfg(name="nohost", type="http", uri=f"http://admin:pw@127.0.0.1:{port}/"),
        queue_depth=2, on_status=rec, backoff=fast_backoff(), max_attempts=2,
    )  # fmt: skip
    started.append(src.start())
    assert wait_for(lambda: S.FAILED in rec.states(), timeout=10.0)
    failed = rec.snapshot()[-1]
    assert "cannot connect to http://***@127.0.0.1" in failed.reason
    assert "gave up after 2 reconnect attempts" in failed.reason
    assert all("pw" not in e.reason for e in rec.snapshot())


def test_absent_camera_reconnects_with_a_clear_reason(started: list[Source]) -> None:
    rec = Recorder()
    src = make_source(
        cfg(name="cam", type="v4l2", uri="/dev/video97"), queue_depth=2, on_status=rec,
        backoff=fast_backoff(),
    )  # fmt: skip
    started.append(src.start())
    assert wait_for(lambda: S.RECONNECTING in rec.states())
    event = next(e for e in rec.snapshot() if e.new is S.RECONNECTING)
    assert "camera /dev/video97 not found" in event.reason
    assert src.stop(timeout=2.0)
    assert src.state is S.STOPPED


# --------------------------------------------------------------------------- GStreamer


def test_gst_csi_pipeline_exact() -> None:
    assert gst_csi_pipeline(0, 1920, 1080, 30) == (
        "nvarguscamerasrc sensor-id=0 ! "
        "video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1,format=NV12 ! "
        "nvvidconv flip-method=0 ! video/x-raw,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )
    assert "sensor-id=1 " in gst_csi_pipeline(1, 1280, 720, 60, flip=2)
    assert "flip-method=2 " in gst_csi_pipeline(1, 1280, 720, 60, flip=2)
    with pytest.raises(ValueError):
        gst_csi_pipeline(0, 1280, 720, 30, flip=8)


def test_gst_rtsp_hw_pipeline_exact() -> None:
    assert gst_rtsp_hw_pipeline("rtsp://10.0.0.5:554/live") == (
        "rtspsrc location=rtsp://10.0.0.5:554/live latency=200 ! rtph264depay ! h264parse ! "
        "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )
    h265 = gst_rtsp_hw_pipeline("rtsp://cam/s", codec="h265", latency_ms=0)
    assert h265.startswith("rtspsrc location=rtsp://cam/s latency=0 ! rtph265depay ! h265parse !")
    with pytest.raises(ValueError):
        gst_rtsp_hw_pipeline("http://cam/s")


def test_gstreamer_source_without_gstreamer_fails_with_the_reason(started: list[Source]) -> None:
    rec = Recorder()
    src = GStreamerSource(
        "csi", gst_csi_pipeline(0, 1280, 720, 30), queue_depth=2, on_status=rec, gstreamer=False
    )
    started.append(src.start())
    assert wait_for(lambda: S.FAILED in rec.states())
    assert rec.states() == [S.CONNECTING, S.FAILED]
    assert rec.snapshot()[-1].reason == GSTREAMER_MISSING


def test_make_source_gstreamer_on_this_opencv(started: list[Source]) -> None:
    pipeline = gst_rtsp_hw_pipeline("rtsp://u:p@cam/s")
    src = make_source(cfg(name="gst", type="gstreamer", uri=pipeline), queue_depth=2)
    assert src.display_uri.startswith("rtspsrc location=rtsp://***@cam/s ")
    if opencv_has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    started.append(src.start())
    assert wait_for(lambda: any(e.new is S.FAILED for e in list(src.events)))
    assert src.events[-1].reason == GSTREAMER_MISSING


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("rtsp://user:pw@10.0.0.2:554/s", "rtsp://***@10.0.0.2:554/s"),
        ("http://user:secret@127.0.0.1:8080/", "http://***@127.0.0.1:8080/"),
        ("rtsp://admin@cam/s", "rtsp://***@cam/s"),
        ("rtsp://u:p@ss@cam/s", "rtsp://***@cam/s"),
        ("rtsp://cam/s", "rtsp://cam/s"),
        ("/dev/video0", "/dev/video0"),
        (
            "rtspsrc location=rtsp://u:p@h/s user-id=bob user-pw=hunter2 ! fakesink",
            "rtspsrc location=rtsp://***@h/s user-id=*** user-pw=*** ! fakesink",
        ),
        ('rtspsrc user-pw="a b" ! x', "rtspsrc user-pw=*** ! x"),
        ("rtsp://cam/s?user=admin&password=123", "rtsp://cam/s?user=***&password=***"),
        ("cannot connect to http://a:b@h/", "cannot connect to http://***@h/"),
    ],
)
def test_redact(raw: str, clean: str) -> None:
    assert redact_text(raw) == clean


class _MaxRng:
    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_exponential_with_bounded_jitter() -> None:
    top = Backoff(base=0.1, max_delay=1.0, rng=_MaxRng())
    assert [round(top.next_delay(), 6) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    top.reset()
    assert top.attempt == 0 and top.next_delay() == pytest.approx(0.1)

    jittered = Backoff(base=0.1, max_delay=5.0, rng=random.Random(42))
    delays = [jittered.next_delay() for _ in range(10)]
    for n, d in enumerate(delays):
        assert 0.0 <= d <= min(5.0, 0.1 * 2**n)
    assert len(set(delays)) == len(delays)  # really jittered
    assert max(delays[5:]) > max(delays[:2])  # and growing

    deco = Backoff(base=0.1, max_delay=2.0, jitter="decorrelated", rng=random.Random(7))
    prev = 0.1
    for _ in range(20):
        d = deco.next_delay()
        assert 0.1 <= d <= min(2.0, 3 * prev) + 1e-9
        prev = d


def test_state_machine_rejects_illegal_transitions(caplog: pytest.LogCaptureFixture) -> None:
    for state in TERMINAL:
        assert not TRANSITIONS[state]
    assert S.STALLED in TRANSITIONS[S.STREAMING]
    for old, new in [(S.IDLE, S.STREAMING), (S.ENDED, S.STREAMING), (S.STALLED, S.CONNECTING)]:
        assert new not in TRANSITIONS[old]

    strict = SourceStateMachine("m", "rtsp://u:p@h/", strict=True)
    assert strict.to(S.CONNECTING, "go") is not None
    with pytest.raises(InternalError, match="connecting → idle"):
        strict.to(S.IDLE, "nope")

    caplog.set_level(logging.ERROR, logger=LOGGER)
    lenient = SourceStateMachine("m", "rtsp://u:p@h/")
    assert lenient.to(S.STREAMING, "skip connecting") is None
    assert lenient.state is S.IDLE
    assert any("illegal source state transition" in r.getMessage() for r in caplog.records)
    event = lenient.to(S.CONNECTING, "ok")
    assert event is not None and event.uri == "rtsp://***@h/" and event.old is S.IDLE


def test_frame_queue_policies() -> None:
    def frame(i: int) -> Frame:
        return Frame("q", i, np.zeros((2, 2, 3), np.uint8), 0.0, 0.0)

    newest = FrameQueue(2, DropPolicy.NEWEST_WINS)
    for i in range(5):
        assert newest.put(frame(i))
    assert newest.dropped == 3
    got = [newest.get(0.1), newest.get(0.1)]
    assert [f.index for f in got if f is not None] == [3, 4]
    assert newest.get(0.05) is None

    block = FrameQueue(1, DropPolicy.BLOCK)
    assert block.put(frame(0))
    t0 = time.monotonic()
    assert not block.put(frame(1), timeout=0.1)
    assert time.monotonic() - t0 >= 0.09 and block.dropped == 0
    threading.Timer(0.05, block.close).start()
    assert not block.put(frame(2), timeout=2.0)  # close() wakes a blocked producer
    got0 = block.get(0.1)
    assert got0 is not None and got0.index == 0
    assert block.get(1.0) is None and block.exhausted
