"""The daemon's fleet side: telemetry (MQTT + Prometheus), commands, and over-the-air updates.

Two daemon components, built from the running configuration by :func:`fleet_components`:

* :class:`TelemetryComponent` publishes the daemon's snapshot as the ``metrics`` payload every
  ``telemetry.interval_s`` (the profile's), forwards daemon events (camera state changes,
  governor actions, build progress, OTA states) to ``events``, optionally detections, answers
  commands through :class:`DaemonControl`, hands OTA messages to the updater, and feeds the
  optional Prometheus endpoint the same figures.
* :class:`OtaComponent` runs the :class:`~agent.ota.updater.Updater` with hooks into the daemon:
  builds in the isolated child (held back while the governor disallows builds), activation by a
  hot swap of the model's pipeline between frames, probation figures from the pipeline.

Nothing here imports paho or prometheus_client directly (``agent.comms`` does).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config.schema import AgentConfig, DeviceProfile
from agent.core.errors import EdgeAgentError
from agent.core.fsutil import atomic_write_bytes, sha256_file
from agent.core.logs import log_fields

if TYPE_CHECKING:
    from agent.app.daemon import Daemon, Health
    from agent.comms.prometheus import PrometheusExporter
    from agent.comms.telemetry import CommsService
    from agent.ota.updater import BuildResult, ProbationSample, Updater
    from agent.pipeline.frames import Result

log = logging.getLogger(__name__)

#: longest a ``rollback-model`` command waits for the rollback before answering "queued"
ROLLBACK_WAIT_S = 5.0
#: ``calib-collect``: at most this many frames per request, one every this many seconds (the
#: command worker, which also carries OTA messages, is busy for at most ~20 s)
CALIB_MAX_FRAMES = 100
CALIB_SPACING_S = 0.2


# --------------------------------------------------------------------------- metrics


_ENGINE_HASHES: dict[tuple[Path, int, int], str] = {}


def engine_hash(path: Path) -> str | None:
    """SHA-256 of an engine file, computed once per file version (path, mtime, size): a
    forced rebuild into the same cache directory gets its new hash."""
    try:
        st = path.stat()
        key = (path, st.st_mtime_ns, st.st_size)
        if key not in _ENGINE_HASHES:
            _ENGINE_HASHES[key] = sha256_file(path)
    except OSError:
        return None
    return _ENGINE_HASHES[key]


def metrics_body(daemon: Daemon) -> dict[str, Any]:
    """The ``metrics`` payload body (see docs/telemetry.md) from the daemon's snapshot."""
    snap = daemon.snapshot()
    sources: dict[str, Any] = {}
    stages: dict[str, float] = {}
    models: dict[str, Any] = {}
    for name, stats in snap["pipelines"].items():
        if not stats:
            continue
        total = stats["latency_ms"].get("total", {})
        for sname, s in stats["sources"].items():
            sources[sname] = {
                "state": s["state"] or "unknown",
                "fps": max(0.0, float(s["fps"])),
                "latency_ms": {"p50": total.get("p50"), "p99": total.get("p99")},
                "drops": int(s["dropped"]) + int(s["shed"]),
                "frames": int(s["results"]),
            }
        for stage, v in stats["latency_ms"].items():
            if stage != "total" and v.get("p50") is not None:
                stages[f"{name}.{stage}" if len(snap["pipelines"]) > 1 else stage] = v["p50"]
        models[name] = daemon.model_info(name)
    body: dict[str, Any] = {
        "uptime_s": snap["uptime_s"],
        "sources": sources,
        "stages_ms": stages,
        "models": {k: v for k, v in models.items() if v is not None},
    }
    first = next((v for v in models.values() if v is not None), None)
    if first is not None:
        body["model"] = first
    monitor = daemon.monitor
    if monitor is not None:
        sample = monitor.last_sample
        if sample is not None:
            if sample.board_power_w is not None:
                body["power_w"] = sample.board_power_w
            body["temperatures_c"] = {k: v for k, v in sample.temps_c.items() if v is not None}
            mem = sample.memory
            if mem.total_mib is not None and mem.used_mib is not None:
                body["memory"] = {
                    "used_mib": mem.used_mib,
                    "total_mib": mem.total_mib,
                    "used_pct": mem.used_pct,
                }
            if sample.gpu_load_pct is not None:
                body["gpu_load_pct"] = sample.gpu_load_pct
        fpw = monitor.energy.to_json().get("fps_per_watt")
        if isinstance(fpw, (int, float)):
            body["fps_per_w"] = fpw
        decision = monitor.governor.decision
        body["governor"] = {
            "state": monitor.governor.state.value,
            "workers": decision.pool_size,
            "fps_cap": decision.fps_cap,
            "builds_allowed": decision.builds_allowed,
        }
    return body


