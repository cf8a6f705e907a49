"""Boards and JetPack releases the agent refuses, with the sentence that tells their owner why.

Edge Agent needs Python >= 3.10 and TensorRT's Python bindings for that interpreter. JetPack 6
(L4T R36, Ubuntu 22.04) is the first JetPack that ships both: JetPack 5 (L4T R34/R35, Ubuntu
20.04) ships Python 3.8 and TensorRT 8.5, whose bindings are built for 3.8 only, and JetPack 4
(L4T R32, Ubuntu 18.04) ships Python 3.6. Jetson Xavier, TX2 and Nano cannot run JetPack 6 or
later (JetPack 6 and 7.2 support Orin; JetPack 7 Thor), so there is no supported release for them.
The decision and its reasons: docs/jetson-devices.md, "Supported boards and JetPack releases".
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config.profiles.board import BoardInfo
from agent.core.errors import DetectionError

MIN_JETPACK_MAJOR = 6
"""The oldest JetPack major the agent runs on."""

DOC = "docs/jetson-devices.md, 'Supported boards and JetPack releases'"


@dataclass(frozen=True)
class _Legacy:
    name: str
    last_jetpack: str


#: SoCs (device-tree ``compatible``; mainline Linux
#: Documentation/devicetree/bindings/arm/tegra.yaml) that no JetPack >= 6 supports, with the
#: last JetPack NVIDIA released for them (JetPack archive, as jetson-stats' ``NVIDIA_JETPACK``
#: lists it: R35.6.4 = 5.1.6, R32.7.6 = 4.6.6).
_LEGACY_SOCS: dict[str, _Legacy] = {
    "tegra194": _Legacy("Jetson Xavier (Xavier NX, AGX Xavier)", "5.1.6"),
    "tegra186": _Legacy("Jetson TX2", "4.6.6"),
    "tegra210": _Legacy("Jetson Nano / TX1", "4.6.6"),
}

#: What each unsupported JetPack major ships, and so why the agent cannot run on it.
_STACKS: dict[int, str] = {
    5: "Python 3.8 and TensorRT 8.5, whose Python bindings exist only for Python 3.8",
    4: "Python 3.6 and TensorRT 8.x, whose Python bindings exist only for Python 3.6",
}

#: L4T major → JetPack major (R32 = 4, R34/R35 = 5, R36 = 6, R38/R39 = 7).
_JETPACK_MAJOR_FOR_L4T: dict[int, int] = {32: 4, 34: 5, 35: 5, 36: 6, 38: 7, 39: 7}

_UPGRADE = (
    "reflash the board with JetPack 6.2 (L4T R36.4, Python 3.10) or JetPack 7.2 (L4T R39.2, "
    "Python 3.12) using SDK Manager or the Jetson Linux flashing tools, then install edge-agent "
    f"again; see {DOC}"
)


def jetpack_major(board: BoardInfo) -> int | None:
    """The JetPack major of the board's L4T release; ``None`` when unknown."""
    if board.l4t_release is None:
        return None
    return _JETPACK_MAJOR_FOR_L4T.get(int(board.l4t_release.split(".", 1)[0]))


def describe(board: BoardInfo) -> str:
    """``'NVIDIA Jetson Xavier NX Developer Kit' (module p3668-0001, nvidia,tegra194) on JetPack
    5.1.2 (L4T R35.4.1)``: what was found, for messages."""
    parts = [f"'{board.model}'" if board.model else "a board with no device-tree model"]
    details = [f"module {board.module_part_number}"] if board.module_part_number else []
    if board.soc:
        details.append(f"nvidia,{board.soc}")
    if details:
        parts.append(f"({', '.join(details)})")
    if board.l4t_release is not None:
        jp = board.jetpack
        release = f"L4T R{board.l4t_release}"
        parts.append(f"on JetPack {jp} ({release})" if jp else f"on {release}")
    return " ".join(parts)


def refuse_unsupported(board: BoardInfo) -> None:
    """Raise :class:`DetectionError` for a board or JetPack the agent cannot run on."""
    legacy = _LEGACY_SOCS.get(board.soc or "")
    major = jetpack_major(board)
    if legacy is not None:
        stack = _STACKS.get(major or 0)
        why = f"; its JetPack ships {stack}" if stack else ""
        raise DetectionError(
            f"{describe(board)}: {legacy.name} is not supported. It cannot run JetPack 6 or "
            f"later (its last JetPack is {legacy.last_jetpack}){why}, and edge-agent needs "
            "Python >= 3.10 with TensorRT bindings for it, which JetPack 6 is the first to ship",
            fix="no edge-agent release supports this board: run the agent on a Jetson Orin "
            "(JetPack 6.2 or 7.2) or Jetson Thor (JetPack 7), or on a CPU host with "
            f"'profile: cpu'; see {DOC}",
        )
    if major is not None and major < MIN_JETPACK_MAJOR:
        found = board.jetpack or f"{major}.x"
        raise DetectionError(
            f"{describe(board)}: JetPack {found} is not supported. It ships "
            f"{_STACKS.get(major, 'a Python older than 3.10')}; edge-agent needs Python >= 3.10 "
            "with TensorRT bindings for it (JetPack 6 or later)",
            fix=_UPGRADE,
        )
