"""Worker pool: ordering per source, dynamic batching, resizing under load, failures, stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import pytest

from agent.backends.base import Runner, RunnerBase, TensorSpec
from agent.backends.onnxruntime import OrtRunner
from agent.core.errors import InternalError
from agent.pipeline.frames import Frame, Result
from agent.pipeline.pool.events import PoolEvent, PoolEventKind
from agent.pipeline.pool.pool import WorkerPool
from agent.pipeline.pool.work import Stages, WorkerContext, WorkerFatal, result_error
from agent.pipeline.pool.worker import Worker, WorkerState
from agent.vision.synthetic import render_patch
from tests.assets import MODELS

pytestmark = pytest.mark.timeout(30)


def fid(frame: Frame) -> int:
    """A frame's id as the fake runner sees it: source number × 100000 + index."""
    return int(frame.source.removeprefix("s")) * 100_000 + frame.index


def make_frame(source: str, index: int, image: np.ndarray | None = None) -> Frame:
    img = image if image is not None else np.zeros((4, 4, 3), np.uint8)
    return Frame(source, index, img, time.monotonic(), time.time())


class Probe:
    """Shared by the fake runners of one test: who is inside infer, batch sizes, releases."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.inside = 0
        self.batches: list[int] = []
        self.created = 0
        self.released = 0
        self.buffers_closed = 0

    def wait_inside(self, n: int, timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.inside >= n, timeout)


class EchoRunner(RunnerBase):
    """A real Runner: sleeps a fixed time per batch and echoes the ``ids`` feed."""

    def __init__(
        self,
        probe: Probe,
        delay_s: float = 0.0,
        *,
        gate: threading.Event | None = None,
        fail_on: Iterable[int] = (),
        fatal_on: Iterable[int] = (),
        hang_on: Iterable[int] = (),
        release: threading.Event | None = None,
        fail_activate: bool = False,
    ):
        self.probe = probe
        self.delay_s = delay_s
        self.gate = gate
        self.fail_on = set(fail_on)
        self.fatal_on = set(fatal_on)
        self.hang_on = set(hang_on)
        self.release = release
        self.fail_activate = fail_activate
        self.active = False

    def activate(self) -> None:
        if self.fail_activate:
            raise RuntimeError("cannot create an execution context")
        self._inputs = (TensorSpec("ids", (-1,), "int64"),)
        self._outputs = (TensorSpec("ids", (-1,), "int64"),)
        self.active = True
        with self.probe.cond:
            self.probe.created += 1

    def deactivate(self) -> None:
        self.active = False
        with self.probe.cond:
            self.probe.released += 1
            self.probe.cond.notify_all()

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.active
        ids = feeds["ids"]
        with self.probe.cond:
            self.probe.inside += 1
            self.probe.batches.append(len(ids))
            self.probe.cond.notify_all()
        try:
            if self.gate is not None:
                assert self.gate.wait(5.0)
            if self.release is not None and self.hang_on.intersection(ids.tolist()):
                self.release.wait(10.0)
            if self.delay_s:
                time.sleep(self.delay_s)
            for i in ids.tolist():
                if i in self.fatal_on:
                    raise WorkerFatal(f"context lost on {i}")
                if i in self.fail_on:
                    raise ValueError(f"bad frame {i}")
            return {"ids": ids.copy()}
        finally:
            with self.probe.cond:
                self.probe.inside -= 1


class Buffers:
    """Stands for a worker's pinned/device buffers: must be closed when the worker stops."""

    def __init__(self, probe: Probe):
        self.probe = probe

    def close(self) -> None:
        with self.probe.cond:
            self.probe.buffers_closed += 1
            self.probe.cond.notify_all()