# --------------------------------------------------------------------------- commands


class DaemonControl:
    """The daemon's answers to fleet commands (:class:`agent.comms.commands.Control`). Runs on
    the command worker thread; every action either is thread-safe or asks the main loop."""

    def __init__(self, daemon: Daemon, ota: Callable[[], Updater | None]):
        self.daemon = daemon
        self._ota = ota

    def config_json(self) -> dict[str, Any]:
        cfg = self.daemon.cfg
        if cfg is None:
            return {}
        doc = cfg.model_dump(mode="json")
        if doc.get("mqtt", {}).get("password"):
            doc["mqtt"]["password"] = "***"
        return doc

    def reload(self) -> str:
        self.daemon.request_reload()
        return f"reload of {self.daemon.config_path} requested"

    def set_profile(self, name: str) -> str:
        from agent.backends.base import get_backend
        from agent.config.profiles import ProfileStore

        profiles_dir = self.daemon.options.profiles_dir
        store = ProfileStore(Path(profiles_dir) if profiles_dir else None)
        profile = store.load(name)  # raises naming the profiles
        # refused now rather than accepted and then failing every later reload (a TensorRT
        # profile on a CPU host): the override stays until the agent restarts
        get_backend(profile.build.backend)
        self.daemon.profile_override = name
        self.daemon.request_reload()
        return f"profile {name} requested; engines are rebuilt for it on reload"

    def latest_frame(self, source: str | None) -> Any:
        return self.daemon.latest_frame(source)

    def collect_calib(self, model: str, count: int, source: str | None) -> dict[str, Any]:
        import cv2

        cfg = self.daemon.cfg
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
        ref = refs[model]
        target = ref.calib_dir or cfg.state_dir / "calib" / model
        target.mkdir(parents=True, exist_ok=True)
        saved: list[str] = []
        last: Any = None
        deadline = time.monotonic() + count * CALIB_SPACING_S * 5 + 10.0
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        while len(saved) < count and time.monotonic() < deadline:
            frame = self.daemon.latest_frame(source)
            if frame is not None and frame is not last:
                ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
                if ok:
                    path = target / f"{stamp}-{source}-{len(saved):04d}.jpg"
                    atomic_write_bytes(path, jpeg.tobytes())
                    saved.append(path.name)
                last = frame
            time.sleep(CALIB_SPACING_S)
        return {"dir": str(target), "saved": len(saved), "requested": count, "source": source}

    def rollback_model(self, model: str | None) -> dict[str, Any]:
        updater = self._ota()
        if updater is None:
            raise EdgeAgentError(
                "over-the-air updates are off on this device", fix="set ota.enabled: true"
            )
        cfg = self.daemon.cfg
        name = model or (cfg.models[0].name if cfg is not None else None)
        if name is None:
            raise EdgeAgentError("no model to roll back", fix="name the model")
        future = updater.rollback(name)
        try:
            return future.result(timeout=ROLLBACK_WAIT_S)
        except concurrent.futures.TimeoutError:  # not the builtin TimeoutError before 3.11
            return {"model": name, "state": "queued", "detail": "the rollback is under way"}


# --------------------------------------------------------------------------- telemetry


class DetectionsSink:
    """Pipeline sink → the rate-limited ``detections`` topic (only results with boxes)."""

    def __init__(self, publish: Callable[[str, list[dict[str, Any]], float], bool]):
        self._publish = publish

    def write(self, result: Result) -> None:
        if not result.detections:
            return
        dets = result.to_json()["detections"]
        self._publish(result.source, dets, result.wall_time)

    def close(self) -> None:
        return None


