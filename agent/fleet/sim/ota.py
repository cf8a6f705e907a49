"""The simulated update walk: a manifest on the device's (or its group's) ``ota`` topic is
parsed within bounds and verified with the real trust store (signature, then the manifest
model), then target, expiry and version; the record then walks ``received`` → ... → ``active``
one state every ``step_s``, or ends as the drawn :class:`Outcome` says.

An empty payload is the controller clearing its retained manifest and is ignored; a manifest
this device already processed (a retained one re-delivered on reconnect) is ignored too, so
the published record keeps describing the real update, as on a real device.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from agent.core.errors import OtaReason, OtaRejected
from agent.core.jsonlimits import JsonLimits, JsonRejected, loads_bounded
from agent.core.logs import log_fields
from agent.fleet.sim.config import NAN_MODE, SUCCESS_PATH, FailMode, SimConfig
from agent.fleet.sim.context import DeviceContext
from agent.fleet.sim.record import Serving, SimRecord, engine_hash
from agent.ota.manifest import Manifest, manifest_sha256
from agent.ota.trust import SignedManifest

__all__ = ["OTA_LIMITS", "Outcome", "UpdateWalk", "handle_ota", "plan_outcome"]

log = logging.getLogger(__name__)

OTA_LIMITS = JsonLimits(max_bytes=1024 * 1024, max_depth=16, max_items=50_000)


@dataclass(frozen=True)
class Outcome:
    """How one simulated update ends: ``fail`` (None = ``active``), the new model's fps as a
    factor of the old one's, and the validation gate's task metric drop."""

    fail: FailMode | None
    fps_factor: float
    task_drop: float


def plan_outcome(cfg: SimConfig, rng: random.Random) -> Outcome:
    """One draw for the failure (``nan_rate``, then ``fail_rate``), one for slowness, one for
    a bad gate."""
    u = rng.random()
    fail: FailMode | None = None
    if u < cfg.nan_rate:
        fail = NAN_MODE
    elif u < cfg.nan_rate + cfg.fail_rate:
        fail = rng.choice(cfg.fail_modes)
    slow = rng.random() < cfg.slow_rate
    bad_gate = rng.random() < cfg.bad_gate_rate
    factor = cfg.slow_factor if slow else rng.uniform(1.0, 1.1)
    drop = cfg.bad_gate_drop if bad_gate else round(rng.uniform(0.0, 0.01), 4)
    return Outcome(fail, factor, drop)


def _sha_of(doc: Any) -> str | None:
    manifest = doc.get("manifest") if isinstance(doc, dict) else None  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    if not isinstance(manifest, dict):
        return None
    try:
        return manifest_sha256(manifest)  # pyright: ignore[reportUnknownArgumentType]
    except (TypeError, ValueError):
        return None


def handle_ota(ctx: DeviceContext, payload: bytes) -> None:
    """One message from an ``ota`` topic (scheduler thread)."""
    state = ctx.state
    if state.stopped or not payload:
        return  # b"": the controller cleared its retained manifest
    try:
        doc: Any = loads_bounded(payload, OTA_LIMITS)
    except JsonRejected as exc:
        doc, error = None, exc
    else:
        error = None
    if isinstance(doc, dict) and doc.get("kind") == "chunk":  # pyright: ignore[reportUnknownMemberType]
        return  # inline chunks: the simulated download needs none of them
    sha = _sha_of(doc)
    if sha is not None and sha in state.seen:
        log.debug("manifest already processed", extra=log_fields(device=ctx.device, sha=sha))
        return
    if state.busy:
        log.info("simulated device busy; OTA message dropped", extra=log_fields(device=ctx.device))
        return
    ctx.begin(SimRecord(op="update", model=None, version=None, state="received"))
    if error is not None:
        ctx.transition("rejected", OtaReason.MALFORMED.value, f"unreadable OTA message: {error}")
        return
    signed = _accept(ctx, doc)
    if signed is not None:
        state.busy = True
        UpdateWalk(ctx, signed, plan_outcome(ctx.cfg, ctx.rng)).start()


def _accept(ctx: DeviceContext, doc: Any) -> SignedManifest | None:
    """Verified and acceptable (→ ``verified``), or None after a ``rejected`` transition."""
    record = ctx.state.record
    assert record is not None
    try:
        signed = ctx.trust.verify(doc)
        ctx.state.seen.add(signed.sha256)
        record.model = signed.manifest.name
        record.version = signed.manifest.version
        _check(ctx, signed.manifest)
    except OtaRejected as exc:
        ctx.transition("rejected", str(exc.reason), str(exc))
        return None
    ctx.transition("verified")
    return signed


def _check(ctx: DeviceContext, m: Manifest) -> None:
    t = m.target
    if t.fleet != ctx.cfg.fleet or not (
        t.device == ctx.device or (t.group is not None and t.group == ctx.group)
    ):
        raise OtaRejected(
            f"push is for {t.device or t.group}; this is {ctx.device}",
            reason=OtaReason.WRONG_TARGET,
            fix="push to this device's id or its group",
        )
    if time.time() >= m.expires:
        raise OtaRejected("manifest expired", reason=OtaReason.EXPIRED, fix="push again")
    if m.name != ctx.cfg.model:  # as the real updater: a bundle replaces a served model
        raise OtaRejected(
            f"model {m.name} is not served here (['{ctx.cfg.model}'])",
            reason=OtaReason.INCOMPATIBLE,
            fix="push a bundle of a model the device serves",
        )
    served = ctx.state.serving.version
    if m.version <= served:
        raise OtaRejected(
            f"v{m.version} is not newer than v{served}",
            reason=OtaReason.NOT_NEWER,
            fix="push a higher --version",
        )


class UpdateWalk:
    """``downloaded`` → ... → ``active`` on the scheduler, one state every ``step_s``; stops
    when the device stops or a rollback replaced the record."""

    STEPS = SUCCESS_PATH[2:]

    def __init__(self, ctx: DeviceContext, signed: SignedManifest, outcome: Outcome) -> None:
        self.ctx = ctx
        self.manifest = signed.manifest
        self.outcome = outcome
        self.index = 0
        old = ctx.state.serving
        self.new_fps = old.fps * outcome.fps_factor
        record = ctx.state.record
        assert record is not None
        self.record = record
        record.extra.update(
            manifest_sha256=signed.sha256,
            key_id=signed.key_id,
            payload=self.manifest.payload.kind,
            baseline_fps=round(old.fps, 2),
            previous={"version": old.version, "bundle_dir": None, "source": "sim"},
        )

    def start(self) -> None:
        fail = self.outcome.fail
        if fail is not None and fail[0] == "verified":
            self._fail(fail)
            return
        self.ctx.sched.soon(self.step, self.ctx.cfg.step_s)

    def step(self) -> None:
        ctx, fail = self.ctx, self.outcome.fail
        if ctx.state.stopped or ctx.state.record is not self.record:
            return
        state = self.STEPS[self.index]
        if state == "validating":
            self._validated(gate_passed=fail is None or fail[0] != "validating")
        if state == "active":
            m = self.manifest
            ctx.state.serving = Serving(m.version, self.new_fps, previous=ctx.state.serving)
        ctx.transition(state)
        if fail is not None and state == fail[0]:
            self._fail(fail)
        elif state == "active":
            ctx.state.busy = False
        else:
            self.index += 1
            ctx.sched.soon(self.step, ctx.cfg.step_s)

    def _validated(self, *, gate_passed: bool) -> None:
        m, fps = self.manifest, round(self.new_fps, 2)
        drop = self.outcome.task_drop if gate_passed else max(self.outcome.task_drop, 0.2)
        self.record.extra.update(
            validated_fps=fps,
            artifact={
                "engine_sha256": engine_hash(self.ctx.device, m.name, m.version),
                "validated_fps": fps,
                "precision": "int8",
                "cache_hit": False,
                "gate": {"passed": gate_passed, "task_drop": drop},
            },
        )

    def _fail(self, fail: FailMode) -> None:
        _, terminal, reason = fail
        self.ctx.transition(terminal, reason, f"simulated failure ({reason})")
        self.ctx.state.busy = False
