"""Build a :class:`Pipeline` from configuration: its sources, stats book, delivery, pool
maker, dispatcher and hot swap, each made here and handed in."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from agent.backends.cuda import runtime as cuda_runtime
from agent.config.agent import SourceConfig
from agent.config.model import ModelBundleConfig
from agent.engine.cache import Artifact
from agent.pipeline.dispatcher import Dispatcher
from agent.pipeline.pipeline import Pipeline, PipelineOptions
from agent.pipeline.ports import EngineRunners, PoolEventListener, StatusListener
from agent.pipeline.sinks import Sink
from agent.pipeline.sources.base import Source
from agent.pipeline.sources.factory import make_source
from agent.pipeline.sources.state import SourceStatus
from agent.pipeline.stages import Delivery, PoolMaker, ServedModel
from agent.pipeline.stats import StatsBook
from agent.pipeline.swap import HotSwap

log = logging.getLogger(__name__)


def build_pipeline(
    *,
    model: str,
    artifact: Artifact,
    backend: EngineRunners,
    bundle: ModelBundleConfig,
    labels: Sequence[str],
    sources: Sequence[SourceConfig],
    sink: Sink,
    options: PipelineOptions,
    on_status: StatusListener | None = None,
    on_pool_event: PoolEventListener | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Pipeline:
    """The pipeline serving ``artifact`` to ``sources`` (built, not started)."""
    book = StatsBook(
        [s.name for s in sources],
        window_s=options.stats_window_s,
        latency_samples=options.latency_samples,
        clock=clock,
    )
    delivery = Delivery(book, sink)
    pools = PoolMaker(
        model,
        backend,
        book,
        threads_per_worker=options.threads_per_worker,
        prefer_gpu=options.prefer_gpu_preprocess,
        keep_frames=options.keep_frames,
        on_result=delivery.write,
        on_event=on_pool_event,
    )
    built = _make_sources(sources, options, on_status)
    served = ServedModel.of(artifact, bundle, labels, options.max_batch)
    # The GPU path preprocesses on each worker's stream; the CPU path on the dispatcher.
    prepare_ahead = not (options.prefer_gpu_preprocess and cuda_runtime.available()[0])
    dispatcher = Dispatcher(
        model,
        built,
        book,
        model=served,
        pool=pools.make(served, options.workers),
        prepare_ahead=prepare_ahead,
        clock=clock,
    )
    resize_lock = threading.Lock()
    return Pipeline(
        model=model,
        options=options,
        sources=built,
        dispatcher=dispatcher,
        hot_swap=HotSwap(model, dispatcher, pools, book, resize_lock=resize_lock, clock=clock),
        book=book,
        delivery=delivery,
        fps_caps=[c.fps_cap for c in sources if c.fps_cap],
        resize_lock=resize_lock,
        clock=clock,
    )


def _make_sources(
    sources: Sequence[SourceConfig], options: PipelineOptions, on_status: StatusListener | None
) -> dict[str, Source]:
    """The sources (not started), their status events relayed to ``on_status``."""
    relay = _relay(on_status)
    return {
        cfg.name: make_source(
            cfg, queue_depth=options.queue_depth, on_status=relay, realtime=options.realtime
        )
        for cfg in sources
    }


def _relay(on_status: StatusListener | None) -> Callable[[SourceStatus], None]:
    """Forward status events (on a source's thread, which already logged the transition); a
    handler that raises is logged, never fatal."""

    def relay(status: SourceStatus) -> None:
        if on_status is not None:
            try:
                on_status(status)
            except Exception:
                log.exception("source status handler failed")

    return relay