def echo_stages(probe: Probe) -> Stages:
    def preprocess(frames: Sequence[Frame], ctx: WorkerContext) -> tuple[dict[str, Any], list[Any]]:
        if "buffers" not in ctx.resources:
            ctx.resources["buffers"] = Buffers(probe)
        return {"ids": np.array([fid(f) for f in frames], np.int64)}, [None] * len(frames)

    def postprocess(
        frames: Sequence[Frame],
        outputs: dict[str, np.ndarray],
        letterboxes: Sequence[Any],
        timings: Mapping[str, float],
    ) -> list[Result]:
        del letterboxes
        assert set(timings) == {"preprocess", "infer"}
        return [
            Result(f.source, f.index, f.wall_time, "echo", "test", raw={"id": int(i)})
            for f, i in zip(frames, outputs["ids"].tolist(), strict=True)
        ]

    return Stages(preprocess=preprocess, postprocess=postprocess, model="echo", task="test")


class Collector:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.results: list[Result] = []
        self.events: list[PoolEvent] = []

    def on_result(self, result: Result) -> None:
        with self.cond:
            self.results.append(result)
            self.cond.notify_all()

    def on_event(self, event: PoolEvent) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait(self, pred: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    def kinds(self, kind: PoolEventKind) -> list[PoolEvent]:
        with self.cond:
            return [e for e in self.events if e.kind is kind]

    def by_source(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        with self.cond:
            for r in self.results:
                out.setdefault(r.source, []).append(r.index)
        return out

    def errors(self) -> dict[tuple[str, int], str]:
        with self.cond:
            return {
                (r.source, r.index): e for r in self.results if (e := result_error(r)) is not None
            }

    def check_echo(self) -> None:
        for r in self.results:
            if result_error(r) is None:
                assert r.raw is not None
                assert r.raw["id"] == fid(make_frame(r.source, r.index))
                assert {"queue", "preprocess", "infer", "postprocess", "total"} <= set(r.timings_ms)


def make_pool(
    factory: Callable[[], Runner], col: Collector, size: int, max_batch: int, **kw: Any
) -> WorkerPool:
    probe = kw.pop("probe", None) or Probe()
    return WorkerPool(
        factory,
        echo_stages(probe),
        size,
        max_batch,
        kw.pop("batch_timeout_ms", 2.0),
        on_result=col.on_result,
        on_event=col.on_event,
        **kw,
    )


def feed(pool: WorkerPool, source: str, indices: Iterable[int], timeout: float = 10.0) -> None:
    """Submit like a source whose drop policy is 'wait': retry while the queue is full."""
    deadline = time.monotonic() + timeout
    for i in indices:
        frame = make_frame(source, i)
        while not pool.submit(frame):
            assert time.monotonic() < deadline, "pool never took the frame"
            time.sleep(0.0005)


def feeders(pool: WorkerPool, sources: Sequence[str], n: int) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=feed, args=(pool, s, range(n)), daemon=True) for s in sources
    ]
    for t in threads:
        t.start()
    return threads


# ----------------------------------------------------------------------------- state machine


def test_worker_state_machine_allows_only_its_transitions() -> None:
    w = Worker(cast(Any, None), 0)
    assert w.state is WorkerState.STARTING
    for state in (WorkerState.IDLE, WorkerState.BUSY, WorkerState.IDLE, WorkerState.BUSY):
        w.transition(state)
    w.transition(WorkerState.DRAINING)
    with pytest.raises(InternalError):
        w.transition(WorkerState.IDLE)  # a draining worker never serves again
    w.transition(WorkerState.STOPPED)
    with pytest.raises(InternalError):
        w.transition(WorkerState.STARTING)
    other = Worker(cast(Any, None), 1)
    with pytest.raises(InternalError):
        other.transition(WorkerState.BUSY)  # must be IDLE (runner ready) first
    other.transition(WorkerState.FAILED)
    assert other.stats().state == "failed"


# ----------------------------------------------------------------------------- ordering


def test_per_source_order_with_three_workers_of_different_speed() -> None:
    probe, col = Probe(), Collector()
    speeds = iter([0.001, 0.003, 0.006])
    lock = threading.Lock()

    def factory() -> Runner:
        with lock:
            return EchoRunner(probe, next(speeds))

    pool = make_pool(factory, col, 3, 4, queue_capacity=12)
    n = 60
    for t in feeders(pool, ["s0", "s1", "s2"], n):
        t.join(10)
    assert pool.wait_idle(10)
    by_source = col.by_source()
    assert by_source == {s: list(range(n)) for s in ("s0", "s1", "s2")}
    assert col.errors() == {}
    col.check_echo()
    stats = pool.stats()
    assert stats.results == 3 * n and stats.submitted == 3 * n
    assert sorted(w.worker_id for w in stats.workers if w.batches) == [0, 1, 2]
    assert pool.stop(5)
    assert probe.released == probe.created == 3


