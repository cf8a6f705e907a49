"""The built-in commands: ``ping``, ``get-config``, ``reload``, ``set-profile``, ``snapshot``,
``calib-collect`` and ``rollback-model``. Each is a :class:`Handler`: its argument model and a
function of the validated arguments returning JSON-able data. The daemon's side of each action
is the :class:`~agent.comms.ports.Control` port.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.comms.commands.requests import (
    CalibCollectArgs,
    CommandArgs,
    CommandFailed,
    NoArgs,
    RollbackArgs,
    SetProfileArgs,
    SnapshotArgs,
)
from agent.comms.ports import Control
from agent.core.redact import redact_config
from agent.vision.jpeg import encode_jpeg_within

FAST = "fast"
"""The lane of cheap read-only commands (answered while a long one runs)."""
LONG = "long"
"""The lane of commands that take seconds or change state (one at a time)."""


@dataclass(frozen=True)
class Handler:
    """One command: its argument model and ``run(validated_args)`` → JSON-able data.

    ``lane``: :data:`FAST` or :data:`LONG`. ``remember``: store the response under the request
    id so a repeat is answered without running again (read-only commands simply run again).
    """

    args: type[CommandArgs]
    run: Callable[[Any], Any]
    lane: str = LONG
    remember: bool = True


def snapshot_jpeg(frame: Any, *, max_bytes: int, quality: int) -> tuple[bytes, int, int]:
    """JPEG of ``frame`` no larger than ``max_bytes``: lowers quality, then halves the size."""
    image = np.asarray(frame)
    if image.ndim not in (2, 3) or image.size == 0:
        raise CommandFailed(f"frame has shape {image.shape}", code="no_frame")
    jpeg = encode_jpeg_within(image, max_bytes=max_bytes, quality=quality)
    if jpeg is None:
        raise CommandFailed(
            f"cannot fit a JPEG in {max_bytes} bytes", code="too_large", fix="raise max_bytes"
        )
    return jpeg.data, jpeg.width, jpeg.height


class BuiltinHandlers:
    """The built-in commands over one :class:`Control` (None: only ``ping`` works)."""

    def __init__(
        self,
        control: Control | None,
        *,
        clock: Callable[[], float],
        max_payload_bytes: int,
        extra_info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.control = control
        self.clock = clock
        self.max_payload_bytes = max_payload_bytes
        self.extra_info = extra_info

    def table(self) -> dict[str, Handler]:
        """The name → handler table."""
        return {
            "ping": Handler(NoArgs, self.ping, FAST, remember=False),
            "get-config": Handler(NoArgs, self.get_config, FAST, remember=False),
            "reload": Handler(NoArgs, self.reload),
            "set-profile": Handler(SetProfileArgs, self.set_profile),
            "snapshot": Handler(SnapshotArgs, self.snapshot, FAST, remember=False),
            "calib-collect": Handler(CalibCollectArgs, self.calib_collect),
            "rollback-model": Handler(RollbackArgs, self.rollback_model),
        }

    def _control(self) -> Control:
        if self.control is None:
            raise CommandFailed("this agent has no control interface", code="unavailable")
        return self.control

    def ping(self, args: NoArgs) -> dict[str, Any]:
        info: dict[str, Any] = {"pong": True, "ts": round(self.clock(), 3)}
        if self.extra_info is not None:
            info.update(self.extra_info())
        return info

    def get_config(self, args: NoArgs) -> Any:
        return redact_config(self._control().config_json())

    def reload(self, args: NoArgs) -> dict[str, Any]:
        return {"summary": self._control().reload()}

    def set_profile(self, args: SetProfileArgs) -> dict[str, Any]:
        return {"summary": self._control().set_profile(args.name)}

    def calib_collect(self, args: CalibCollectArgs) -> dict[str, Any]:
        return self._control().collect_calib(args.model, args.count, args.source)

    def rollback_model(self, args: RollbackArgs) -> dict[str, Any]:
        return self._control().rollback_model(args.model)

    def snapshot(self, args: SnapshotArgs) -> dict[str, Any]:
        frame = self._control().latest_frame(args.source)
        if frame is None:
            raise CommandFailed(
                f"no frame from source {args.source or '(first)'} yet", code="no_frame"
            )
        limit = min(args.max_bytes, self.max_payload_bytes * 3 // 4 - 1024)
        jpeg, width, height = snapshot_jpeg(frame, max_bytes=max(2048, limit), quality=args.quality)
        return {
            "source": args.source,
            "width": width,
            "height": height,
            "bytes": len(jpeg),
            "jpeg_b64": base64.b64encode(jpeg).decode("ascii"),
        }