class TelemetryComponent:
    """MQTT (metrics, events, detections, commands, OTA messages) and Prometheus."""

    name = "telemetry"

    def __init__(
        self,
        daemon: Daemon,
        cfg: AgentConfig,
        profile: DeviceProfile,
        *,
        on_ota_message: Callable[[str, bytes], None] | None,
        control: DaemonControl,
    ):
        self.daemon = daemon
        self.interval_s = profile.telemetry.interval_s
        self.service: CommsService | None = None
        self.exporter: PrometheusExporter | None = None
        if cfg.mqtt.enabled:
            from agent.comms.telemetry import CommsService

            self.service = CommsService(
                cfg.mqtt,
                fleet=cfg.fleet,
                device_id=cfg.device_id,
                state_dir=cfg.state_dir,
                control=control,
                on_ota_message=on_ota_message,
                version=__version__,
            )
        if cfg.metrics.enabled:
            from agent.comms.prometheus import PrometheusExporter

            self.exporter = PrometheusExporter(cfg.metrics, device=cfg.device_id)
        self._next = 0.0
        self._published = 0
        self._errors = 0

    def start(self) -> None:
        if self.service is not None:
            self.service.start()
        if self.exporter is not None:
            self.exporter.start()
        self.daemon.listeners.append(self.on_event)
        self.daemon.tick_hooks.append(self.tick)

    def detections_sink(self) -> DetectionsSink | None:
        service = self.service
        if service is None or not service.cfg.detections_enabled:
            return None
        return DetectionsSink(
            lambda src, dets, ts: service.publish_detections(src, dets, frame_ts=ts)
        )

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if self.service is None:
            return
        try:
            self.service.publish_event(kind, data)
        except EdgeAgentError as exc:
            self._errors += 1
            log.warning("event not published: %s", exc, extra=log_fields(event="telemetry"))

    def set_model_state(self, record: dict[str, Any]) -> None:
        if self.service is not None:
            self.service.set_model_state(record)

    def tick(self, daemon: Daemon, now: float) -> None:
        if daemon.profile is not None:  # set-profile / a reload may switch the profile
            self.interval_s = daemon.profile.telemetry.interval_s
        if now < self._next and self._next - now <= self.interval_s:
            return
        self._next = now + self.interval_s
        self.publish_now()

    def publish_now(self) -> None:
        body = metrics_body(self.daemon)
        if self.service is not None:
            st = self.service.status()
            body["comms"] = {"spooled": st.spooled, "dropped": st.dropped, "sent": st.sent}
        if self.exporter is not None:
            self.exporter.update(body)
        if self.service is not None:
            try:
                self.service.publish_metrics(body)
                self._published += 1
            except EdgeAgentError as exc:
                self._errors += 1
                log.warning("metrics not published: %s", exc, extra=log_fields(event="telemetry"))

    def health(self) -> Health:
        from agent.app.daemon import Health

        return Health()

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metrics_published": self._published, "errors": self._errors}
        if self.service is not None:
            out["mqtt"] = self.service.status().as_dict()
        if self.exporter is not None:
            out["prometheus_port"] = self.exporter.port
        return out

    def stop(self, timeout: float) -> None:
        if self.on_event in self.daemon.listeners:
            self.daemon.listeners.remove(self.on_event)
        if self.service is not None:
            self.service.close(timeout_s=max(0.5, timeout))
        if self.exporter is not None:
            self.exporter.close()


# --------------------------------------------------------------------------- OTA


