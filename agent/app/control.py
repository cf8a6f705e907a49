"""The daemon's answers to fleet commands: :class:`DaemonControl` implements
:class:`agent.comms.ports.Control`. Its methods run on the dispatcher's command lanes
(``config_json`` and ``latest_frame`` on ``fast``, the rest one at a time on ``long``), never on
the ``ota`` lane that carries OTA messages; every action is either thread-safe or asks the main
loop (a reload)."""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.app.runconfig import RunConfig
from agent.backends.registry import get_backend
from agent.config.profiles.store import ProfileStore
from agent.core.errors import EdgeAgentError
from agent.core.fsutil import atomic_write_bytes
from agent.core.redact import redact_config
from agent.vision.jpeg import encode_jpeg

log = logging.getLogger(__name__)

#: longest a ``rollback-model`` command waits for the rollback before answering "queued"
ROLLBACK_WAIT_S = 5.0
#: ``calib-collect``: at most this many frames per request, one every this many seconds (the
#: ``long`` command lane is busy for at most ~20 s; ``ping`` and OTA messages go on meanwhile)
CALIB_MAX_FRAMES = 100
CALIB_SPACING_S = 0.2


class Rollbacks(Protocol):
    """What ``rollback-model`` needs of the OTA updater."""

    def rollback(self, model: str) -> concurrent.futures.Future[dict[str, Any]]: ...


class DaemonControl:
    """``config``: the running configuration; ``frames(source)``: the newest decoded frame;
    ``request_reload()``: asks the main loop to reload; ``ota()``: the updater (None when OTA
    is off)."""

    def __init__(
        self,
        config: RunConfig,
        frames: Callable[[str | None], np.ndarray | None],
        request_reload: Callable[[], None],
        ota: Callable[[], Rollbacks | None],
    ) -> None:
        self.config = config
        self._frames = frames
        self._request_reload = request_reload
        self._ota = ota

    def config_json(self) -> dict[str, Any]:
        cfg = self.config.cfg
        return {} if cfg is None else redact_config(cfg.model_dump(mode="json"))

    def reload(self) -> str:
        self._request_reload()
        return f"reload of {self.config.config_path} requested"

    def set_profile(self, name: str) -> str:
        profiles_dir = self.config.options.profiles_dir
        store = ProfileStore(Path(profiles_dir) if profiles_dir else None)
        profile = store.load(name)  # raises naming the profiles
        # refused now rather than accepted and then failing every later reload (a TensorRT
        # profile on a CPU host): the override stays until the agent restarts
        get_backend(profile.build.backend)
        self.config.request_profile(name)
        self._request_reload()
        return f"profile {name} requested; engines are rebuilt for it on reload"

    def latest_frame(self, source: str | None) -> Any:
        return self._frames(source)

    def collect_calib(self, model: str, count: int, source: str | None) -> dict[str, Any]:
        cfg = self.config.cfg
        if cfg is None:
            raise EdgeAgentError("the daemon is not running yet", fix="try again in a moment")
        refs = {m.name: m for m in cfg.models}
        if model not in refs:
            raise EdgeAgentError(
                f"model '{model}' is not served here (models: {sorted(refs)})",
                fix="name one of the models in agent.yaml",
            )
        if source is None:
            source = next((s.name for s in cfg.sources if s.model == model), None)
            if source is None:
                raise EdgeAgentError(
                    f"model '{model}' has no source here to take frames from",
                    fix="name a source with args.source or add one for the model to agent.yaml",
                )
        count = max(1, min(int(count), CALIB_MAX_FRAMES))
        target = refs[model].calib_dir or cfg.state_dir / "calib" / model
        target.mkdir(parents=True, exist_ok=True)
        saved = self._save_frames(source, count, target)
        return {"dir": str(target), "saved": len(saved), "requested": count, "source": source}

    def _save_frames(self, source: str, count: int, target: Path) -> list[str]:
        """Up to ``count`` distinct frames of ``source``, one every CALIB_SPACING_S, as JPEGs."""
        saved: list[str] = []
        last: Any = None
        deadline = time.monotonic() + count * CALIB_SPACING_S * 5 + 10.0
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        while len(saved) < count and time.monotonic() < deadline:
            frame = self._frames(source)
            if frame is not None and frame is not last:
                jpeg = encode_jpeg(frame, 95)
                if jpeg is not None:
                    path = target / f"{stamp}-{source}-{len(saved):04d}.jpg"
                    atomic_write_bytes(path, jpeg)
                    saved.append(path.name)
                last = frame
            time.sleep(CALIB_SPACING_S)
        return saved

    def rollback_model(self, model: str | None) -> dict[str, Any]:
        updater = self._ota()
        if updater is None:
            raise EdgeAgentError(
                "over-the-air updates are off on this device", fix="set ota.enabled: true"
            )
        cfg = self.config.cfg
        name = model or (cfg.models[0].name if cfg is not None else None)
        if name is None:
            raise EdgeAgentError("no model to roll back", fix="name the model")
        future = updater.rollback(name)
        try:
            return future.result(timeout=ROLLBACK_WAIT_S)
        except concurrent.futures.TimeoutError:  # not the builtin TimeoutError before 3.11
            return {"model": name, "state": "queued", "detail": "the rollback is under way"}