# ----------------------------------------------------------------------------- batching


def test_batches_form_under_load_and_not_when_idle() -> None:
    probe, col = Probe(), Collector()
    pool = make_pool(lambda: EchoRunner(probe, 0.004), col, 1, 8, queue_capacity=64)
    for i in range(40):
        assert pool.submit(make_frame("s0", i))
    assert pool.wait_idle(5)
    loaded = pool.stats()
    assert loaded.mean_batch > 1
    assert max(probe.batches) == 8 and sum(probe.batches) == 40
    assert col.by_source()["s0"] == list(range(40))
    assert pool.stop(5)

    probe, col = Probe(), Collector()
    pool = make_pool(lambda: EchoRunner(probe), col, 2, 8)
    for i in range(10):
        assert pool.submit(make_frame("s0", i))
        assert col.wait(lambda i=i: len(col.results) == i + 1)
    idle = pool.stats()
    assert idle.mean_batch == 1.0 and probe.batches == [1] * 10
    assert pool.stop(5)


# ----------------------------------------------------------------------------- resizing


def test_resize_under_load_loses_nothing_and_converges() -> None:
    probe, col = Probe(), Collector()
    gate = threading.Event()
    pool = make_pool(lambda: EchoRunner(probe, 0.001, gate=gate), col, 3, 2, queue_capacity=8)
    n = 150
    threads = feeders(pool, ["s0", "s1"], n)
    assert probe.wait_inside(3), "three workers should be busy"

    pool.resize(1)  # all three hold a batch: two must finish it, then stop
    draining = col.kinds(PoolEventKind.WORKER_DRAINING)
    assert len(draining) == 2
    assert all(e.data["was_busy"] and e.data["in_hand"] >= 1 for e in draining)
    assert pool.size == 1
    gate.set()
    assert pool.wait_converged(5)
    stopped = {e.worker for e in col.kinds(PoolEventKind.WORKER_STOPPED)}
    assert stopped == {e.worker for e in draining}
    assert pool.live_workers == 1

    pool.resize(4)  # still under load
    assert pool.wait_converged(5)
    assert pool.stats().size == pool.live_workers == 4
    for t in threads:
        t.join(10)
    assert pool.wait_idle(10)

    assert col.by_source() == {"s0": list(range(n)), "s1": list(range(n))}  # none lost, no dup
    assert col.errors() == {}
    col.check_echo()
    stats = pool.stats()
    assert stats.results == stats.submitted == 2 * n
    assert probe.released == 2  # drained workers released their runners
    assert col.kinds(PoolEventKind.WORKER_FAILED) == []
    assert pool.stop(5)
    assert probe.released == probe.created == 6


# ----------------------------------------------------------------------------- failures


def test_runner_error_on_one_frame_gives_one_error_result() -> None:
    probe, col = Probe(), Collector()
    bad = 1 * 100_000 + 7  # s1#7
    pool = make_pool(lambda: EchoRunner(probe, 0.001, fail_on={bad}), col, 2, 4, queue_capacity=8)
    n = 25
    for t in feeders(pool, ["s0", "s1", "s2"], n):
        t.join(10)
    assert pool.wait_idle(5)
    assert col.by_source() == {s: list(range(n)) for s in ("s0", "s1", "s2")}
    errors = col.errors()
    assert list(errors) == [("s1", 7)]
    assert "bad frame" in errors[("s1", 7)]
    bad_result = next(r for r in col.results if (r.source, r.index) == ("s1", 7))
    assert bad_result.raw is not None and bad_result.raw["stage"] == "infer"
    col.check_echo()
    frame_errors = col.kinds(PoolEventKind.FRAME_ERROR)
    assert [(e.source, e.index) for e in frame_errors] == [("s1", 7)]
    stats = pool.stats()
    assert stats.restarts == 0 and stats.live == 2 and stats.errors == 1
    assert pool.stop(5)


