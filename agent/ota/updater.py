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

Nothing unsigned changes state: an envelope whose signature does not verify is dropped and
counted (:mod:`agent.ota.drops`), never recorded or published; so is every malformed, oversized,
deep or forged message or chunk (:mod:`agent.ota.inbox`, :mod:`agent.ota.assembler`).

High-water mark: it advances as soon as a manifest passes verification (signature, target,
expiry, newer, compatible, quota) and *before* the download. A version rejected later (bad
ONNX, failed build, rolled back) has burnt its number: the fleet pushes N+1. A failed
*transfer* (download failed or timed out, chunks missing, a file's bytes not the signed ones)
does not burn it for the same signed manifest: that very manifest may be sent again
(:meth:`~agent.ota.store.VersionStore.allow_retry`); any other manifest at version N is refused
(``not_newer``), also after a restart.
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
from agent.core.jsonlimits import sanitize_text
from agent.core.logs import log_fields
from agent.ota.context import UpdateContext
from agent.ota.control import Stopped
from agent.ota.drops import DropReason
from agent.ota.inbox import Envelope, Inbox, InboxLimits, Item, RollbackRequest, StopRequest
from agent.ota.journal import Journal
from agent.ota.manifest import manifest_sha256
from agent.ota.ports import UpdaterPorts
from agent.ota.reasons import transfer_failed
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
        limits: InboxLimits | None = None,
    ):
        store: VersionStore = verifier.store
        self.inbox = Inbox(limits)
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

    def dropped(self) -> dict[str, int]:
        """Messages from the OTA topic dropped so far, by reason (see :mod:`agent.ota.drops`)."""
        return self.inbox.drops.counts()

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
                self.inbox.drops.flush()
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
        if isinstance(item, Envelope):
            self._handle_envelope(item)
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

    def _handle_envelope(self, envelope: Envelope) -> None:
        """An envelope: nothing is recorded or published unless its signature verifies
        (refused ones are dropped and counted); then received → verified → ..."""
        sha = _manifest_sha(envelope.doc.get("manifest"))
        if sha is not None and self._is_duplicate(sha):
            return
        try:
            signed = self.ctx.verifier.check_signature(envelope.doc)
        except OtaRejected as exc:
            self.inbox.drops.count(
                DropReason.unverified(str(exc.reason)),
                detail=sanitize_text(exc.message, max_len=200),
            )
            return
        self._update(signed)

    def _is_duplicate(self, sha: str) -> bool:
        """QoS 1 delivers at least once (and a broker may replay): a manifest this updater
        already processed, byte for byte, is ignored instead of being rejected again, so that
        the published state keeps describing the real update — unless its transfer failed and
        it may be retried."""
        last = self.tracker.last()
        seen = self.inbox.is_finished(sha) or (last is not None and last.manifest_sha256 == sha)
        if seen and not self.store.retry_pending(sha):
            log.info("duplicate OTA manifest ignored", extra=log_fields(manifest_sha256=sha))
            return True
        return False

    def _accept(self, signed: SignedManifest) -> None:
        """The checks after the signature (as :meth:`Verifier.accept`), where the high-water
        check lets the same signed manifest retry a failed transfer."""
        verifier, m = self.ctx.verifier, signed.manifest
        verifier.check_target(m)
        verifier.check_expiry(m)
        self.store.check_newer(m.name, m.version, signed.sha256)
        verifier.check_compat(m)
        self.store.check_quota(m.name, m.total_size, verifier.max_bundle_bytes)

    def _update(self, signed: SignedManifest) -> None:
        """received → verified → (install and activate)."""
        m = signed.manifest
        self.tracker.begin("update", UpdateState.RECEIVED, model=m.name, version=m.version)
        accepted = False
        try:
            with self.tracker.ending_errors("OTA update"):
                self._accept(signed)
                accepted = True
                self.store.advance(m.name, m.version)
                self.tracker.update(
                    manifest_sha256=signed.sha256,
                    key_id=signed.key_id,
                    payload=m.payload.kind,
                    envelope=signed.envelope(),
                )
                self.tracker.transition(UpdateState.VERIFIED)
                install_and_activate(self.ctx, signed)
        finally:
            if accepted:
                self.inbox.mark_finished(signed.sha256)
                self._allow_retry(signed)
            discard_unused(self.ctx)

    def _allow_retry(self, signed: SignedManifest) -> None:
        """When the transfer failed (right after ``verified``), the same signed manifest may
        be sent again: the version is not burnt by a lost, slow or forged chunk."""
        rec = self.tracker.last()
        if rec is None or rec.manifest_sha256 != signed.sha256:
            return
        states = [t.state for t in rec.transitions]
        if transfer_failed(rec.state, rec.reason, states):
            m = signed.manifest
            self.store.allow_retry(m.name, m.version, signed.sha256)
            self.inbox.forget_finished(signed.sha256)
            log.info(
                "OTA %s v%d: the transfer failed; the same signed manifest may be sent again",
                m.name,
                m.version,
                extra=log_fields(model=m.name, version=m.version, manifest_sha256=signed.sha256),
            )


def _manifest_sha(raw: Any) -> str | None:
    """The sha256 naming a (not yet verified) manifest, None when it has none."""
    if not isinstance(raw, dict):
        return None
    try:
        return manifest_sha256(raw)  # pyright: ignore[reportUnknownArgumentType]
    except OtaRejected:
        return None
