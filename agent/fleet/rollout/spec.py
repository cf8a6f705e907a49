"""What an operator asks for when starting a rollout: :class:`RolloutSpec` (validated, frozen).

The spec is stored inside the rollout document (``model_dump(mode="json")``) and read back with
:meth:`RolloutSpec.model_validate`, so it is checked again whenever a document is loaded.
Percentages stay text (``"25%"``) and are read exactly (:class:`fractions.Fraction`), so wave
sizes never depend on float rounding. :func:`parse_spec` turns pydantic's errors into one
:class:`~agent.core.errors.EdgeAgentError` naming the field and the fix.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from agent.config.base import NAME_PATTERN, Strict, at
from agent.config.broker import check_device_id
from agent.config.fleet import RolloutDefaults
from agent.core.errors import EdgeAgentError
from agent.ota.canonical import MAX_SAFE_INT

__all__ = [
    "RolloutSpec",
    "RolloutTarget",
    "parse_percent",
    "parse_spec",
    "parse_target",
]

_DEFAULTS = RolloutDefaults()
_PERCENT = re.compile(r"^\s*(\d{1,3}(?:\.\d{1,4})?)\s*%\s*$")
_COUNT = re.compile(r"^\s*(\d{1,7})\s*$")
_DURATION = r"^\s*\d+\s*[smhd]?\s*$"
MAX_TARGET_DEVICES = 10_000


@dataclass(frozen=True)
class RolloutTarget:
    """Which devices a rollout is for: every device, one group, or listed ids (sorted)."""

    kind: Literal["all", "group", "devices"]
    group: str | None = None
    devices: tuple[str, ...] = ()


def parse_target(text: str) -> RolloutTarget:
    """``all``, ``group:NAME`` or ``devices:ID,ID`` → :class:`RolloutTarget`; ``ValueError``
    with the fix otherwise (duplicate ids are taken once)."""
    value = text.strip()
    if value == "all":
        return RolloutTarget("all")
    kind, sep, rest = value.partition(":")
    if sep and kind == "group":
        if not re.fullmatch(NAME_PATTERN, rest):
            raise ValueError(
                f"{rest!r} is not a group name: use the group exactly as the devices' "
                "agent.yaml has it (mqtt.group: lower-case letters, digits, '.', '_', '-')"
            )
        return RolloutTarget("group", group=rest)
    if sep and kind == "devices":
        ids = [part.strip() for part in rest.split(",") if part.strip()]
        if not ids:
            raise ValueError("devices: lists no device id; write devices:cam-01,cam-02")
        if len(ids) > MAX_TARGET_DEVICES:
            raise ValueError(f"more than {MAX_TARGET_DEVICES} device ids; use group:NAME or all")
        for device in ids:
            check_device_id(device)
        return RolloutTarget("devices", devices=tuple(sorted(set(ids))))
    raise ValueError(f"{text!r} is not a target: write all, group:NAME or devices:ID,ID")


def parse_percent(text: str) -> Fraction:
    """``"25%"`` → ``Fraction(25)``; ``ValueError`` unless it is a percentage in (0, 100]."""
    match = _PERCENT.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a percentage; write e.g. 25% (up to 4 decimals)")
    value = Fraction(match.group(1))
    if not 0 < value <= 100:
        raise ValueError(f"{text!r} is not above 0% and at most 100%")
    return value


class RolloutSpec(Strict):
    """A rollout request (``edge-agent fleet rollout start`` / ``POST /rollouts``)."""

    bundle: Path = Field(title="Bundle", description="Absolute path of the model bundle.")
    version: int = Field(
        ge=1, le=MAX_SAFE_INT, title="Version", description="The new model version (integer)."
    )
    target: str = Field(
        default="all",
        max_length=MAX_TARGET_DEVICES * 64,
        title="Target",
        description="all, group:NAME or devices:ID,ID.",
    )
    canary: str = Field(
        default="1",
        title="Canary",
        description="The first wave: a device count (N) or a share of the targets (P%).",
    )
    waves: list[str] = Field(
        default_factory=lambda: ["25%", "100%"],
        min_length=1,
        max_length=100,
        title="Waves",
        description="Cumulative shares of all targets after the canary, increasing, last 100%.",
    )
    rate_per_min: float = Field(
        default=60.0, gt=0, le=1e6, title="Rate", description="Most manifests published a minute."
    )
    soak_s: float = Field(
        default=60.0, ge=0, le=7 * 86400, title="Soak (s)", description="Wait after each wave."
    )
    max_failed_pct: float = Field(
        default=10.0,
        ge=0,
        le=100,
        title="Max failed %",
        description="Abort when failed + rolled back exceed this share of the started waves.",
    )
    min_fps_ratio: float | None = Field(
        default=None,
        gt=0,
        le=1,
        title="Min fps ratio",
        description="Abort when a device's fps on the new version < ratio × its fps before.",
    )
    max_nan: int = Field(
        default=0, ge=0, title="Max NaN", description="Abort above this many probation_nan."
    )
    max_metric_drop: float | None = Field(
        default=None,
        ge=0,
        title="Max task drop",
        description="Abort when a device's validation task_drop exceeds this.",
    )
    expires: str = Field(
        default=_DEFAULTS.expires,
        pattern=_DURATION,
        title="Manifest lifetime",
        description="How long the signed manifests stay valid (e.g. 24h, 7d).",
    )
    offline_after_s: float = Field(
        default=_DEFAULTS.offline_after_s,
        gt=0,
        le=7 * 86400,
        title="Offline after (s)",
        description="An offline device stops blocking its wave this long after its publish.",
    )
    probation_timeout_s: float = Field(
        default=_DEFAULTS.probation_timeout_s,
        gt=0,
        le=7 * 86400,
        title="Install timeout (s)",
        description="An online device with no final state this long after publish has failed.",
    )

    @field_validator("bundle")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{str(value)!r} is not absolute; pass the bundle's full path")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        parse_target(value)
        return value

    @field_validator("canary")
    @classmethod
    def _canary(cls, value: str) -> str:
        if "%" in value:
            parse_percent(value)
        elif _COUNT.fullmatch(value) is None or int(value) < 1:
            raise ValueError(f"{value!r} is not a canary size; write a count (e.g. 2) or 5%")
        return value

    @field_validator("waves")
    @classmethod
    def _waves(cls, value: list[str]) -> list[str]:
        shares = [parse_percent(w) for w in value]
        for before, after in itertools.pairwise(shares):
            if after <= before:
                raise ValueError("waves are cumulative and must increase, e.g. 10%,50%,100%")
        if shares[-1] != 100:
            raise ValueError("the last wave must be 100% so that every target gets the update")
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> RolloutSpec:
        if self.offline_after_s > self.probation_timeout_s:
            raise ValueError(
                at(
                    "offline_after_s",
                    "must not exceed probation_timeout_s (an offline device "
                    "would count as failed first); lower it or raise probation_timeout_s",
                )
            )
        return self

    @property
    def target_set(self) -> RolloutTarget:
        return parse_target(self.target)

    def canary_count(self, total: int) -> int:
        """Devices of the canary wave out of ``total`` (at least 1, at most ``total``)."""
        if "%" in self.canary:
            return min(total, max(1, _ceil(total * parse_percent(self.canary) / 100)))
        return min(total, int(self.canary))

    def wave_ends(self, total: int) -> list[int]:
        """Cumulative device counts at the end of each wave after the canary (last = total)."""
        return [_ceil(total * parse_percent(w) / 100) for w in self.waves]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _ceil(value: Fraction) -> int:
    return -(-value.numerator // value.denominator)


def parse_spec(data: Mapping[str, Any], defaults: RolloutDefaults | None = None) -> RolloutSpec:
    """A :class:`RolloutSpec` from request fields; the fleet's ``rollouts`` defaults fill the
    timeouts and the manifest lifetime the request leaves out. Raises
    :class:`EdgeAgentError` naming the first bad field and how to fix it."""
    fields = dict(data)
    if defaults is not None:
        for name in ("expires", "offline_after_s", "probation_timeout_s"):
            fields.setdefault(name, getattr(defaults, name))
    try:
        return RolloutSpec.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "spec"
        message = str(first["msg"]).removeprefix("Value error, ")
        if message.startswith("["):
            loc, _, message = message[1:].partition("] ")
        raise EdgeAgentError(
            f"rollout {loc}: {message}",
            fix=f"correct {loc} (see `edge-agent fleet rollout start --help`)",
        ) from exc