def test_dead_worker_is_restarted_and_its_frame_fails_alone() -> None:
    probe, col = Probe(), Collector()
    pool = make_pool(
        lambda: EchoRunner(probe, 0.001, fatal_on={5}),
        col,
        2,
        1,
        restart_delay_s=0.0,
    )
    for t in feeders(pool, ["s0"], 30):
        t.join(10)
    assert pool.wait_idle(5)
    assert col.by_source() == {"s0": list(range(30))}
    assert list(col.errors()) == [("s0", 5)]
    assert len(col.kinds(PoolEventKind.WORKER_FAILED)) == 1
    assert len(col.kinds(PoolEventKind.WORKER_RESTARTED)) == 1
    assert pool.wait_converged(5)
    stats = pool.stats()
    assert stats.restarts == 1 and not stats.restart_budget_spent and stats.live == 2
    assert pool.stop(5)
    assert probe.released == probe.created == 3


def test_worker_failing_every_batch_is_replaced() -> None:
    probe, col = Probe(), Collector()
    pool = make_pool(
        lambda: EchoRunner(probe, fail_on={0, 1, 2} if probe.created == 0 else ()),
        col,
        1,
        1,
        fatal_after=3,
        restart_delay_s=0.0,
        queue_capacity=8,
    )
    for i in range(5):
        assert pool.submit(make_frame("s0", i))
    assert pool.wait_idle(5)
    assert list(col.errors()) == [("s0", 0), ("s0", 1), ("s0", 2)]
    assert col.by_source()["s0"] == list(range(5))
    assert len(col.kinds(PoolEventKind.WORKER_RESTARTED)) == 1
    assert pool.stop(5)


def test_restart_budget_exhaustion_is_reported_and_pool_recovers_on_resize() -> None:
    probe, col = Probe(), Collector()
    broken = threading.Event()  # once set, new runners cannot start

    def factory() -> Runner:
        return EchoRunner(probe, 0.0, fatal_on={3}, fail_activate=broken.is_set())

    pool = make_pool(factory, col, 1, 1, restarts=2, restart_window_s=60.0, restart_delay_s=0.0)
    for i in range(3):
        assert pool.submit(make_frame("s0", i))
    assert col.wait(lambda: len(col.results) == 3)
    broken.set()
    assert pool.submit(make_frame("s0", 3))  # kills the worker; both restarts fail to start
    assert col.wait(lambda: bool(col.kinds(PoolEventKind.RESTART_BUDGET_EXHAUSTED)))
    assert len(col.kinds(PoolEventKind.WORKER_RESTARTED)) == 2
    assert len(col.kinds(PoolEventKind.WORKER_FAILED)) == 3
    assert pool.wait_idle(5)
    stats = pool.stats()
    assert stats.restart_budget_spent and stats.failed and stats.live == 0
    assert not pool.submit(make_frame("s0", 4))  # refused: the caller drops it
    assert list(col.errors()) == [("s0", 3)]

    broken.clear()
    pool.resize(1)  # an operator/governor action gives the pool a fresh start
    assert pool.wait_converged(5)
    assert pool.submit(make_frame("s0", 5))
    assert col.wait(lambda: col.by_source()["s0"][-1] == 5)
    assert not pool.stats().failed
    assert pool.stop(5)


def test_stuck_frame_does_not_stall_its_source() -> None:
    probe, col = Probe(), Collector()
    release = threading.Event()
    pool = make_pool(
        lambda: EchoRunner(probe, 0.0, hang_on={2}, release=release),
        col,
        2,
        1,
        gap_timeout_s=0.2,
        queue_capacity=16,
    )
    try:
        for i in range(10):
            assert pool.submit(make_frame("s0", i))
        assert col.wait(lambda: len(col.results) == 9)
        assert col.by_source()["s0"] == [0, 1, 3, 4, 5, 6, 7, 8, 9]
        skipped = col.kinds(PoolEventKind.FRAME_SKIPPED)
        assert len(skipped) == 1 and skipped[0].source == "s0"
        release.set()
        assert col.wait(lambda: bool(col.kinds(PoolEventKind.LATE_RESULT_DROPPED)))
        assert len(col.results) == 9  # the late result is not delivered out of order
    finally:
        release.set()
        assert pool.stop(5)


