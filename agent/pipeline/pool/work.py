"""The work a worker does on a batch: the :class:`Stages` callables, the per-worker
:class:`WorkerContext`, :class:`WorkerFatal`, and the error results that stand for frames
that could not be served."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.backends.base import Runner
from agent.pipeline.frames import Frame, Result

log = logging.getLogger(__name__)

#: runner inputs: host arrays, or whatever a custom ``infer`` stage understands (device buffers)
Feeds = Mapping[str, Any]
Outputs = dict[str, np.ndarray]


class WorkerFatal(Exception):
    """Raised by a runner or a stage when the worker's context is unusable (a sticky CUDA error,
    a lost device): the worker dies, its frames get error results and the pool restarts it."""


def _default_infer(runner: Runner, feeds: Feeds) -> Outputs:
    return runner.infer(feeds)


@dataclass
class WorkerContext:
    """What one worker owns. Stages keep per-worker objects (CUDA stream, pinned/device buffers,
    preprocessor) in ``resources``; on stop every resource with a ``close()`` is closed, in
    reverse order of insertion, after the stages' ``teardown``."""

    worker_id: int
    runner: Runner
    resources: dict[str, Any] = field(default_factory=dict[str, Any])

    def close(self) -> None:
        for name, res in reversed(list(self.resources.items())):
            closer = getattr(res, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:
                    log.exception("worker %d: closing resource %r failed", self.worker_id, name)
        self.resources.clear()


@dataclass(frozen=True)
class Stages:
    """The work a worker does on a batch.

    ``timings`` given to ``postprocess`` holds the batch's ``preprocess`` and ``infer`` times in
    ms; the pool then sets ``queue``, ``postprocess`` and ``total`` per frame on each Result.
    ``setup(ctx)`` runs in the worker thread after its runner is active (make the stream and
    buffers there); ``teardown(ctx)`` before the runner is released. ``model``/``task`` label
    error results.
    """

    preprocess: Callable[[Sequence[Frame], WorkerContext], tuple[Feeds, Sequence[Any]]]
    postprocess: Callable[
        [Sequence[Frame], Outputs, Sequence[Any], Mapping[str, float]], Sequence[Result]
    ]
    infer: Callable[[Runner, Feeds], Outputs] = _default_infer
    setup: Callable[[WorkerContext], None] | None = None
    teardown: Callable[[WorkerContext], None] | None = None
    model: str = ""
    task: str = ""


def error_result(
    frame: Frame, stage: str, error: str, *, model: str = "", task: str = ""
) -> Result:
    """The Result standing for a frame that could not be served."""
    return Result(
        source=frame.source,
        index=frame.index,
        wall_time=frame.wall_time,
        model=model,
        task=task,
        raw={"error": error, "stage": stage},
        timings_ms={"total": max(0.0, (time.monotonic() - frame.t_capture) * 1000.0)},
    )


def result_error(result: Result) -> str | None:
    """The error message of an error result, None for a served frame."""
    raw = result.raw
    if raw is not None and isinstance(raw.get("error"), str):
        return str(raw["error"])
    return None