class OtaComponent:
    """The updater thread and its hooks into the daemon."""

    name = "ota"

    def __init__(self, daemon: Daemon, cfg: AgentConfig, profile: DeviceProfile):
        from agent.app.ota_hooks import engine_build_hook, golden_checker
        from agent.config.profiles import jetpack_for_l4t
        from agent.ota.updater import Updater, UpdaterHooks
        from agent.ota.verify import DeviceFacts

        self.daemon = daemon
        self.publish_state: Callable[[dict[str, Any]], None] = lambda rec: None
        self._probe_lock = threading.Lock()
        self._last_nan: dict[str, int] = {}
        self._last_restarts: dict[str, int] = {}
        calib = {m.name: m.calib_dir for m in cfg.models if m.calib_dir is not None}
        hooks = UpdaterHooks(
            build=engine_build_hook(
                profile,
                cache_dir=daemon.cache_dir(cfg),
                calib_dirs=calib,
                l4t_release=daemon.l4t,
                progress=self._progress,
            ),
            activate=self._activate,
            probation_sample=self._probation_sample,
            builds_allowed=daemon.builds_allowed,
            check_golden=golden_checker(threads=profile.runtime.intra_op_threads),
            publish_state=self._publish,
            baseline_sample=self._baseline_sample,
        )
        facts = DeviceFacts.from_config(
            cfg,
            profile,
            tensorrt_version=_tensorrt_version(profile),
            jetpack_version=jetpack_for_l4t(daemon.l4t),
        )
        self.updater: Updater = Updater.from_config(
            cfg, facts, hooks, config_dir=daemon.config_path.parent
        )
        report = self.updater.recover()
        #: recovery ran before telemetry was wired: start() reports what it found
        self._recovered = report.interrupted_at is not None
        if report.interrupted_at is not None:
            log.warning(
                "an update was interrupted at %s; %s",
                report.interrupted_at,
                "resuming it" if report.resumed else "the committed model serves",
                extra=log_fields(event="ota", interrupted_at=report.interrupted_at),
            )
        for ref in cfg.models:
            bundle = self.updater.serving_bundle(ref.name)
            if bundle is not None and bundle.resolve() != ref.bundle.resolve():
                daemon.bundle_overrides[ref.name] = bundle
                log.info(
                    "model %s: serving the committed OTA bundle %s",
                    ref.name,
                    bundle,
                    extra=log_fields(event="ota", model=ref.name, bundle=str(bundle)),
                )

    # -- hooks (updater thread)

    def _publish(self, record: dict[str, Any]) -> None:
        self.daemon.emit("ota.state", record)
        self.publish_state(record)

    def _progress(self, stage: str, fraction: float, message: str) -> None:
        self.daemon.emit_throttled(
            "build.progress", {"stage": stage, "fraction": round(fraction, 3), "message": message}
        )

    def _activate(self, model: str, bundle_dir: Path, result: BuildResult) -> None:
        self.daemon.swap_model(model, bundle_dir, result.artifact_dir)
        with self._probe_lock:
            stats = self.daemon.pipeline_stats(model)
            self._last_nan[model] = int(stats.get("nan_outputs", 0))
            self._last_restarts[model] = int(stats.get("worker_restarts", 0))
            self._model = model

    def _probation_sample(self) -> ProbationSample:
        from agent.ota.updater import ProbationSample

        with self._probe_lock:
            model = getattr(self, "_model", None)
            if model is None:
                return ProbationSample(fps=None)
            stats = self.daemon.pipeline_stats(model)
            if not stats:
                return ProbationSample(fps=None, crashed=True)
            nan = int(stats.get("nan_outputs", 0))
            restarts = int(stats.get("worker_restarts", 0))
            new_nan = max(0, nan - self._last_nan.get(model, 0))
            crashed = restarts > self._last_restarts.get(model, 0) or bool(
                self.daemon.pipeline_failures(model)
            )
            self._last_nan[model], self._last_restarts[model] = nan, restarts
        infer = stats["latency_ms"].get("infer", {}).get("p50")
        fps = 1000.0 / infer if isinstance(infer, (int, float)) and infer > 0 else None
        frames = sum(int(s["results"]) for s in stats["sources"].values())
        return ProbationSample(fps=fps, nan_outputs=new_nan, crashed=crashed, frames=frames)

    def _baseline_sample(self, model: str) -> ProbationSample:
        """The model serving now (before a swap), measured the way probation measures."""
        from agent.ota.updater import ProbationSample

        stats = self.daemon.pipeline_stats(model)
        infer = stats.get("latency_ms", {}).get("infer", {}).get("p50") if stats else None
        fps = 1000.0 / infer if isinstance(infer, (int, float)) and infer > 0 else None
        return ProbationSample(fps=fps)

    # -- component

    def on_message(self, topic: str, payload: bytes) -> None:
        del topic
        self.updater.submit(payload)

    def start(self) -> None:
        # The record recovery finished (e.g. "failed: interrupted at probation" after a crash)
        # was written before MQTT was wired: publish it now, retained, so the broker's copy
        # does not keep saying "probation"; an event only when recovery changed something.
        record = self.updater.status()
        if record is not None:
            if self._recovered:
                self._publish(record)
            else:
                self.publish_state(record)
        self.updater.start()

    def health(self) -> Health:
        from agent.app.daemon import Health

        return Health()

    def snapshot(self) -> dict[str, Any]:
        return {
            "update": self.updater.status(),
            "committed": {k: v.version for k, v in self.updater.committed().items()},
        }

    def stop(self, timeout: float) -> None:
        self.updater.stop(timeout_s=timeout)


def _tensorrt_version(profile: DeviceProfile) -> str | None:
    """The TensorRT the backend loads (JetPack's is a system package, not a pip dist)."""
    if profile.build.backend != "tensorrt":
        return None
    from agent.backends.base import get_backend

    try:
        return get_backend("tensorrt").version()
    except EdgeAgentError:
        return None


def fleet_components(
    daemon: Daemon, cfg: AgentConfig, profile: DeviceProfile
) -> tuple[TelemetryComponent | None, OtaComponent | None]:
    """The telemetry and OTA components this configuration asks for (None when off). OTA
    recovery runs here, before the engines are prepared, so a committed OTA version is what
    starts serving."""
    ota = OtaComponent(daemon, cfg, profile) if cfg.ota.enabled else None
    telemetry: TelemetryComponent | None = None
    if cfg.mqtt.enabled or cfg.metrics.enabled:
        telemetry = TelemetryComponent(
            daemon,
            cfg,
            profile,
            on_ota_message=ota.on_message if ota is not None else None,
            control=DaemonControl(daemon, lambda: ota.updater if ota is not None else None),
        )
        if ota is not None:
            ota.publish_state = telemetry.set_model_state
    return telemetry, ota
