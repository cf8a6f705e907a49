"""Staged activation of pushed models: an explicit, journalled state machine on one thread.

::

    received → verified → downloaded → building → validating → activating → probation → active
        └→ rejected   └→ rejected / failed   └→ failed  ...              └→ rolled_back / failed

Each update is a *record* (model, version, state, reason, detail, ...) written atomically to
``<state_dir>/ota/journal.json`` on every transition and handed to ``hooks.publish_state`` (the
daemon publishes it retained on ``edge/<fleet>/<device>/model``). The old model keeps serving
until ``hooks.activate`` swaps the new one in; the committed pointer (``committed.json``) moves
only after probation passes, so a crash anywhere before that leaves the old version committed.

Decisions
---------
* **High-water mark.** It advances as soon as a manifest passes verification (signature,
  target, expiry, newer, compatible, quota) and *before* the download. A version rejected later
  (hash mismatch, bad ONNX, failed build, rolled back) has burnt its number: the fleet pushes
  N+1. Replaying version N is refused (``not_newer``) in every case, also after a restart.
* **Recovery** (:meth:`Updater.recover`): an update found in a non-terminal state is marked
  ``failed`` with reason ``interrupted at <stage>``. It is then resumed only where that is safe:

  - ``verified`` with a URL payload: downloaded again (signature, expiry and compatibility are
    checked again; the high-water mark must still be this version);
  - ``downloaded`` / ``building`` / ``validating``: the installed bundle is re-hashed against the
    stored signed manifest and the update goes back to ``building``;
  - ``received``, inline ``verified``, ``activating``, ``probation``: not resumed. A crash during
    activation or probation counts against the new version; the committed one is served.
    (Found in ``probation`` while ``committed.json`` already names the version: the process
    died between the commit and the journal write, and the record is finished as ``active``.)

  Staging leftovers are removed.
* **Probation throughput.** ``ProbationSample.fps`` must be the serving engine's inference
  throughput (inferences per second of one worker, i.e. 1000 / mean inference ms), comparable
  to the gate's batch-1 figure in ``BuildResult.validated_fps`` — not the camera frame rate.
  The gate times a hot loop; a live pipeline pays per-call costs that loop does not see (cold
  caches after idling between frames, thread hand-offs), which for a small model are several
  times its inference time. So when ``hooks.baseline_sample`` gives the old model's throughput
  in the same pipeline just before the swap, the new model is "slow" only when it is below
  ``probation_min_fps_fraction`` of *both* its validated figure and that baseline.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import queue
import shutil
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from agent.config.schema import AgentConfig, OtaConfig
from agent.core.errors import EdgeAgentError, OtaError, OtaRejected
from agent.core.fsutil import atomic_write_json
from agent.core.logs import log_fields
from agent.ota.fetch import ChunkAssembler, download_bundle, is_chunk_message
from agent.ota.manifest import manifest_sha256
from agent.ota.store import CommittedVersion, VersionStore
from agent.ota.trust import SignedManifest, TrustStore
from agent.ota.verify import DeviceFacts, Verifier, check_bundle

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "BuildResult",
    "ProbationSample",
    "RecoveryReport",
    "UpdateState",
    "Updater",
    "UpdaterHooks",
]

log = logging.getLogger(__name__)


class UpdateState(str, Enum):
    RECEIVED = "received"
    VERIFIED = "verified"
    DOWNLOADED = "downloaded"
    BUILDING = "building"
    VALIDATING = "validating"
    ACTIVATING = "activating"
    PROBATION = "probation"
    ACTIVE = "active"
    REJECTED = "rejected"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


S = UpdateState
TERMINAL = frozenset({S.ACTIVE, S.REJECTED, S.FAILED, S.ROLLED_BACK})
#: Where a record may start: a push (received), a resumed update (verified/downloaded), an
#: operator rollback (building).
INITIAL = frozenset({S.RECEIVED, S.VERIFIED, S.DOWNLOADED, S.BUILDING})
TRANSITIONS: dict[UpdateState, frozenset[UpdateState]] = {
    S.RECEIVED: frozenset({S.VERIFIED, S.REJECTED, S.FAILED}),
    S.VERIFIED: frozenset({S.DOWNLOADED, S.REJECTED, S.FAILED}),
    S.DOWNLOADED: frozenset({S.BUILDING, S.FAILED}),
    S.BUILDING: frozenset({S.VALIDATING, S.ACTIVATING, S.FAILED}),
    S.VALIDATING: frozenset({S.ACTIVATING, S.FAILED}),
    S.ACTIVATING: frozenset({S.PROBATION, S.ROLLED_BACK, S.FAILED}),
    S.PROBATION: frozenset({S.ACTIVE, S.ROLLED_BACK, S.FAILED}),
    S.ACTIVE: frozenset(),
    S.REJECTED: frozenset(),
    S.FAILED: frozenset(),
    S.ROLLED_BACK: frozenset(),
}


# --------------------------------------------------------------------------- hooks


@dataclass(frozen=True)
class BuildResult:
    """What the build hook returns: a validated engine artifact."""

    artifact_dir: Path
    engine_sha256: str
    #: batch-1 inference throughput the validation gate measured (None: not measured)
    validated_fps: float | None
    precision: str = ""
    cache_hit: bool = False
    details: dict[str, Any] = field(default_factory=dict[str, Any])

    def to_json(self) -> dict[str, Any]:
        return {
            "artifact_dir": str(self.artifact_dir),
            "engine_sha256": self.engine_sha256,
            "validated_fps": self.validated_fps,
            "precision": self.precision,
            "cache_hit": self.cache_hit,
        }


@dataclass(frozen=True)
class ProbationSample:
    """One look at the serving model during probation (since the previous sample)."""

    #: inference throughput of the serving engine (per worker, inferences/s); None = no traffic
    fps: float | None
    nan_outputs: int = 0
    crashed: bool = False
    frames: int = 0


def _no_publish(state: dict[str, Any]) -> None:
    del state


def _always() -> bool:
    return True


@dataclass(frozen=True)
class UpdaterHooks:
    """The daemon's side of an update. Every hook runs on the updater thread.

    * ``build(bundle_dir)`` builds+validates (in the isolated child) or loads from the engine
      cache; raises an :class:`EdgeAgentError` on failure.
    * ``activate(model, bundle_dir, result)`` warms a runner pool for ``result`` and swaps it in
      between frames; when it raises, the previous model must still be serving.
    * ``probation_sample()`` reports the serving model since the last call.
    * ``baseline_sample(model)`` (optional) reports the model serving now, before the swap: the
      like-for-like throughput the probation compares with (see the module docstring).
    * ``builds_allowed()`` is the governor's build admission; the updater polls it.
    * ``check_golden(result, bundle_dir)`` raises when golden outputs do not match.
    * ``publish_state(record)`` gets every state change (publish it retained).
    """

    build: Callable[[Path], BuildResult]
    activate: Callable[[str, Path, BuildResult], None]
    probation_sample: Callable[[], ProbationSample]
    builds_allowed: Callable[[], bool] = _always
    check_golden: Callable[[BuildResult, Path], None] | None = None
    publish_state: Callable[[dict[str, Any]], None] = _no_publish
    baseline_sample: Callable[[str], ProbationSample] | None = None


@dataclass(frozen=True)
class RecoveryReport:
    """What :meth:`Updater.recover` found."""

    interrupted_at: str | None
    record: dict[str, Any] | None
    resumed: bool
    committed: dict[str, CommittedVersion]
    cleaned: list[str]


class _Stopped(BaseException):
    """The updater is stopping; the record stays in its state for recover()."""


class _Fail(Exception):
    def __init__(self, state: UpdateState, reason: str, detail: str):
        super().__init__(detail)
        self.state, self.reason, self.detail = state, reason, detail


# --------------------------------------------------------------------------- updater


class Updater:
    """Runs updates one at a time from a queue; see the module docstring.

    ``initial_bundles`` maps model name → the bundle in agent.yaml: the rollback target when no
    OTA version of that model was committed yet.
    """

    def __init__(
        self,
        verifier: Verifier,
        hooks: UpdaterHooks,
        *,
        config: OtaConfig,
        initial_bundles: Mapping[str, Path] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.verifier = verifier
        self.store: VersionStore = verifier.store
        self.hooks = hooks
        self.config = config
        self.initial_bundles = dict(initial_bundles or {})
        self.clock = clock
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._deferred: deque[tuple[str, Any]] = deque()
        self._pending_chunks: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._pending_bytes = 0
        self._finished: deque[str] = deque(maxlen=64)
        self._lock = threading.RLock()
        self._record: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._max_message = (config.max_bundle_mib + 1) * 1024 * 1024

    @classmethod
    def from_config(
        cls,
        cfg: AgentConfig,
        device: DeviceFacts,
        hooks: UpdaterHooks,
        *,
        config_dir: Path | None = None,
    ) -> Updater:
        """The daemon's updater: trust store from ``ota.trust_dir``, versions under
        ``state_dir/ota``, configured bundles as the last-resort rollback targets (relative
        bundle paths are taken relative to ``config_dir``)."""
        ota = cfg.ota
        base = config_dir or Path.cwd()
        store = VersionStore(
            cfg.state_dir.expanduser(),
            keep_versions=ota.keep_versions,
            disk_quota_mib=ota.disk_quota_mib,
        )
        verifier = Verifier(
            TrustStore.load(ota.trust_dir.expanduser()),
            device,
            store,
            max_bundle_mib=ota.max_bundle_mib,
        )
        bundles = {m.name: base / m.bundle.expanduser() for m in cfg.models}
        return cls(verifier, hooks, config=ota, initial_bundles=bundles)

    # ------------------------------------------------------------------ public API

    def submit(self, payload: bytes) -> None:
        """Queue one message from the OTA topic (an envelope or a chunk). Thread-safe and cheap:
        call it from the MQTT callback."""
        if len(payload) > self._max_message:
            log.warning("OTA message too large, dropped", extra=log_fields(bytes=len(payload)))
            return
        self._queue.put(("message", bytes(payload)))

    def rollback(self, model: str) -> concurrent.futures.Future[dict[str, Any]]:
        """Queue an operator rollback of ``model`` to its previous kept version; the future
        resolves to the final record (state rolled_back or failed)."""
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._queue.put(("rollback", (model, future)))
        return future

    def start(self) -> None:
        """Start the updater thread (call :meth:`recover` first)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ota-updater", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread; an update in progress stays in its journal state (see recover)."""
        self._stop.set()
        self._queue.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def run_once(self, timeout_s: float = 0.0) -> bool:
        """Process one queued item on the calling thread; False when none came in time."""
        item = self._next_item(timeout_s)
        if item is None:
            return False
        self._dispatch(item)
        return True

    def status(self) -> dict[str, Any] | None:
        """The current/last record (as published)."""
        with self._lock:
            rec = self._record if self._record is not None else self._read_journal()
            return None if rec is None else _public(rec)

    def committed(self) -> dict[str, CommittedVersion]:
        return self.store.committed_all()

    def serving_bundle(self, model: str) -> Path | None:
        """The bundle the daemon should serve for ``model`` at start: the committed OTA version
        when there is one (and its files still verify), else the configured bundle."""
        found = self.store.committed(model)
        if found is not None:
            if self.store.verify_installed(model, found.version):
                return Path(found.bundle_dir)
            log.error(
                "committed OTA version of %s (v%d) no longer matches its signed manifest "
                "(missing or altered files); serving the configured bundle instead — push a "
                "new version to restore it",
                model,
                found.version,
                extra=log_fields(model=model, version=found.version, bundle=found.bundle_dir),
            )
        return self.initial_bundles.get(model)

    def recover(self) -> RecoveryReport:
        """Call once at start, before :meth:`start`; see the module docstring."""
        cleaned = self.store.clean_staging()
        rec = self._read_journal()
        interrupted: str | None = None
        resumed = False
        if rec is not None and S(rec["state"]) not in TERMINAL:
            interrupted = str(rec["state"])
            with self._lock:
                self._record = rec
            committed = self.store.committed(str(rec.get("model")))
            if (
                S(interrupted) is S.PROBATION
                and rec.get("op") in ("update", "resume")
                and committed is not None
                and committed.version == rec.get("version")
            ):
                # killed between the commit and the journal write: the commit is what counts
                interrupted = None
                self._transition(S.ACTIVE, None, "committed before the agent stopped")
            else:
                self._transition(
                    S.FAILED,
                    f"interrupted at {interrupted}",
                    "the agent stopped or crashed during this stage; the committed model is served",
                )
                resumed = self._maybe_resume(rec, S(interrupted))
        if cleaned:
            log.info("OTA staging leftovers removed", extra=log_fields(removed=cleaned))
        return RecoveryReport(
            interrupted_at=interrupted,
            record=self.status(),
            resumed=resumed,
            committed=self.store.committed_all(),
            cleaned=cleaned,
        )

    # ------------------------------------------------------------------ journal + states

    def _read_journal(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.store.journal_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error(
                "OTA journal unreadable; ignoring it",
                extra=log_fields(path=str(self.store.journal_path), error=str(exc)),
            )
            return None
        if not isinstance(data, dict) or data.get("state") not in {s.value for s in S}:  # pyright: ignore[reportUnknownMemberType]
            return None
        return data  # pyright: ignore[reportUnknownVariableType]

    def _begin(self, op: str, state: UpdateState, **fields: Any) -> dict[str, Any]:
        assert state in INITIAL
        now = int(self.clock())
        rec: dict[str, Any] = {
            "id": uuid.uuid4().hex[:12],
            "op": op,
            "model": None,
            "version": None,
            "state": state.value,
            "reason": None,
            "detail": "",
            "started_at": now,
            "updated_at": now,
            "transitions": [{"state": state.value, "at": now, "reason": None}],
        }
        rec.update(fields)
        with self._lock:
            self._record = rec
            self._persist_and_publish(rec)
        return rec

    def _update(self, **fields: Any) -> None:
        """Change fields of the current record without a transition (persisted)."""
        with self._lock:
            assert self._record is not None
            self._record.update(fields)
            self._persist_and_publish(self._record)

    def _transition(self, state: UpdateState, reason: str | None = None, detail: str = "") -> None:
        with self._lock:
            rec = self._record
            assert rec is not None
            current = S(rec["state"])
            allowed = TRANSITIONS[current] | ({S.FAILED} if current not in TERMINAL else set())
            if state not in allowed:
                raise OtaError(
                    f"OTA state machine: {current.value} → {state.value} is not allowed",
                    reason="internal",
                    fix="this is a bug in the updater; report it with the journal file",
                    path=self.store.journal_path,
                )
            now = int(self.clock())
            rec["state"], rec["reason"], rec["detail"], rec["updated_at"] = (
                state.value,
                reason,
                detail,
                now,
            )
            rec.pop("waiting_for", None)
            rec.pop("progress", None)
            rec["transitions"].append({"state": state.value, "at": now, "reason": reason})
            self._persist_and_publish(rec)
        level = logging.WARNING if state in (S.REJECTED, S.FAILED, S.ROLLED_BACK) else logging.INFO
        log.log(
            level,
            f"OTA {rec.get('model')} v{rec.get('version')}: {state.value}",
            extra=log_fields(
                update=rec["id"],
                model=rec.get("model"),
                version=rec.get("version"),
                state=state.value,
                reason=reason,
                detail=detail,
            ),
        )

    def _persist_and_publish(self, rec: dict[str, Any]) -> None:
        atomic_write_json(self.store.journal_path, rec)
        self._publish(rec)

    def _publish(self, rec: dict[str, Any]) -> None:
        try:
            self.hooks.publish_state(_public(rec))
        except Exception:  # a failing publisher must never break an update
            log.exception("publish_state hook failed", extra=log_fields(update=rec.get("id")))

    # ------------------------------------------------------------------ queue loop

    def _next_item(self, timeout_s: float) -> tuple[str, Any] | None:
        if self._deferred:
            return self._deferred.popleft()
        try:
            return self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._next_item(0.5)
            if item is None:
                continue
            try:
                self._dispatch(item)
            except _Stopped:
                return
            except Exception:  # keep the updater alive whatever one update does
                log.exception("OTA updater: unexpected error")

    def _dispatch(self, item: tuple[str, Any]) -> None:
        kind, value = item
        if kind == "stop":
            raise _Stopped
        if kind == "message":
            self._handle_message(value)
        elif kind == "rollback":
            model, future = value
            try:
                future.set_result(self._do_rollback(model))
            except _Stopped:
                future.cancel()
                raise
            except Exception as exc:
                future.set_exception(exc)
        elif kind == "resume":
            self._do_resume(value)

    def _handle_message(self, payload: bytes) -> None:
        try:
            doc: Any = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            doc = None
        if isinstance(doc, dict) and is_chunk_message(doc):  # pyright: ignore[reportUnknownArgumentType]
            self._buffer_chunk(doc)  # pyright: ignore[reportUnknownArgumentType]
            return
        self._do_update(payload, doc)

    def _buffer_chunk(self, chunk: dict[str, Any]) -> None:
        """A chunk with no update waiting for it (it came before its manifest): keep it, within
        ota.max_bundle_mib in all, oldest pushes dropped first."""
        sha = chunk.get("manifest_sha256")
        if not isinstance(sha, str) or sha in self._finished:
            return
        size = len(str(chunk.get("data", "")))
        self._pending_chunks.setdefault(sha, []).append(chunk)
        self._pending_bytes += size
        while self._pending_bytes > self._max_message and len(self._pending_chunks) > 1:
            _old, dropped = self._pending_chunks.popitem(last=False)
            self._pending_bytes -= sum(len(str(c.get("data", ""))) for c in dropped)
        if self._pending_bytes > self._max_message:  # one push alone is over the bound
            self._pending_chunks[sha].pop()
            self._pending_bytes -= size
            log.warning(
                "OTA chunk dropped: chunks waiting for their manifest exceed the buffer",
                extra=log_fields(manifest_sha256=sha, buffered_bytes=self._pending_bytes),
            )

    # ------------------------------------------------------------------ one update

    def _is_duplicate(self, raw: Any) -> bool:
        """QoS 1 delivers at least once (and a broker may replay): a manifest this updater
        already processed, byte for byte, is ignored instead of being rejected again, so that
        the published state keeps describing the real update."""
        if not isinstance(raw, dict):
            return False
        try:
            sha = manifest_sha256(raw)  # pyright: ignore[reportUnknownArgumentType]
        except OtaRejected:
            return False
        with self._lock:
            last = self._record if self._record is not None else self._read_journal()
        if sha in self._finished or (last is not None and last.get("manifest_sha256") == sha):
            log.info("duplicate OTA manifest ignored", extra=log_fields(manifest_sha256=sha))
            return True
        return False

    def _do_update(self, payload: bytes, doc: Any) -> None:
        raw: Any = doc.get("manifest") if isinstance(doc, dict) else None  # pyright: ignore[reportUnknownMemberType]
        if self._is_duplicate(raw):
            return
        claimed: dict[str, Any] = {}
        if isinstance(raw, dict):
            claimed = {
                "model": raw.get("name") if isinstance(raw.get("name"), str) else None,  # pyright: ignore[reportUnknownMemberType]
                "version": raw.get("version") if isinstance(raw.get("version"), int) else None,  # pyright: ignore[reportUnknownMemberType]
            }
        self._begin("update", S.RECEIVED, **claimed)
        signed: SignedManifest | None = None
        try:
            signed = self.verifier.accept(payload)
            m = signed.manifest
            self.store.advance(m.name, m.version)
            self._update(
                model=m.name,
                version=m.version,
                manifest_sha256=signed.sha256,
                key_id=signed.key_id,
                payload=m.payload.kind,
                envelope=signed.envelope(),
            )
            self._transition(S.VERIFIED)
            self._fetch_install_activate(signed)
        except OtaRejected as exc:
            self._finish_error(S.REJECTED, exc.reason, exc.message)
        except _Fail as exc:
            self._finish_error(exc.state, exc.reason, exc.detail)
        except OtaError as exc:
            self._finish_error(S.FAILED, exc.reason, exc.message)
        except Exception as exc:  # disk full, a hook's bug...: the update fails, the agent not
            log.exception("OTA update failed unexpectedly")
            self._finish_error(S.FAILED, "internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            if signed is not None:
                self._finished.append(signed.sha256)
            self._discard_unused()

    def _finish_error(self, state: UpdateState, reason: str, detail: str) -> None:
        with self._lock:
            current = S(self._record["state"]) if self._record else None
        if current is not None and current not in TERMINAL:
            if state is S.REJECTED and S.REJECTED not in TRANSITIONS[current]:
                state = S.FAILED
            self._transition(state, reason, detail)

    def _fetch_install_activate(self, signed: SignedManifest) -> None:
        m = signed.manifest
        staging = self.store.new_staging(m.name, m.version)
        try:
            progress = _Throttled(self._update)
            if m.payload.kind == "url":
                download_bundle(
                    m, staging, timeout_s=self.config.download_timeout_s, progress=progress
                )
            else:
                self._collect_chunks(signed, staging, progress)
            check_bundle(staging, m)
            bundle_dir = self.store.install(staging, m.name, m.version, signed.envelope())
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._update(bundle_dir=str(bundle_dir))
        self._transition(S.DOWNLOADED)
        self._build_and_activate(m.name, m.version, bundle_dir)

    def _collect_chunks(
        self, signed: SignedManifest, staging: Path, progress: Callable[[int, int, str], None]
    ) -> None:
        assembler = ChunkAssembler(signed.manifest, signed.sha256, staging, progress=progress)
        for chunk in self._pending_chunks.pop(signed.sha256, []):
            self._pending_bytes -= len(str(chunk.get("data", "")))
            assembler.add(chunk)
        deadline = time.monotonic() + self.config.inline_timeout_s
        while not assembler.complete:
            if self._stop.is_set():
                raise _Stopped
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                kind, value = self._queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if kind == "stop":
                raise _Stopped
            if kind != "message":
                self._deferred.append((kind, value))
                continue
            try:
                doc: Any = json.loads(value.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                doc = None
            if isinstance(doc, dict) and is_chunk_message(doc):  # pyright: ignore[reportUnknownArgumentType]
                if doc.get("manifest_sha256") == signed.sha256:  # pyright: ignore[reportUnknownMemberType]
                    assembler.add(doc)  # pyright: ignore[reportUnknownArgumentType]
                else:
                    self._buffer_chunk(doc)  # pyright: ignore[reportUnknownArgumentType]
            else:
                self._deferred.append((kind, value))
        assembler.finish()

    def _wait_for_build_admission(self) -> None:
        start = time.monotonic()
        announced = False
        while not self.hooks.builds_allowed():
            waited = time.monotonic() - start
            if waited >= self.config.build_wait_max_s:
                raise _Fail(
                    S.FAILED,
                    "build_not_admitted",
                    f"the governor held builds back for {waited:.0f} s "
                    f"(ota.build_wait_max_s {self.config.build_wait_max_s:g})",
                )
            if not announced:
                self._update(waiting_for="build_admission")
                announced = True
            if self._stop.wait(min(self.config.build_poll_s, self.config.build_wait_max_s)):
                raise _Stopped
        if announced:
            self._update(waiting_for=None)

    def _build(self, bundle_dir: Path, what: str) -> BuildResult:
        try:
            return self.hooks.build(bundle_dir)
        except EdgeAgentError as exc:
            raise _Fail(S.FAILED, "build_failed", f"{what}: {exc}") from exc

    def _build_and_activate(self, model: str, version: int, bundle_dir: Path) -> None:
        self._wait_for_build_admission()
        self._transition(S.BUILDING)
        result = self._build(bundle_dir, "engine build failed")
        self._update(artifact=result.to_json(), validated_fps=result.validated_fps)
        self._transition(S.VALIDATING)
        if self.hooks.check_golden is not None:
            try:
                self.hooks.check_golden(result, bundle_dir)
            except EdgeAgentError as exc:
                raise _Fail(S.FAILED, "golden_mismatch", str(exc)) from exc
        previous = self._rollback_target(model, exclude_version=version)
        self._update(previous=None if previous is None else _target_json(previous))
        baseline_fps = self._baseline_fps(model)
        self._update(baseline_fps=baseline_fps)
        self._transition(S.ACTIVATING)
        try:
            self.hooks.activate(model, bundle_dir, result)
        except Exception as exc:
            raise _Fail(
                S.FAILED, "activate_failed", f"activation failed, previous model serves: {exc}"
            ) from exc
        self._transition(S.PROBATION)
        verdict = self._probation(result, baseline_fps)
        if verdict is None:
            self.store.commit(
                model,
                version,
                bundle_dir,
                engine_sha256=result.engine_sha256,
                artifact_dir=result.artifact_dir,
            )
            self._transition(S.ACTIVE)
            return
        reason, detail = verdict
        if previous is None:
            raise _Fail(
                S.FAILED,
                reason,
                f"{detail}; no previous version to roll back to — the new model keeps serving",
            )
        try:
            back = self._build(Path(previous["bundle_dir"]), "rollback build failed")
            self.hooks.activate(model, Path(previous["bundle_dir"]), back)
        except _Fail as exc:
            raise _Fail(S.FAILED, reason, f"{detail}; {exc.detail}") from exc
        except Exception as exc:
            raise _Fail(S.FAILED, reason, f"{detail}; rollback activation failed: {exc}") from exc
        self._transition(S.ROLLED_BACK, reason, f"{detail}; rolled back to {_describe(previous)}")

    def _baseline_fps(self, model: str) -> float | None:
        """The serving (old) model's inference throughput in its pipeline, or None."""
        if self.hooks.baseline_sample is None:
            return None
        try:
            fps = self.hooks.baseline_sample(model).fps
        except Exception:  # a figure we cannot get must not stop the update
            log.exception("baseline_sample hook failed", extra=log_fields(model=model))
            return None
        return fps if fps is not None and fps > 0 else None

    def _probation(
        self, result: BuildResult, baseline_fps: float | None = None
    ) -> tuple[str, str] | None:
        """None when the new model passes probation, else (reason, detail)."""
        window = self.config.probation_s
        if window <= 0:
            return None
        start = time.monotonic()
        deadline = start + window
        fps: list[float] = []
        samples = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._stop.wait(min(self.config.probation_interval_s, remaining)):
                raise _Stopped
            sample = self.hooks.probation_sample()
            samples += 1
            elapsed = time.monotonic() - start
            if sample.crashed:
                return "probation_crash", f"the new model crashed {elapsed:.1f} s into probation"
            if sample.nan_outputs > 0:
                return (
                    "probation_nan",
                    f"{sample.nan_outputs} NaN outputs {elapsed:.1f} s into probation",
                )
            if sample.fps is not None:
                fps.append(sample.fps)
        validated = result.validated_fps
        if fps and validated:
            mean = sum(fps) / len(fps)
            fraction = self.config.probation_min_fps_fraction
            slow = mean < fraction * validated
            if slow and baseline_fps is not None:
                slow = mean < fraction * baseline_fps
            if slow:
                before = ""
                if baseline_fps is not None:
                    before = f" and the {baseline_fps:.1f}/s the previous model served"
                return (
                    "probation_slow",
                    f"served {mean:.1f} inferences/s over {samples} samples, below "
                    f"{fraction:g} × the validated {validated:.1f}/s{before}",
                )
        return None

    # ------------------------------------------------------------------ rollback

    def _rollback_target(self, model: str, *, exclude_version: int | None) -> dict[str, Any] | None:
        """The version to fall back to: the committed one (during an update), else the newest
        previously committed version still installed, else the configured bundle."""
        candidates: list[CommittedVersion] = []
        current = self.store.committed(model)
        if current is not None:
            candidates.append(current)
        candidates.extend(self.store.history(model))
        for c in candidates:
            if c.version == exclude_version:
                continue
            if self.store.verify_installed(model, c.version):
                return {"version": c.version, "bundle_dir": c.bundle_dir, "source": "ota"}
        initial = self.initial_bundles.get(model)
        if initial is not None:
            return {"version": None, "bundle_dir": str(initial), "source": "config"}
        return None

    def _do_rollback(self, model: str) -> dict[str, Any]:
        current = self.store.committed(model)
        self._begin(
            "rollback",
            S.BUILDING,
            model=model,
            version=None if current is None else current.version,
        )
        try:
            if current is None:
                raise _Fail(
                    S.FAILED,
                    "no_rollback_target",
                    f"no OTA version of {model} is committed; the configured bundle serves",
                )
            target = self._rollback_target(model, exclude_version=current.version)
            if target is None:
                raise _Fail(
                    S.FAILED,
                    "no_rollback_target",
                    f"no earlier version of {model} is kept and none is configured",
                )
            self._update(previous=_target_json(target))
            result = self._build(Path(target["bundle_dir"]), "rollback build failed")
            self._transition(S.ACTIVATING)
            try:
                self.hooks.activate(model, Path(target["bundle_dir"]), result)
            except Exception as exc:
                raise _Fail(
                    S.FAILED, "activate_failed", f"rollback activation failed: {exc}"
                ) from exc
            if target["version"] is None:
                self.store.uncommit(model)
            else:
                self.store.commit(
                    model,
                    int(target["version"]),
                    Path(target["bundle_dir"]),
                    engine_sha256=result.engine_sha256,
                    artifact_dir=result.artifact_dir,
                    demote_current=False,
                )
            self._transition(
                S.ROLLED_BACK,
                "rollback_requested",
                f"rolled back from v{current.version} to {_describe(target)}",
            )
        except _Fail as exc:
            self._finish_error(exc.state, exc.reason, exc.detail)
        except Exception as exc:
            log.exception("OTA rollback failed unexpectedly")
            self._finish_error(S.FAILED, "internal_error", f"{type(exc).__name__}: {exc}")
        status = self.status()
        assert status is not None
        return status

    # ------------------------------------------------------------------ resume

    def _maybe_resume(self, rec: dict[str, Any], stage: UpdateState) -> bool:
        model, version = rec.get("model"), rec.get("version")
        if rec.get("op") not in ("update", "resume") or not isinstance(model, str):
            return False
        if not isinstance(version, int) or self.store.high_water(model) != version:
            return False
        if stage in (S.DOWNLOADED, S.BUILDING, S.VALIDATING):
            if not self.store.verify_installed(model, version):
                return False
            self._queue.put(("resume", (rec, S.DOWNLOADED)))
            return True
        if (
            stage is S.VERIFIED
            and rec.get("payload") == "url"
            and isinstance(rec.get("envelope"), dict)
        ):
            self._queue.put(("resume", (rec, S.VERIFIED)))
            return True
        return False

    def _do_resume(self, value: tuple[dict[str, Any], UpdateState]) -> None:
        old, start = value
        model, version = str(old["model"]), int(old["version"])
        self._begin(
            "resume",
            start,
            model=model,
            version=version,
            resumed_from=old["id"],
            manifest_sha256=old.get("manifest_sha256"),
            key_id=old.get("key_id"),
            payload=old.get("payload"),
            envelope=old.get("envelope"),
            bundle_dir=old.get("bundle_dir"),
        )
        try:
            if start is S.VERIFIED:
                signed = self.verifier.accept(old["envelope"], resume=True)
                self._fetch_install_activate(signed)
            else:
                bundle_dir = self.store.version_dir(model, version)
                self._update(bundle_dir=str(bundle_dir))
                self._build_and_activate(model, version, bundle_dir)
        except OtaRejected as exc:
            self._finish_error(S.REJECTED, exc.reason, exc.message)
        except _Fail as exc:
            self._finish_error(exc.state, exc.reason, exc.detail)
        except OtaError as exc:
            self._finish_error(S.FAILED, exc.reason, exc.message)
        except Exception as exc:
            log.exception("resumed OTA update failed unexpectedly")
            self._finish_error(S.FAILED, "internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            self._discard_unused()

    def _discard_unused(self) -> None:
        """After an update ended other than active: its installed version can never serve (its
        number is burnt), so remove it now instead of leaving it to pruning."""
        with self._lock:
            rec = dict(self._record) if self._record else {}
        model, version = rec.get("model"), rec.get("version")
        if rec.get("state") not in (S.REJECTED, S.FAILED, S.ROLLED_BACK):
            return
        if not isinstance(model, str) or not isinstance(version, int):
            return
        current = self.store.committed(model)
        kept = {h.version for h in self.store.history(model)}
        if (current is None or current.version != version) and version not in kept:
            self.store.remove_version(model, version)


# --------------------------------------------------------------------------- helpers


class _Throttled:
    """Download progress into the record (published) at most every 10 % or 2 s."""

    def __init__(self, update: Callable[..., None]):
        self.update = update
        self.last_fraction = -1.0
        self.last_time = 0.0

    def __call__(self, done: int, total: int, message: str) -> None:
        fraction = 1.0 if total <= 0 else min(1.0, done / total)
        now = time.monotonic()
        if fraction < 1.0 and fraction - self.last_fraction < 0.1 and now - self.last_time < 2.0:
            return
        self.last_fraction, self.last_time = fraction, now
        with contextlib.suppress(OSError):
            self.update(progress=round(fraction, 3), progress_message=message)


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    """The record as published: without the envelope, transition list kept short."""
    out = {k: v for k, v in rec.items() if k not in ("envelope", "transitions")}
    out["transitions"] = [t["state"] for t in rec.get("transitions", [])]
    return out


def _target_json(target: Mapping[str, Any]) -> dict[str, Any]:
    return {k: target[k] for k in ("version", "bundle_dir", "source")}


def _describe(target: Mapping[str, Any]) -> str:
    if target.get("version") is None:
        return f"the configured bundle {target['bundle_dir']}"
    return f"v{target['version']}"
