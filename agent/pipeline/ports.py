"""What the pipeline needs from outside, as the pipeline names it.

The composition root (``agent.app``) hands these in; the pipeline imports nothing from the
other peers (monitor, comms, ota). Where results go is the :class:`~agent.pipeline.sinks.Sink`
protocol (the MQTT sink lives with comms and is adapted in ``app``). The governor's limits come
in through :meth:`Pipeline.resize` and :meth:`Pipeline.limit`: the pipeline consumes no
governor object.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from agent.backends.base import Runner
from agent.pipeline.pool.events import PoolEvent
from agent.pipeline.sources.state import SourceStatus


class EngineRunners(Protocol):
    """Makes one (inactive) runner for a built engine: a backend's runner factory. Called in
    each worker's own thread."""

    def runner(
        self, artifact_dir: Path, main_file: str, *, threads: int = 0, dla_core: int | None = None
    ) -> Runner: ...


#: receives every source status event, on the source's decode thread: only enqueue there
StatusListener = Callable[[SourceStatus], None]
#: receives every worker-pool event, on a pool thread: only enqueue there
PoolEventListener = Callable[[PoolEvent], None]
