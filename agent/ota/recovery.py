"""Recovery at start: an update found unfinished in the journal is marked ``failed`` with
reason ``interrupted at <stage>``, then resumed only where that is safe:

- ``verified`` with a URL payload: downloaded again (signature, expiry and compatibility are
  checked again; the high-water mark must still be this version);
- ``downloaded`` / ``building`` / ``validating``: the installed bundle is re-hashed against the
  stored signed manifest and the update goes back to ``building``;
- ``received``, inline ``verified``, ``activating``, ``probation``: not resumed. A crash during
  activation or probation counts against the new version; the committed one is served.
  (Found in ``probation`` while ``committed.json`` already names the version: the process died
  between the commit and the journal write, and the record is finished as ``active``.)

Staging leftovers are removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from agent.core.logs import log_fields
from agent.ota.activation import build_and_activate
from agent.ota.context import UpdateContext
from agent.ota.inbox import ResumeRequest
from agent.ota.reasons import interrupted_at
from agent.ota.record import UpdateRecord
from agent.ota.staging import discard_unused, install_and_activate
from agent.ota.states import TERMINAL, UpdateState
from agent.ota.store import CommittedVersion

log = logging.getLogger(__name__)

S = UpdateState


@dataclass(frozen=True)
class RecoveryReport:
    """What :func:`recover` found."""

    interrupted_at: str | None
    record: dict[str, Any] | None
    resumed: bool
    committed: dict[str, CommittedVersion]
    cleaned: list[str]


def recover(ctx: UpdateContext) -> RecoveryReport:
    """Call once at start, before the updater thread runs."""
    cleaned = ctx.store.clean_staging()
    rec = ctx.tracker.journal.read()
    interrupted: str | None = None
    resumed = False
    if rec is not None and rec.state not in TERMINAL:
        interrupted = rec.state.value
        ctx.tracker.adopt(rec)
        if _committed_before_stop(ctx, rec):
            interrupted = None
            ctx.tracker.transition(S.ACTIVE, None, "committed before the agent stopped")
        else:
            ctx.tracker.transition(
                S.FAILED,
                interrupted_at(interrupted),
                "the agent stopped or crashed during this stage; the committed model is served",
            )
            resumed = _maybe_resume(ctx, rec, S(interrupted))
    if cleaned:
        log.info("OTA staging leftovers removed", extra=log_fields(removed=cleaned))
    return RecoveryReport(
        interrupted_at=interrupted,
        record=ctx.tracker.status(),
        resumed=resumed,
        committed=ctx.store.committed_all(),
        cleaned=cleaned,
    )


def _committed_before_stop(ctx: UpdateContext, rec: UpdateRecord) -> bool:
    """Killed between the commit and the journal write: the commit is what counts."""
    committed = ctx.store.committed(str(rec.model))
    return (
        rec.state is S.PROBATION
        and rec.op in ("update", "resume")
        and committed is not None
        and committed.version == rec.version
    )


def _maybe_resume(ctx: UpdateContext, rec: UpdateRecord, stage: UpdateState) -> bool:
    model, version = rec.model, rec.version
    if rec.op not in ("update", "resume") or not isinstance(model, str):
        return False
    if not isinstance(version, int) or ctx.store.high_water(model) != version:
        return False
    if stage in (S.DOWNLOADED, S.BUILDING, S.VALIDATING):
        if not ctx.store.verify_installed(model, version):
            return False
        ctx.inbox.put(ResumeRequest(rec, S.DOWNLOADED))
        return True
    if stage is S.VERIFIED and rec.payload == "url" and isinstance(rec.envelope, dict):
        ctx.inbox.put(ResumeRequest(rec, S.VERIFIED))
        return True
    return False


def resume(ctx: UpdateContext, request: ResumeRequest) -> None:
    """Run a resumed update as a new record (op ``resume``) from ``request.start``."""
    old, start = request.record, request.start
    model, version = str(old.model), int(old.version or 0)
    ctx.tracker.begin(
        "resume",
        start,
        model=model,
        version=version,
        resumed_from=old.id,
        manifest_sha256=old.manifest_sha256,
        key_id=old.key_id,
        payload=old.payload,
        envelope=old.envelope,
        bundle_dir=old.bundle_dir,
    )
    try:
        with ctx.tracker.ending_errors("resumed OTA update"):
            if start is S.VERIFIED:
                signed = ctx.verifier.accept(old.envelope or {}, resume=True)
                install_and_activate(ctx, signed)
            else:
                bundle_dir = ctx.store.version_dir(model, version)
                ctx.tracker.update(bundle_dir=str(bundle_dir))
                build_and_activate(ctx, model, version, bundle_dir)
    finally:
        discard_unused(ctx)
