"""Engine preparation for the served models: each model's engine is built in the isolated child
(or taken from the cache) and loaded, on a :class:`Job` thread while the main loop keeps
answering signals and systemd.

The whole build runs in the memory-capped child (:func:`build_engine_isolated`): the daemon
parses no model; the bundle it serves is read back with :func:`served_bundle` (``model.yaml``,
labels, and what the child recorded in the artifact manifest). Scratch directories that
SIGKILLed builds left in the engine cache are swept before the first build."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.app.events import EventBus
from agent.config.agent import AgentConfig
from agent.config.device import DeviceProfile
from agent.config.model import ModelRef
from agent.core.logs import log_fields
from agent.core.progress import ProgressFn, no_progress
from agent.engine.build.isolated import BuildJob, build_engine_isolated
from agent.engine.build.outcome import BuildOutcome
from agent.engine.bundle import ModelBundle, served_bundle
from agent.engine.cache import EngineCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedModel:
    """A model's engine, ready to serve: its config entry, the build outcome, its bundle."""

    ref: ModelRef
    outcome: BuildOutcome
    bundle: ModelBundle


class Job:
    """A function on a daemon thread (engine builds): the main loop polls ``done``. A daemon
    thread, so a SIGTERM during a long build exits at once (the build child dies with us)."""

    def __init__(self, name: str, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._fn = fn
        self._thread = threading.Thread(target=self._body, name=name, daemon=True)
        self._thread.start()

    def _body(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


class EnginePreparer:
    """Builds (or loads from the cache) each named model's engine; progress goes to the
    console printer (``progress_factory``) and, throttled, to the ``build.progress`` event."""

    def __init__(
        self,
        events: EventBus,
        cache_dir: Callable[[AgentConfig], Path],
        progress_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.events = events
        self.cache_dir = cache_dir
        self.progress_factory = progress_factory
        self._swept: set[Path] = set()

    def prepare(
        self, cfg: AgentConfig, profile: DeviceProfile, l4t: str | None, names: Sequence[str]
    ) -> dict[str, PreparedModel]:
        refs = {m.name: m for m in cfg.models}
        self.sweep(cfg)
        return {name: self._one(refs[name], cfg, profile, l4t) for name in names}

    def sweep(self, cfg: AgentConfig) -> None:
        """Once per cache directory (at start): remove the scratch directories of builds that
        were killed (never one a live build holds)."""
        root = Path(self.cache_dir(cfg))
        if root in self._swept:
            return
        self._swept.add(root)
        removed = EngineCache(root).sweep()
        if removed:
            log.info(
                "removed leftover build directories",
                extra=log_fields(event="cache.sweep", count=len(removed), cache=str(root)),
            )

    def _one(
        self, ref: ModelRef, cfg: AgentConfig, profile: DeviceProfile, l4t: str | None
    ) -> PreparedModel:
        printer = self.progress_factory() if self.progress_factory is not None else None
        shown: ProgressFn = printer if printer is not None else no_progress

        def progress(stage: str, fraction: float, message: str) -> None:
            shown(stage, fraction, message)
            self.events.emit_throttled(
                "build.progress",
                {"model": ref.name, "stage": stage, "fraction": round(fraction, 3),
                 "message": message},
            )  # fmt: skip

        job = BuildJob(
            ref.bundle, profile, precision=ref.precision, calib_dir=ref.calib_dir,
            cache_dir=self.cache_dir(cfg), l4t_release=l4t,
        )  # fmt: skip
        try:
            outcome = build_engine_isolated(job, progress)
        finally:
            close = getattr(printer, "close", None)
            if callable(close):
                close()
        log.info(
            "engine ready",
            extra=log_fields(
                event="engine", model=ref.name, artifact=str(outcome.artifact.dir),
                precision=outcome.artifact.precision, why=outcome.report.why,
                cache_hit=outcome.cache_hit,
            ),
        )  # fmt: skip
        return PreparedModel(ref, outcome, served_bundle(ref.bundle, outcome.artifact))
