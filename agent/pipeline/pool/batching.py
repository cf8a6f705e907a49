"""Dynamic batching: the records a batch is made of, and how an idle worker gathers one.

A worker takes 1..``max_batch`` queued frames, waiting at most ``batch_timeout_s`` after the
first frame was queued: a loaded pool batches, an idle one does not.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.pipeline.frames import Frame
from agent.pipeline.pool.work import Outputs


@dataclass(frozen=True)
class QueuedFrame:
    """A frame the pool accepted: ``key`` is (source, submission sequence) for the reorder
    buffer, ``t_submit`` when it was queued."""

    frame: Frame
    key: tuple[str, int]
    t_submit: float


@dataclass(frozen=True)
class PostJob:
    """A batch that went through inference, waiting for postprocess."""

    batch: list[QueuedFrame]
    outputs: Outputs
    letterboxes: Sequence[Any]
    t_pick: float
    t_pre: float
    t_inf: float


def fill_batch(
    queue: deque[QueuedFrame],
    cond: threading.Condition,
    batch: list[QueuedFrame],
    *,
    max_batch: int,
    timeout_s: float,
    stop_waiting: Callable[[], bool],
) -> None:
    """Grow ``batch`` (its first frame already taken) from ``queue`` up to ``max_batch``,
    waiting on ``cond`` (held) until ``timeout_s`` after the first frame was queued, or until
    ``stop_waiting()`` says the worker or the pool is going away."""
    deadline = batch[0].t_submit + timeout_s
    while len(batch) < max_batch:
        if queue:
            batch.append(queue.popleft())
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0 or stop_waiting():
            break
        cond.wait(remaining)
