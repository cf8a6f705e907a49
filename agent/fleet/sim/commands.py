"""Commands a simulated device answers on ``.../cmd/<name>``: ``ping`` and ``rollback-model``
(other names get ``unknown_command``), one response each on ``.../cmd/response``.

A request is parsed within bounds; one without a usable ``id`` gets no response (no one could
match it). A repeated ``id`` of ``rollback-model`` gets the stored response and is not executed
again (the last :data:`REMEMBERED` ids), as on a real device.
"""

from __future__ import annotations

import re
import time
from typing import Any

from agent.core.errors import OtaReason
from agent.core.jsonlimits import JsonLimits, JsonRejected, loads_bounded, sanitize_text
from agent.fleet.sim.context import DeviceContext
from agent.fleet.sim.record import SimRecord

__all__ = ["CMD_LIMITS", "REMEMBERED", "handle_command", "rollback"]

CMD_LIMITS = JsonLimits(max_bytes=64 * 1024, max_depth=16, max_items=2_000)
REMEMBERED = 256
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


def _request(payload: bytes) -> dict[str, Any] | None:
    try:
        req: Any = loads_bounded(payload, CMD_LIMITS)
    except JsonRejected:
        return None
    if not isinstance(req, dict):
        return None
    rid = req.get("id")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    if not isinstance(rid, str) or not _REQUEST_ID.match(rid):
        return None
    return req  # pyright: ignore[reportUnknownVariableType]


def _expired(req: dict[str, Any]) -> str | None:
    """Why the request may not run (``bad_request``/``expired``), or None."""
    expires = req.get("expires")
    ts, ttl = req.get("ts"), req.get("ttl_s", 0)
    if expires is None and isinstance(ts, (int, float)) and isinstance(ttl, (int, float)):
        expires = float(ts) + float(ttl)
    if not isinstance(expires, (int, float)) or isinstance(expires, bool):
        return "bad_request"
    return "expired" if time.time() > expires else None


def handle_command(ctx: DeviceContext, name: str, payload: bytes) -> None:
    """One request (scheduler thread)."""
    if ctx.state.stopped:
        return
    req = _request(payload)
    if req is None:
        return  # unreadable or no usable id: no response
    rid: str = req["id"]
    wire = ctx.wire
    why = _expired(req)
    if why == "bad_request":
        wire.respond(rid, name, code=why, error="needs expires or ts + ttl_s")
    elif why == "expired":
        wire.respond(rid, name, code=why, error="request expired")
    elif name == "ping":
        wire.respond(rid, name, result=_pong(ctx))
    elif name == "rollback-model":
        _remembered_rollback(ctx, rid, name)
    else:
        text = sanitize_text(name, max_len=64)
        wire.respond(rid, name, code="unknown_command", error=f"unknown command {text}")


def _pong(ctx: DeviceContext) -> dict[str, Any]:
    return {
        "pong": True,
        "ts": round(time.time(), 3),
        "boot": ctx.wire.boot,
        "uptime_s": round(time.monotonic() - ctx.state.started, 1),
        "spooled": 0,
    }


def _remembered_rollback(ctx: DeviceContext, rid: str, name: str) -> None:
    answered = ctx.state.answered
    if rid not in answered:
        answered[rid] = rollback(ctx)
        while len(answered) > REMEMBERED:
            answered.popitem(last=False)
    ctx.wire.respond(rid, name, result=answered[rid])


def rollback(ctx: DeviceContext) -> dict[str, Any]:
    """``rollback-model``: serve the previous version again (``rolled_back`` with
    ``rollback_requested``), or ``failed``/``no_rollback_target``. An update under way is
    abandoned: its old model still serves (a simulated device swaps at ``active``) and the
    record says it is left. Returns the final record."""
    state, model = ctx.state, ctx.cfg.model
    current = state.serving
    walking = state.record if state.busy and state.record is not None else None
    if walking is not None and walking.op == "update" and walking.version is not None:
        leaving, target = walking.version, current
    else:
        leaving, target = current.version, current.previous
    state.busy = False
    ctx.begin(SimRecord(op="rollback", model=model, version=leaving, state="building"))
    if target is None:
        ctx.transition(
            "failed",
            OtaReason.NO_ROLLBACK_TARGET.value,
            f"no earlier version of {model} is kept",
        )
    else:
        record = state.record
        assert record is not None
        record.extra["previous"] = {"version": target.version, "bundle_dir": None, "source": "sim"}
        ctx.transition("activating")
        state.serving = target
        ctx.transition(
            "rolled_back",
            OtaReason.ROLLBACK_REQUESTED.value,
            f"rolled back from v{leaving} to v{target.version}",
        )
    assert state.record is not None
    return state.record.as_dict()
