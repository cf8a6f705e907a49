"""Whether a DLA build is possible: a pure function of the TensorRT version and the board.

DLA support on Jetson is a property of the TensorRT *release* and the *platform*, not of the
Python API: ``DeviceType.DLA``, ``IBuilderConfig.default_device_type``/``DLA_core``,
``BuilderFlag.GPU_FALLBACK``, ``Builder.num_DLA_cores`` and ``Runtime.DLA_core`` are bound in every
release from 10.3 to 11.x (``python/src/infer/pyCore.cpp`` of github.com/NVIDIA/TensorRT at tags
v10.3.0, v10.13.3, v10.16 and v11.1), including those with no DLA on Jetson. So this is where the
backend reads ``tensorrt.__version__``. The rules, from NVIDIA's documents:

* TensorRT ≤ 10.7: DLA on the Jetson boards that have it (Xavier, Orin NX, AGX Orin).
  "TensorRT 10.7 was the last 10.x release that supported DLA" (TensorRT 11.4.1, "Working with
  DLA", docs.nvidia.com/deeplearning/tensorrt/11.4.1/inference-library/work-with-dla.html).
* TensorRT 10.8 … 10.x (JetPack 7.0/7.1 ship 10.13, JetPack 7.2 ships 10.16): no DLA on Jetson.
  Same page; and the 10.16.1 release notes, "JetPack support for Orin iGPUs": "Orin DLA is not
  supported at this time, but support is planned for a future release".
* TensorRT 11.0 … 11.4.0: no DLA on Jetson. "DLA was unavailable in TensorRT 11.0 through 11.3
  [...] TensorRT 11.4.0 supported DLA only on Windows on ARM" (same page).
* TensorRT ≥ 11.4.1: DLA on Jetson AGX Orin only, under JetPack 7.2.2 or later. "TensorRT 11.4.1
  supports DLA on NVIDIA Jetson AGX Orin when using NVIDIA JetPack 7.2.2 or later [...] DLA is not
  supported on Jetson Thor" (TensorRT 11.4.1 release notes, Key Features). Later releases are
  held to the same rule until NVIDIA documents another.
* Boards: Jetson Thor has no DLA ("Not supported: NVIDIA Jetson Thor, which has no DLA", same
  page); Orin Nano has none (its profiles say ``identity.dla_cores: 0``).

Where the board is not known (a request built without one), only the TensorRT rule is applied;
where the JetPack is not known (no L4T release detected) or is a 7.2.x the L4T table cannot
place exactly, the 11.4.1 rule trusts the installed TensorRT (NVIDIA ships 11.4.1 on JetPack
7.2.2+ only) and says so in the decision; JetPack 7.1 or older is refused. The build
then still checks ``Builder.num_DLA_cores`` (:func:`agent.backends.tensorrt.build`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agent.backends.base import TargetBoard

__all__ = ["DlaDecision", "decide_dla", "version_tuple"]

#: families whose board has no DLA at all, with the reason shown to the user
_NO_DLA_FAMILIES = {
    "agx-thor": "Jetson Thor has no DLA (TensorRT 11.4.1 'Working with DLA')",
    "orin-nano": "Jetson Orin Nano has no DLA",
    "cpu": "a host without a Jetson SoC has no DLA",
}
_LAST_10X_WITH_DLA = (10, 7)
_FIRST_11X_WITH_DLA = (11, 4, 1)
_MIN_JETPACK_11X_DLA = (7, 2, 2)
_DLA_11X_FAMILY = "agx-orin"
_UPGRADE = "or, on Jetson AGX Orin, upgrade to JetPack 7.2.2 or later with TensorRT 11.4.1"
_DISABLE = "set build.dla.enabled: false in the device profile (the GPU builds the engine)"


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """``"11.4.1.5"`` → ``(11, 4, 1, 5)``, ``"7.2"`` → ``(7, 2)``; None where it does not start
    with a number."""
    m = re.match(r"^\s*(\d+(?:\.\d+)*)", text or "")
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


def _pad(version: tuple[int, ...], size: int = 3) -> tuple[int, ...]:
    return (version + (0,) * size)[:size]


@dataclass(frozen=True)
class DlaDecision:
    """The answer for one build: ``requested`` (a DLA core was asked for), ``allowed``, why, and
    the fix when it is refused."""

    requested: bool
    allowed: bool
    reason: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "allowed": self.allowed,
            "reason": self.reason,
            "fix": self.fix,
        }


def _board_rule(board: TargetBoard, core: int) -> DlaDecision | None:
    """A refusal from the board alone (no DLA, or no such core); None when the board has it."""
    where = f"{board.family} (profile {board.profile})" if board.profile else board.family
    no_dla = _NO_DLA_FAMILIES.get(board.family)
    if no_dla is not None or board.dla_cores == 0:
        why = no_dla or f"the board has no DLA (identity.dla_cores is {board.dla_cores})"
        return DlaDecision(True, False, f"DLA requested on {where}, but {why}", _DISABLE)
    if core >= board.dla_cores:
        return DlaDecision(
            True,
            False,
            f"DLA core {core} requested on {where}, which has {board.dla_cores} DLA core(s)",
            f"set build.dla.core below {board.dla_cores}, or {_DISABLE}",
        )
    return None


def _trt_11_rule(trt: str, board: TargetBoard | None) -> DlaDecision:
    """TensorRT ≥ 11.4.1: AGX Orin on JetPack 7.2.2 or later."""
    if board is None:
        return DlaDecision(
            True,
            True,
            f"TensorRT {trt} has DLA on Jetson AGX Orin with JetPack 7.2.2+ only; the board is "
            "not known here, so the builder's DLA core count decides",
        )
    if board.family != _DLA_11X_FAMILY:
        return DlaDecision(
            True,
            False,
            f"TensorRT {trt} supports DLA on Jetson AGX Orin only, not on {board.family}",
            f"{_DISABLE}; DLA on {board.family} needs JetPack 6 with TensorRT 10.7 or older",
        )
    jetpack = version_tuple(board.jetpack)
    if jetpack is None:
        return DlaDecision(
            True,
            True,
            f"TensorRT {trt} on AGX Orin: DLA supported with JetPack 7.2.2 or later (JetPack not "
            "detected; NVIDIA supports this TensorRT only there)",
        )
    # Compared on major.minor: NVIDIA ships 11.4.1 for AGX Orin on JetPack 7.2.2+ only, and the
    # L4T table cannot place every 7.2.x patch release (an unknown 39.2.x reads as the newest
    # known 7.2.x below it), so an installed 11.4.1 on 7.2.x is taken as 7.2.2+; the builder's
    # DLA core count is checked at build time anyway.
    if _pad(jetpack, 2) < _MIN_JETPACK_11X_DLA[:2]:
        return DlaDecision(
            True,
            False,
            f"TensorRT {trt} supports DLA on AGX Orin only with JetPack 7.2.2 or later; this "
            f"board runs JetPack {board.jetpack}",
            f"upgrade to JetPack 7.2.2 or later, or {_DISABLE}",
        )
    return DlaDecision(
        True, True, f"TensorRT {trt} on AGX Orin with JetPack {board.jetpack}: DLA supported"
    )


def _trt_rule(trt: str, board: TargetBoard | None) -> DlaDecision:
    """The TensorRT release's rule (the board already has the core)."""
    version = version_tuple(trt)
    if version is None:
        return DlaDecision(
            True,
            True,
            f"TensorRT version '{trt}' is not a release number; DLA support is not checked "
            "against it (the builder's DLA core count decides)",
        )
    if _pad(version, 2) <= _LAST_10X_WITH_DLA:
        return DlaDecision(True, True, f"TensorRT {trt} (10.7 or older): DLA supported on Jetson")
    if _pad(version) >= _FIRST_11X_WITH_DLA:
        return _trt_11_rule(trt, board)
    span = "10.8 through 10.x" if version[0] == 10 else "11.0 through 11.4.0"
    on = f", so none on this {board.family}" if board is not None else ""
    return DlaDecision(
        True,
        False,
        f"TensorRT {trt} has no DLA support on Jetson{on}: TensorRT {span} have none (10.7 was "
        "the last 10.x with DLA; 11.4.1 restores it on AGX Orin only)",
        f"{_DISABLE}, {_UPGRADE}",
    )


def decide_dla(trt_version: str, board: TargetBoard | None, core: int | None) -> DlaDecision:
    """May a build use DLA core ``core`` (None: no DLA asked) with TensorRT ``trt_version`` on
    ``board`` (None: not known)? See the module docstring for the rules and their sources."""
    if core is None:
        return DlaDecision(False, False, "DLA not requested (build.dla.enabled: false)")
    if core < 0:
        return DlaDecision(True, False, f"DLA core {core} is negative", "set build.dla.core to 0")
    if board is not None:
        refused = _board_rule(board, core)
        if refused is not None:
            return refused
    return _trt_rule(trt_version, board)
