"""Staged activation of pushed models: an explicit, journalled state machine on one thread.

Each update is an :class:`~agent.ota.record.UpdateRecord` written atomically to
``<state_dir>/ota/journal.json`` on every transition (:mod:`agent.ota.states` holds the graph)
and handed to the :class:`~agent.ota.ports.StatePublisher` (the daemon publishes it retained on
``edge/<fleet>/<device>/model``). The old model keeps serving until
:class:`~agent.ota.ports.ModelServing` swaps the new one in; the committed pointer
(``committed.json``) moves only after probation passes, so a crash anywhere before that leaves
the old version committed.

One push: :mod:`~agent.ota.inbox` → :mod:`~agent.ota.verify` → :mod:`~agent.ota.staging` (fetch,
stage, install) → :mod:`~agent.ota.activation` (build + validate, hot swap, probation — verdict
in :mod:`~agent.ota.probation`) → commit, or :mod:`~agent.ota.rollback`. At start,
:mod:`~agent.ota.recovery` finishes (or resumes) an interrupted update.

High-water mark: it advances as soon as a manifest passes verification (signature, target,
expiry, newer, compatible, quota) and *before* the download. A version rejected later (hash
mismatch, bad ONNX, failed build, rolled back) has burnt its number: the fleet pushes N+1.
Replaying version N is refused (``not_newer``) in every case, also after a restart.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.config.agent import AgentConfig, OtaConfig
from agent.core.errors import OtaRejected
from agent.core.logs import log_fields
from agent.ota.context import UpdateContext
from agent.ota.control import Stopped
from agent.ota.inbox import (
    Inbox,
    Item,
    Message,
    RollbackRequest,
    StopRequest,
    parse_json,
)
from agent.ota.journal import Journal
from agent.ota.manifest import manifest_sha256
from agent.ota.ports import UpdaterPorts
from agent.ota.recovery import RecoveryReport, recover, resume
from agent.ota.rollback import operator_rollback
from agent.ota.staging import discard_unused, install_and_activate
from agent.ota.states import UpdateState
from agent.ota.store import CommittedVersion, VersionStore
from agent.ota.tracker import UpdateTracker
from agent.ota.trust import SignedManifest, TrustStore
from agent.ota.verify import DeviceFacts, Verifier

__all__ = ["Updater"]

log = logging.getLogger(__name__)


class Updater:
    """Runs updates one at a time from its inbox; see the module docstring.

    ``initial_bundles`` maps model name → the bundle in agent.yaml: the rollback target when no
    OTA version of that model was committed yet.
    """

    def __init__(
        self,
        verifier: Verifier,
        ports: UpdaterPorts,
        *,
        config: OtaConfig,
        initial_bundles: Mapping[str, Path] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        store: VersionStore = verifier.store
        self.inbox = Inbox((config.max_bundle_mib + 1) * 1024 * 1024)
        self.tracker = UpdateTracker(Journal(store.journal_path), ports.publisher, clock)
        self.ctx = UpdateContext(
            verifier=verifier,
            store=store,
            ports=ports,
            config=config,
            tracker=self.tracker,
            inbox=self.inbox,
            initial_bundles=dict(initial_bundles or {}),
        )
        self._thread: threading.Thread | None = None

    @property
    def store(self) -> VersionStore:
        return self.ctx.store

    @classmethod
    def from_config(
        cls,
        cfg: AgentConfig,
        device: DeviceFacts,
        ports: UpdaterPorts,
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
        return cls(verifier, ports, config=ota, initial_bundles=bundles)

    # ------------------------------------------------------------------ public API

    def submit(self, payload: bytes) -> None:
        """Queue one message from the OTA topic (an envelope or a chunk). Thread-safe and cheap:
        call it from the MQTT callback."""
        self.inbox.submit(payload)

    def rollback(self, model: str) -> concurrent.futures.Future[dict[str, Any]]:
        """Queue an operator rollback of ``model`` to its previous kept version; the future
        resolves to the final record (state rolled_back or failed)."""
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self.inbox.put(RollbackRequest(model, future))
        return future

    def start(self) -> None:
        """Start the updater thread (call :meth:`recover` first)."""
        if self._thread is not None:
            return
        self.ctx.stop.clear()
        self._thread = threading.Thread(target=self._run, name="ota-updater", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread; an update in progress stays in its journal state (see recover)."""
        self.ctx.stop.set()
        self.inbox.put(StopRequest())
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def run_once(self, timeout_s: float = 0.0) -> bool:
        """Process one queued item on the calling thread; False when none came in time."""
        item = self.inbox.next(timeout_s)
        if item is None:
            return False
        self._dispatch(item)
        return True

    def status(self) -> dict[str, Any] | None:
        """The current/last record (as published)."""
        return self.tracker.status()

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
        return self.ctx.initial_bundles.get(model)

    def recover(self) -> RecoveryReport:
        """Call once at start, before :meth:`start`; see :mod:`agent.ota.recovery`."""
        return recover(self.ctx)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self.ctx.stop.is_set():
            item = self.inbox.next(0.5)
            if item is None:
                continue
            try:
                self._dispatch(item)
            except Stopped:
                return
            except Exception:  # keep the updater alive whatever one update does
                log.exception("OTA updater: unexpected error")

    def _dispatch(self, item: Item) -> None:
        if isinstance(item, StopRequest):
            raise Stopped
        if isinstance(item, Message):
            self._handle_message(item)
        elif isinstance(item, RollbackRequest):
            self._handle_rollback(item)
        else:
            resume(self.ctx, item)

    def _handle_rollback(self, request: RollbackRequest) -> None:
        try:
            request.future.set_result(operator_rollback(self.ctx, request.model))
        except Stopped:
            request.future.cancel()
            raise
        except Exception as exc:
            request.future.set_exception(exc)

    def _handle_message(self, message: Message) -> None:
        chunk = message.chunk()
        if chunk is not None:
            self.inbox.buffer_chunk(chunk)
            return
        doc = parse_json(message.payload)
        raw: Any = doc.get("manifest") if isinstance(doc, dict) else None  # pyright: ignore[reportUnknownMemberType]
        if self._is_duplicate(raw):
            return
        self._update(message.payload, raw)

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
        last = self.tracker.last()
        if self.inbox.is_finished(sha) or (last is not None and last.manifest_sha256 == sha):
            log.info("duplicate OTA manifest ignored", extra=log_fields(manifest_sha256=sha))
            return True
        return False

    def _update(self, payload: bytes, raw: Any) -> None:
        """received → verified → (install and activate)."""
        self.tracker.begin("update", UpdateState.RECEIVED, **_claimed(raw))
        signed: SignedManifest | None = None
        try:
            with self.tracker.ending_errors("OTA update"):
                signed = self.ctx.verifier.accept(payload)
                m = signed.manifest
                self.store.advance(m.name, m.version)
                self.tracker.update(
                    model=m.name,
                    version=m.version,
                    manifest_sha256=signed.sha256,
                    key_id=signed.key_id,
                    payload=m.payload.kind,
                    envelope=signed.envelope(),
                )
                self.tracker.transition(UpdateState.VERIFIED)
                install_and_activate(self.ctx, signed)
        finally:
            if signed is not None:
                self.inbox.mark_finished(signed.sha256)
            discard_unused(self.ctx)


def _claimed(raw: Any) -> dict[str, Any]:
    """Model and version as the (not yet verified) manifest claims them, for the record."""
    if not isinstance(raw, dict):
        return {}
    name: Any = raw.get("name")  # pyright: ignore[reportUnknownMemberType]
    version: Any = raw.get("version")  # pyright: ignore[reportUnknownMemberType]
    return {
        "model": name if isinstance(name, str) else None,
        "version": version if isinstance(version, int) else None,
    }
