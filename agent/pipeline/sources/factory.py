"""Build the source a :class:`SourceConfig` describes (URI type → source class)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent.config.agent import SourceConfig
from agent.core.errors import SourceError
from agent.pipeline.sources.backoff import Backoff
from agent.pipeline.sources.base import Clock, Source
from agent.pipeline.sources.gstreamer import GStreamerSource
from agent.pipeline.sources.opencv import ImageFolderSource, OpenCvStreamSource, VideoFileSource
from agent.pipeline.sources.state import SourceStatus
from agent.pipeline.sources.synthetic import SyntheticSource


def make_source(
    cfg: SourceConfig,
    *,
    queue_depth: int,
    on_status: Callable[[SourceStatus], None] | None = None,
    clock: Clock = time.monotonic,
    backoff: Backoff | None = None,
    max_attempts: int | None = None,
    realtime: bool = False,
    strict: bool = False,
) -> Source:
    """Build the source ``cfg`` describes (not started). ``max_attempts`` defaults to 3 for
    files and folders and to forever for live sources."""
    common: dict[str, Any] = {
        "queue_depth": queue_depth,
        "on_status": on_status,
        "clock": clock,
        "backoff": backoff,
        "stall_timeout_s": cfg.stall_timeout_s,
        "fps_cap": cfg.fps_cap,
        "size": (cfg.width, cfg.height) if cfg.width and cfg.height else None,
        "strict": strict,
    }
    if max_attempts is not None or cfg.type not in ("file", "images"):
        common["max_attempts"] = max_attempts
    if cfg.type == "file":
        return VideoFileSource(cfg.name, cfg.uri, loop=cfg.loop, realtime=realtime, **common)
    if cfg.type == "images":
        return ImageFolderSource(cfg.name, cfg.uri, loop=cfg.loop, **common)
    if cfg.type in ("v4l2", "rtsp", "http"):
        return OpenCvStreamSource(cfg.name, cfg.uri, kind=cfg.type, **common)
    if cfg.type == "gstreamer":
        return GStreamerSource(cfg.name, cfg.uri, **common)
    if cfg.type == "synthetic":
        seed = int(cfg.uri) if cfg.uri.isdigit() else 0
        return SyntheticSource(cfg.name, seed=seed, uri=cfg.uri or "synthetic://", **common)
    raise SourceError(f"unknown source type {cfg.type!r}", fix="see SourceConfig.type")
