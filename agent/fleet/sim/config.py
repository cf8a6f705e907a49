"""What every simulated device of a fleet shares (:class:`SimConfig`), and the OTA paths a
simulated update can take."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent.config.base import NAME_PATTERN
from agent.config.broker import MqttConfig
from agent.core.errors import EdgeAgentError, OtaReason
from agent.ota.states import TERMINAL as DEVICE_TERMINAL
from agent.ota.states import UNSUCCESSFUL, UpdateState

__all__ = [
    "FAIL_MODES",
    "MAX_SESSIONS_PER_PROCESS",
    "NAN_MODE",
    "SUCCESS_PATH",
    "TERMINAL",
    "FailMode",
    "SimConfig",
]

SUCCESS_PATH = tuple(s.value for s in UpdateState if s not in UNSUCCESSFUL)
"""The states of a successful update, in order (the device updater's own)."""

TERMINAL = frozenset(s.value for s in DEVICE_TERMINAL)
"""The states an update record ends in."""

FailMode = tuple[str, str, str]
"""(last state reached, terminal state, reason) of a simulated failure."""

NAN_MODE: FailMode = ("probation", "rolled_back", OtaReason.PROBATION_NAN.value)
"""The outcome of the updates drawn by ``nan_rate``: probation saw NaN outputs."""

FAIL_MODES: tuple[FailMode, ...] = (
    ("verified", "rejected", OtaReason.INCOMPATIBLE.value),
    ("building", "failed", OtaReason.BUILD_FAILED.value),
    ("validating", "failed", OtaReason.GOLDEN_MISMATCH.value),
    ("probation", "rolled_back", OtaReason.PROBATION_CRASH.value),
    NAN_MODE,
    ("probation", "rolled_back", OtaReason.PROBATION_SLOW.value),
)
"""The outcomes of the updates drawn by ``fail_rate``, drawn uniformly."""

_NAME = re.compile(NAME_PATTERN)

MAX_SESSIONS_PER_PROCESS = 300
"""paho's network loop waits with ``select()``, which cannot watch a descriptor numbered 1024
or more, and every session holds three (its socket and a wake-up pair): past about 340
sessions a process's new ones fail and retry forever. Larger fleets run in several processes
(:mod:`agent.fleet.sim.shards`)."""


def _usage(message: str, fix: str) -> EdgeAgentError:
    return EdgeAgentError(f"simulated fleet: {message}", fix=fix)


@dataclass(frozen=True)
class SimConfig:
    """What every simulated device of a fleet shares.

    Device ``i`` is ``<prefix>-<i:04d>`` and belongs to ``groups[i % len(groups)]`` (none when
    ``groups`` is empty). Of the updates a device accepts, ``nan_rate`` roll back with
    ``probation_nan`` and ``fail_rate`` end as one of ``fail_modes`` (one draw: the two rates
    add up to at most 1); of the successful ones, ``slow_rate`` serve the new model at
    ``slow_factor`` × the previous fps and ``bad_gate_rate`` report a validation gate that
    passed with ``task_drop`` = ``bad_gate_drop`` (what the controller's ``--max-metric-drop``
    must catch).
    """

    mqtt_url: str
    trust_dir: Path
    devices: int = 10
    first_index: int = 0
    """Index of the first device (a shard of a larger fleet starts further on)."""
    fleet: str = "sim"
    prefix: str = "sim"
    groups: tuple[str, ...] = ()
    model: str = "shapes-cls"
    version: int = 1
    fps: float = 30.0
    interval_s: float = 5.0
    step_s: float = 0.05
    """Time a simulated update spends in each state (probation included)."""
    fail_rate: float = 0.0
    nan_rate: float = 0.0
    slow_rate: float = 0.0
    slow_factor: float = 0.5
    bad_gate_rate: float = 0.0
    bad_gate_drop: float = 0.2
    fail_modes: tuple[FailMode, ...] = FAIL_MODES
    seed: int | None = None
    keepalive_s: int = 30
    protocol: str = "auto"

    def __post_init__(self) -> None:
        if self.devices > MAX_SESSIONS_PER_PROCESS:
            raise _usage(
                f"{self.devices} devices in one process; at most {MAX_SESSIONS_PER_PROCESS}",
                "run `edge-agent fleet simulate`, which splits larger fleets into processes",
            )
        if (
            self.devices < 1
            or self.first_index < 0
            or self.interval_s <= 0
            or self.step_s < 0
            or self.fps <= 0
        ):
            raise _usage(
                "devices, interval, step or fps out of range",
                "use --devices >= 1, --interval > 0, --step >= 0, --fps > 0",
            )
        self._check_rates()
        for name in (self.fleet, self.model, self.device_id(self.first_index), *self.groups):
            if not _NAME.match(name):
                raise _usage(
                    f"{name!r} is not a valid fleet, model, device or group name",
                    f"names match {NAME_PATTERN}",
                )
        if not self.fail_modes:
            raise _usage("no fail modes", "give at least one (state, terminal, reason)")

    def _check_rates(self) -> None:
        rates = {
            "fail_rate": self.fail_rate,
            "nan_rate": self.nan_rate,
            "slow_rate": self.slow_rate,
            "bad_gate_rate": self.bad_gate_rate,
        }
        for name, value in rates.items():
            if not 0.0 <= value <= 1.0:
                raise _usage(f"{name} {value} is not between 0 and 1", "give a share in [0, 1]")
        if self.fail_rate + self.nan_rate > 1.0:
            raise _usage("fail_rate + nan_rate is over 1", "lower one of them")
        if self.slow_factor <= 0:
            raise _usage(f"slow_factor {self.slow_factor} is not positive", "use e.g. 0.5")

    @property
    def indices(self) -> range:
        """The indices of this config's devices."""
        return range(self.first_index, self.first_index + self.devices)

    def device_id(self, index: int) -> str:
        return f"{self.prefix}-{index:04d}"

    def group_of(self, index: int) -> str | None:
        return self.groups[index % len(self.groups)] if self.groups else None

    def mqtt(self, client_id: str) -> MqttConfig:
        return MqttConfig.model_validate(
            {
                "enabled": True,
                "url": self.mqtt_url,
                "client_id": client_id,
                "keepalive_s": self.keepalive_s,
                "protocol": self.protocol,
            }
        )
