"""Picking the device profile that fits the board we run on.

The model string picks the family; when several profiles share it (Orin Nano 4 GB / 8 GB, Orin NX
8 GB / 16 GB, Thor T5000 / T4000), the module part number in ``compatible`` decides, then
``MemTotal``. A board that matches nothing falls back to the ``cpu`` profile. A board or JetPack
the agent cannot run on (JetPack 5 and older, Xavier) is refused with a
:class:`~agent.core.errors.DetectionError` that says what was found and what to do
(:mod:`agent.config.profiles.support`). The reason names the JetPack the release file shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from agent.config.device import DeviceProfile
from agent.config.profiles.board import MODEL_FILE, BoardInfo, read_board
from agent.config.profiles.store import CPU_PROFILE, ProfileStore
from agent.config.profiles.support import jetpack_major, refuse_unsupported
from agent.core.errors import DetectionError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    """The profile chosen for a board, and a sentence saying why."""

    profile: str
    reason: str
    board: BoardInfo


def _closest_memory(
    candidates: list[DeviceProfile], memory_mib: int
) -> tuple[DeviceProfile, str] | None:
    ranked = sorted(candidates, key=lambda p: abs(p.identity.memory_mib - memory_mib))
    best = ranked[0]
    if len(ranked) > 1 and abs(ranked[1].identity.memory_mib - memory_mib) == abs(
        best.identity.memory_mib - memory_mib
    ):
        return None
    return best, f"MemTotal {memory_mib} MiB is closest to {best.identity.memory_mib} MiB"


def _narrow(candidates: list[DeviceProfile], board: BoardInfo) -> tuple[DeviceProfile, str] | None:
    """Pick one of several profiles: module part number first, then MemTotal."""
    part = board.module_part_number
    if part is not None:
        by_part = [p for p in candidates if part in p.identity.module_part_numbers]
        if len(by_part) == 1:
            return by_part[0], f"module part number {part} (from device-tree compatible)"
        if by_part:
            candidates = by_part
    if board.memory_mib is not None:
        return _closest_memory(candidates, board.memory_mib)
    return None


def _single_match(
    profile: DeviceProfile, profiles: list[DeviceProfile], board: BoardInfo, how: str
) -> Detection:
    """One profile has the model string; the module part number may still name another (a
    module variant that prints its sibling's model string decides by its part number when a
    profile lists it)."""
    part = board.module_part_number
    if part is None or part in profile.identity.module_part_numbers:
        return Detection(profile.name, f"{how} matches profile {profile.name}", board)
    by_part = [p for p in profiles if part in p.identity.module_part_numbers]
    if len(by_part) == 1:
        chosen = by_part[0]
        why = f"{how} matches {profile.name}, but module part number {part} is {chosen.name}'s"
        return Detection(chosen.name, why, board)
    log.warning(
        "module %s is listed by no device profile; using %s (its limits are for %s)",
        part,
        profile.name,
        ", ".join(profile.identity.module_part_numbers) or "its own modules",
    )
    why = (
        f"{how} matches profile {profile.name}; no profile lists module {part}, so "
        f"{profile.name}'s limits apply (add a profile for {part} to use all of the board)"
    )
    return Detection(profile.name, why, board)


def _jetpack_note(profile: DeviceProfile | None, board: BoardInfo) -> str:
    """``; L4T R36.4.3 = JetPack 6.2`` (plus a warning when the profile does not list it)."""
    if board.l4t_release is None:
        return ""
    note = f"; L4T R{board.l4t_release} = JetPack {board.jetpack or 'unknown'}"
    major = jetpack_major(board)
    if profile is None or major is None or not profile.identity.jetpack:
        return note
    if str(major) in profile.identity.jetpack:
        return note
    listed = ", ".join(profile.identity.jetpack)
    log.warning("profile %s lists JetPack %s, the board runs %s", profile.name, listed, major)
    return f"{note}, which {profile.name} was not written for (it lists JetPack {listed})"


def _without_model(root: Path, board: BoardInfo, profiles: list[DeviceProfile]) -> Detection:
    where = root / MODEL_FILE
    part = board.module_part_number
    if board.is_tegra and part is not None:
        by_part = [p for p in profiles if part in p.identity.module_part_numbers]
        if len(by_part) == 1:
            why = f"no usable {where}, but device-tree compatible names module {part}"
            return Detection(by_part[0].name, why, board)
    trouble = next((n for n in board.notes if str(where) in n), None)
    if trouble is not None:
        return _fallback(f"{trouble}; cannot identify the board", board)
    return _fallback(f"no {where} under {root}; not a Jetson", board)


def _fallback(why: str, board: BoardInfo) -> Detection:
    return Detection(CPU_PROFILE, f"{why}: falling back to {CPU_PROFILE}", board)


def _by_model(board: BoardInfo, profiles: list[DeviceProfile]) -> Detection:
    model = board.model
    matched = [p for p in profiles if model in p.identity.device_tree_models]
    how = f"model '{model}'"
    if not matched and board.module_part_number is not None:
        # A custom carrier board renames the model but keeps NVIDIA's module compatible string.
        part = board.module_part_number
        matched = [p for p in profiles if part in p.identity.module_part_numbers]
        how = f"module part number {part} (model '{model}' is unknown)"
    if not matched:
        kind = "a Jetson board" if board.is_tegra else "board"
        return _fallback(f"{kind} model '{model}' matches no device profile", board)
    if len(matched) == 1:
        return _single_match(matched[0], profiles, board, how)
    names = ", ".join(p.name for p in matched)
    narrowed = _narrow(matched, board)
    if narrowed is None:
        return _fallback(
            f"{how} fits {names} and neither the module part number nor MemTotal tells them "
            "apart; set 'profile:' in agent.yaml",
            board,
        )
    profile, why = narrowed
    return Detection(profile.name, f"{how} fits {names}; {why} selects {profile.name}", board)


def detect(root: Path = Path("/"), store: ProfileStore | None = None) -> Detection:
    """Choose the device profile for the board under ``root``; falls back to ``cpu``.

    Raises :class:`DetectionError` for a board the agent cannot run on (JetPack 5 or older,
    Xavier and older SoCs), naming what was found and what to do.
    """
    if not root.is_dir():
        raise DetectionError(
            f"cannot detect the board: {root} is not a directory",
            fix="pass the filesystem root of the device (normally /)",
        )
    store = store if store is not None else ProfileStore()
    if CPU_PROFILE not in store.names():
        raise DetectionError(
            f"no '{CPU_PROFILE}' profile in {store.directory} to fall back to",
            fix=f"restore {CPU_PROFILE}.yaml in the device_profiles directory",
        )
    board = read_board(root)
    refuse_unsupported(board)
    profiles = [p for p in store.all() if p.identity.family != "cpu"]
    if board.model is None:
        found = _without_model(root, board, profiles)
    else:
        found = _by_model(board, profiles)
    chosen = next((p for p in profiles if p.name == found.profile), None)
    note = _jetpack_note(chosen, board)
    return Detection(found.profile, found.reason + note, board) if note else found