def test_stop_drains_queue_then_is_bounded_when_a_runner_hangs() -> None:
    probe, col = Probe(), Collector()
    pool = make_pool(lambda: EchoRunner(probe, 0.002), col, 1, 2, queue_capacity=32, probe=probe)
    for i in range(20):
        assert pool.submit(make_frame("s0", i))
    assert pool.stop(5)
    assert col.by_source()["s0"] == list(range(20)) and col.errors() == {}
    assert not pool.submit(make_frame("s0", 20))
    assert probe.released == 1 and probe.buffers_closed == 1  # runner and buffers released

    probe, col = Probe(), Collector()
    release = threading.Event()
    pool = make_pool(
        lambda: EchoRunner(probe, hang_on={0}, release=release),
        col,
        1,
        1,
        queue_capacity=8,
        probe=probe,
    )
    try:
        for i in range(3):
            assert pool.submit(make_frame("s0", i))
        assert probe.wait_inside(1)
        t0 = time.monotonic()
        assert not pool.stop(timeout=0.3)
        assert time.monotonic() - t0 < 1.0
        # queued frames are failed, the stuck one is skipped: its source is not left waiting
        assert col.by_source()["s0"] == [1, 2]
        assert set(col.errors()) == {("s0", 1), ("s0", 2)}
        assert pool.stats().skipped == 1
    finally:
        release.set()
    # once its runner returns, the abandoned worker still releases what it owns
    with probe.cond:
        assert probe.cond.wait_for(lambda: probe.released == 1 and probe.buffers_closed == 1, 5)


# ----------------------------------------------------------------------------- real runner


def test_pool_serves_the_shapes_classifier_with_onnxruntime() -> None:
    model = MODELS / "shapes-cls" / "model.onnx"
    labels = (MODELS / "shapes-cls" / "labels.txt").read_text().split()
    rng = np.random.default_rng(7)
    patches = [render_patch(rng, 64)[0] for _ in range(24)]

    def to_tensor(images: Sequence[np.ndarray]) -> np.ndarray:
        rgb = np.stack([img[:, :, ::-1] for img in images]).astype(np.float32) / 255.0
        return np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))

    def preprocess(frames: Sequence[Frame], ctx: WorkerContext) -> tuple[dict[str, Any], list[Any]]:
        del ctx
        return {"images": to_tensor([f.image for f in frames])}, [None] * len(frames)

    def postprocess(
        frames: Sequence[Frame],
        outputs: dict[str, np.ndarray],
        letterboxes: Sequence[Any],
        timings: Mapping[str, float],
    ) -> list[Result]:
        del letterboxes, timings
        logits = outputs["logits"]
        return [
            Result(
                f.source,
                f.index,
                f.wall_time,
                "shapes-cls",
                "classify",
                top_k=((labels[int(np.argmax(row))], float(np.max(row))),),
                raw={"logits": row.copy()},
            )
            for f, row in zip(frames, logits, strict=True)
        ]

    col = Collector()
    stages = Stages(preprocess=preprocess, postprocess=postprocess, model="shapes-cls")
    pool = WorkerPool(
        lambda: OrtRunner(model, threads=1),
        stages,
        2,
        4,
        on_result=col.on_result,
        on_event=col.on_event,
        queue_capacity=48,
    )
    frames = [make_frame(f"s{i % 2}", i // 2, img) for i, img in enumerate(patches)]
    for f in frames:
        assert pool.submit(f)
    assert pool.wait_idle(10)
    assert pool.stop(5)
    assert col.errors() == {}
    assert col.by_source() == {"s0": list(range(12)), "s1": list(range(12))}
    assert pool.stats().mean_batch >= 1
    with OrtRunner(model, threads=1) as ref:
        for r in col.results:
            image = patches[r.index * 2 + int(r.source[1])]
            expected = ref.infer({"images": to_tensor([image])})["logits"][0]
            assert r.raw is not None
            np.testing.assert_allclose(r.raw["logits"], expected, rtol=1e-4, atol=1e-4)
