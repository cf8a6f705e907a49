"""``edge-agent profile list | show NAME | detect``."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import yaml

from agent.cli.common import format_table
from agent.config.device import DeviceProfile
from agent.config.profiles.detect import detect
from agent.config.profiles.store import ProfileStore


def _store(args: argparse.Namespace) -> ProfileStore:
    return ProfileStore(Path(args.profiles_dir) if args.profiles_dir else None)


def _modes(profile: DeviceProfile) -> str:
    """``15W,25W`` per nvpmodel mode; ``70W budget`` for a profile that lists no modes but caps
    the board (agx-thor-t4000)."""
    modes = ",".join(f"{m.budget_w:g}W" for m in profile.identity.power_modes)
    budget = profile.monitor.power_budget_w
    if not modes and budget is not None:
        return f"{budget:g}W budget"
    return modes or "-"


def _cmd_list(args: argparse.Namespace) -> int:
    profiles = _store(args).all()
    if args.json:
        print(json.dumps([p.model_dump(mode="json") for p in profiles], indent=2))
        return 0
    rows: list[list[str]] = []
    for p in profiles:
        ident, build, shapes = p.identity, p.build, p.shapes
        rows.append(
            [
                p.name,
                ident.family,
                ",".join(ident.jetpack) or "-",
                f"{ident.memory_mib // 1024} GiB" if ident.memory_mib >= 1024 else "<1 GiB",
                ident.gpu_compute_capability or "-",
                str(ident.dla_cores),
                build.backend,
                str(build.workspace_mib),
                str(p.runtime.streams),
                f"{shapes.batch.min}-{shapes.batch.max}",
                f"{shapes.height.max}x{shapes.width.max}",
                _modes(p),
            ]
        )
    print(
        format_table(
            [
                "NAME",
                "FAMILY",
                "JETPACK",
                "MEMORY",
                "SM",
                "DLA",
                "BACKEND",
                "WORKSPACE_MIB",
                "STREAMS",
                "BATCH",
                "MAX_HxW",
                "POWER_MODES",
            ],
            rows,
        )
    )
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    profile = _store(args).load(args.name)
    data = profile.model_dump(mode="json")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    result = detect(Path(args.root), _store(args))
    board = result.board
    if args.json:
        data = {
            "profile": result.profile,
            "reason": result.reason,
            "board": {**asdict(board), "soc": board.soc, "jetpack": board.jetpack},
        }
        print(json.dumps(data, indent=2, default=str))
    else:
        print(f"profile: {result.profile}")
        print(f"reason:  {result.reason}")
        if board.l4t_release is not None:
            print(f"jetpack: {board.jetpack or 'unknown'} (L4T R{board.l4t_release})")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("profile", help="list, show and detect device profiles")
    parser.add_argument(
        "--profiles-dir", default=None, help="directory of profile YAMLs (default: bundled)"
    )
    psub = parser.add_subparsers(dest="profile_command", metavar="ACTION")
    psub.required = True

    p_list = psub.add_parser("list", help="list the device profiles")
    p_list.add_argument("--json", action="store_true")
    p_list.set_defaults(handler=_cmd_list)

    p_show = psub.add_parser("show", help="print one profile, fully resolved")
    p_show.add_argument("name")
    p_show.add_argument("--json", action="store_true")
    p_show.set_defaults(handler=_cmd_show)

    p_detect = psub.add_parser("detect", help="detect the board and pick its profile")
    p_detect.add_argument(
        "--root", default="/", help="file-system root to read /proc and /etc from (tests)"
    )
    p_detect.add_argument("--json", action="store_true")
    p_detect.set_defaults(handler=_cmd_detect)
