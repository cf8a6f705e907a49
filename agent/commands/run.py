"""``edge-agent run``: profile → engine (built or from the cache) → sources → pool → sinks.

With no arguments it runs the embedded default (``agent/data/agent.default.yaml``): the CPU
profile, the bundled detector and the bundled sample video. A stats line (fps per source,
latency p50/p99 per stage, drops) is logged every ``--stats-interval`` seconds as a JSON line on
stdout (journald keeps it); SIGINT/SIGTERM stop the sources, drain in-flight frames and exit 0.
"""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from agent.commands.common import resolve_profile
from agent.config import AgentConfig, ModelRef, SourceConfig
from agent.errors import ConfigError, EdgeAgentError
from agent.logs import configure_logging, log_fields

log = logging.getLogger("agent.run")

_DEFAULT_CONFIG = "agent.default.yaml"


class RunError(EdgeAgentError):
    exit_code = 2


def default_config_path() -> Path:
    """The embedded default configuration shipped inside the package."""
    return Path(str(importlib.resources.files("agent") / "data" / _DEFAULT_CONFIG))


def _resolve(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_run_config(path: Path) -> AgentConfig:
    """Validate ``path`` (located errors, references checked) and resolve its paths."""
    from agent.commands.config import validate_file
    from agent.yamlsrc import load_model_file

    _kind, issues = validate_file(path, "agent")
    if issues:
        raise ConfigError(issues)
    cfg = load_model_file(path, AgentConfig)
    base = path.parent.resolve()
    models = [
        m.model_copy(
            update={
                "bundle": _resolve(m.bundle, base),
                "calib_dir": None if m.calib_dir is None else _resolve(m.calib_dir, base),
            }
        )
        for m in cfg.models
    ]
    sources = [
        s.model_copy(update={"uri": str(_resolve(Path(s.uri), base))})
        if s.type in ("file", "images") and s.uri
        else s
        for s in cfg.sources
    ]
    return cfg.model_copy(
        update={
            "models": models,
            "sources": sources,
            "state_dir": _resolve(cfg.state_dir, base),
            "cache_dir": _resolve(cfg.cache_dir, base),
        }
    )


def _source_override(uri: str, model: str, index: int) -> SourceConfig:
    """``--source URI``: the kind of source from the URI's form."""
    if uri.startswith(("rtsp://", "rtsps://")):
        kind = "rtsp"
    elif uri.startswith(("http://", "https://")):
        kind = "http"
    elif uri.startswith("/dev/video") or uri.isdigit():
        kind = "v4l2"
    elif uri == "synthetic" or uri.startswith("synthetic:"):
        return SourceConfig(name=f"src{index}", type="synthetic", uri="", model=model)
    elif "!" in uri:
        kind = "gstreamer"
    elif Path(uri).is_dir():
        kind = "images"
    else:
        kind = "file"
    value = str(Path(uri).resolve()) if kind in ("file", "images") else uri
    return SourceConfig(name=f"src{index}", type=kind, uri=value, model=model)


class _StopFlag:
    """Set from a signal handler; everything else only reads it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: str | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name
        self.event.set()


def _stats_message(stats: dict[str, Any]) -> str:
    parts = []
    for name, s in stats["sources"].items():
        parts.append(f"{name}: {s['fps']:.1f} fps, {s['dropped']} dropped ({s['state']})")
    lat = stats["latency_ms"]
    stage = ", ".join(
        f"{k} {v['p50']:.1f}/{v['p99']:.1f}" for k, v in lat.items() if v["p50"] is not None
    )
    return (
        f"{stats['model']} [{stats['precision']}, {stats['workers']} workers] "
        + "; ".join(parts)
        + (f"; latency ms p50/p99: {stage}" if stage else "")
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.backends.base import get_backend
    from agent.commands.engine import ProgressPrinter
    from agent.engine.build import build_engine
    from agent.engine.bundle import load_bundle
    from agent.pipeline.pipeline import Pipeline, PipelineOptions
    from agent.pipeline.sinks import ConsoleSink, FanoutSink, JsonlSink, Sink, SnapshotSink

    config_path = Path(args.config) if args.config else default_config_path()
    cfg = load_run_config(config_path)
    configure_logging(args.log_level_run or cfg.logging.level, stream=sys.stdout)
    profile, l4t, how = resolve_profile(args.profile or cfg.profile, args.profiles_dir)
    if args.source:
        first = cfg.models[0].name
        cfg = cfg.model_copy(
            update={"sources": [_source_override(u, first, i) for i, u in enumerate(args.source)]}
        )
    if not cfg.sources:
        raise RunError(
            f"{config_path}: no sources to run",
            fix="add sources: to the config or pass --source URI",
        )
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else cfg.cache_dir
    log.info(
        "starting",
        extra=log_fields(
            event="start", config=str(config_path), profile=profile.name, how=how, l4t=l4t
        ),
    )

    used = {s.model for s in cfg.sources}
    models: dict[str, ModelRef] = {m.name: m for m in cfg.models if m.name in used}
    backend = get_backend(profile.build.backend)
    pipelines: list[Pipeline] = []
    stop = _StopFlag()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for name, ref in models.items():
            printer = ProgressPrinter(stream=sys.stderr)
            try:
                outcome = build_engine(
                    ref.bundle,
                    profile,
                    precision=ref.precision,
                    calib_dir=ref.calib_dir,
                    cache_dir=cache_dir,
                    l4t_release=l4t,
                    progress=printer,
                )
            finally:
                printer.close()
            log.info(
                "engine ready",
                extra=log_fields(
                    event="engine",
                    model=name,
                    artifact=str(outcome.artifact.dir),
                    precision=outcome.artifact.precision,
                    why=outcome.report.why,
                    cache_hit=outcome.cache_hit,
                ),
            )
            bundle = load_bundle(ref.bundle)
            sinks: list[Sink] = []
            if args.print_results:
                sinks.append(ConsoleSink(sys.stdout))
            if args.jsonl:
                sinks.append(JsonlSink(Path(args.jsonl)))
            if args.snapshots:
                sinks.append(SnapshotSink(Path(args.snapshots) / name))
            options = PipelineOptions(
                workers=args.workers or profile.runtime.streams,
                max_batch=profile.shapes.batch.opt,
                threads_per_worker=profile.runtime.intra_op_threads,
                queue_depth=profile.runtime.queue_depth,
                realtime=args.realtime,
                keep_frames=bool(args.snapshots),
                prefer_gpu_preprocess=profile.build.backend == "tensorrt",
            )
            pipelines.append(
                Pipeline(
                    model=name,
                    artifact=outcome.artifact,
                    backend=backend,
                    bundle=bundle.config,
                    labels=bundle.labels,
                    sources=[s for s in cfg.sources if s.model == name],
                    sink=FanoutSink(sinks),
                    options=options,
                ).start()
            )
            if stop.event.is_set():
                break
        governance = None
        if not args.no_monitor:
            governance = _Governance(profile, pipelines, args.monitor_source, Path(args.root))
        try:
            return _serve(pipelines, stop, args, governance)
        finally:
            if governance is not None:
                governance.close()
    finally:
        for p in pipelines:
            p.stop(timeout=args.stop_timeout)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Governance:
    """Monitor → governor → pipelines. The sampler thread only enqueues; ``apply`` runs on the
    main loop: the governor's pool size goes to every pipeline, energy figures to the stats."""

    def __init__(self, profile: Any, pipelines: list[Any], source: str, root: Path) -> None:
        from agent.monitor.energy import EnergyMeter
        from agent.monitor.governor import Governor
        from agent.monitor.sampler import Sampler
        from agent.monitor.select import open_source

        self.pipelines = pipelines
        caps = [c for p in pipelines for c in p.fps_caps()]
        # The governor lowers the fps cap from here: the configured caps, else 30 fps.
        self.governor = Governor(profile, max_fps=max(caps, default=30.0))
        self.energy = EnergyMeter()
        self._pending: list[Any] = []
        self._lock = threading.Lock()
        self._applied: Any = None
        choice = source if source in ("jtop", "sysfs", "host") else "auto"
        self.source = open_source(profile, root=root, prefer=choice)  # type: ignore[arg-type]
        self.sampler = Sampler(self.source, profile.monitor.interval_s, on_sample=self._enqueue)
        self.sampler.start()

    def _enqueue(self, sample: Any) -> None:
        with self._lock:
            self._pending.append(sample)
            del self._pending[:-16]

    def apply(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for sample in pending:
            fps = sum(s["fps"] for p in self.pipelines for s in p.stats()["sources"].values())
            self.energy.add_sample(sample, fps)
            for event in self.governor.update(sample):
                log.warning(
                    f"governor: {event.action}: {event.reason}",
                    extra=log_fields(event="governor", governor=event.to_json()),
                )
        decision = self.governor.decision
        if decision != self._applied:
            for p in self.pipelines:
                p.resize(decision.pool_size)
                p.limit(fps_cap=decision.fps_cap, shed_frames=decision.shed_frames)
            self._applied = decision

    def to_json(self) -> dict[str, Any]:
        return {"governor": self.governor.to_json(), "energy": self.energy.to_json()}

    def close(self) -> None:
        self.sampler.stop(timeout=2.0)
        self.source.close()


def _energy_message(extra: dict[str, Any]) -> str:
    energy = extra.get("energy") or {}
    fpw = energy.get("fps_per_watt")
    state = (extra.get("governor") or {}).get("state")
    text = f"; {fpw:.2f} fps/W" if isinstance(fpw, (int, float)) else ""
    return text + (f"; governor {state}" if state else "")


def _serve(pipelines: list[Any], stop: _StopFlag, args: argparse.Namespace, governance: Any) -> int:
    started = time.monotonic()
    next_stats = started + args.stats_interval
    while not stop.event.is_set():
        if all(p.finished for p in pipelines):
            break
        if args.duration is not None and time.monotonic() - started >= args.duration:
            break
        stop.event.wait(0.1)
        if governance is not None:
            governance.apply()
        if time.monotonic() >= next_stats:
            next_stats += args.stats_interval
            extra = governance.to_json() if governance is not None else {}
            for p in pipelines:
                stats = p.stats()
                log.info(
                    _stats_message(stats) + _energy_message(extra),
                    extra=log_fields(event="stats", stats=stats, **extra),
                )
    reason = stop.signal or ("duration" if args.duration is not None else "sources ended")
    for p in pipelines:
        serving = p.stats()["workers"]
        p.stop(timeout=args.stop_timeout)  # drains in-flight frames: their results count too
        stats = {**p.stats(), "workers": serving}
        log.info(
            "final " + _stats_message(stats),
            extra=log_fields(event="final_stats", stats=stats, reason=reason),
        )
    log.info("stopped", extra=log_fields(event="stop", reason=reason))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "run",
        help="run the camera pipelines (default: CPU profile, bundled model and sample video)",
        description="Build or load each model's engine, start the sources and the worker pool, "
        "and serve until the sources end, --duration passes, or SIGINT/SIGTERM.",
    )
    parser.add_argument("--config", default=None, help="agent.yaml (default: the embedded demo)")
    parser.add_argument("--profile", default=None, help="override the config's profile")
    parser.add_argument("--profiles-dir", default=None, help="directory of profile YAMLs")
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="URI",
        help="replace the config's sources (file, folder, /dev/videoN, rtsp://, http://, "
        "a GStreamer pipeline, or 'synthetic'); repeatable; all run the first model",
    )
    parser.add_argument("--cache-dir", default=None, help="engine cache (default: the config's)")
    parser.add_argument("--workers", type=int, default=None, help="override runtime.streams")
    parser.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--stats-interval", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--stop-timeout", type=float, default=10.0, help="drain bound, seconds")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="pace file sources at their own frame rate (live-camera behaviour)",
    )
    parser.add_argument("--jsonl", default=None, help="append every result to this JSONL file")
    parser.add_argument("--snapshots", default=None, help="write annotated JPEGs into this dir")
    parser.add_argument("--print-results", action="store_true", help="one line per result")
    parser.add_argument(
        "--monitor-source",
        default="auto",
        choices=["auto", "jtop", "sysfs", "host"],
        help="where power/thermal/memory readings come from (default: auto)",
    )
    parser.add_argument("--root", default="/", help="file-system root of the monitor (tests)")
    parser.add_argument(
        "--no-monitor", action="store_true", help="run without the monitor and governor"
    )
    parser.add_argument(
        "--log-level",
        dest="log_level_run",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="override the config's logging.level",
    )
    parser.set_defaults(handler=_cmd_run)
