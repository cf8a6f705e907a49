"""trtexec-style build options shared by ``build`` and by ``inspect``/``bench``/``infer`` when they
are given an ``.onnx`` (built on the fly): shapes, workspace, DLA core, timing cache, output.

=====================================  ==========================================
edge-agent                             trtexec
=====================================  ==========================================
``--shapes images:1x3x640x640``        ``--shapes=images:1x3x640x640``
``--min-shapes/--opt-shapes/--max-``   ``--minShapes/--optShapes/--maxShapes``
``--workspace 512`` (MiB)              ``--memPoolSize=workspace:512M``
``--dla-core 0``                       ``--useDLACore=0 --allowGPUFallback``
``--timing-cache FILE``                ``--timingCacheFile=FILE``
``--output FILE`` / ``--save-engine``  ``--saveEngine=FILE``
=====================================  ==========================================
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from agent.backends.base import InputShapes
from agent.engine.build.overrides import BuildOverrides

__all__ = ["add_override_args", "overrides_from_args", "parse_shapes"]

_DIMS = re.compile(r"^[1-9][0-9]*(x[1-9][0-9]*)*$")


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """``images:1x3x640x640[,other:1x4]`` → ``{"images": (1, 3, 640, 640), ...}`` (trtexec's
    syntax; the name may be quoted, as trtexec allows, and may itself contain ``:``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in (part.strip() for part in text.split(",")):
        name, sep, dims = item.rpartition(":")
        name = name.strip().strip("'\"")
        if not sep or not name or not _DIMS.match(dims.strip()):
            raise argparse.ArgumentTypeError(
                f"'{item}' is not NAME:DxDx... with positive dimensions "
                "(e.g. images:1x3x640x640; several inputs comma-separated)"
            )
        if name in shapes:
            raise argparse.ArgumentTypeError(f"input '{name}' is given twice")
        shapes[name] = tuple(int(d) for d in dims.strip().split("x"))
    return shapes


def _mib(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of MiB")
    return value


def _core(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def add_override_args(p: argparse.ArgumentParser) -> None:
    """The trtexec-style options; each wins over the device profile and is recorded in the
    artifact (``overrides`` in its artifact.json)."""
    g = p.add_argument_group("trtexec-style overrides (win over the device profile)")
    g.add_argument(
        "--shapes",
        type=parse_shapes,
        default=None,
        metavar="NAME:DxD..",
        help="fixed input shape(s): min = opt = max, e.g. images:1x3x640x640 (comma-separated)",
    )
    for level in ("min", "opt", "max"):
        g.add_argument(
            f"--{level}-shapes",
            type=parse_shapes,
            default=None,
            metavar="NAME:DxD..",
            help=f"{level} of the optimization profile (give all three for an input)",
        )
    g.add_argument(
        "--workspace",
        type=_mib,
        default=None,
        metavar="MIB",
        help="builder workspace in MiB (trtexec --memPoolSize=workspace:N; "
        "default: the profile's build.workspace_mib)",
    )
    g.add_argument(
        "--dla-core",
        type=_core,
        default=None,
        metavar="N",
        help="build for DLA core N with GPU fallback (TensorRT on a profile with DLA)",
    )
    g.add_argument(
        "--timing-cache",
        default=None,
        metavar="FILE",
        help="TensorRT tactic timing cache to load and update (default: one per device "
        "under the engine cache)",
    )
    g.add_argument(
        "--output",
        "--save-engine",
        dest="output",
        default=None,
        metavar="FILE",
        help="also write a copy of the engine (TensorRT plan, ONNX Runtime model) here",
    )


def _profile_shapes(args: argparse.Namespace) -> dict[str, InputShapes]:
    fixed: dict[str, tuple[int, ...]] = args.shapes or {}
    levels: list[dict[str, tuple[int, ...]]] = [
        args.min_shapes or {},
        args.opt_shapes or {},
        args.max_shapes or {},
    ]
    out = {name: InputShapes(dims, dims, dims) for name, dims in fixed.items()}
    for name in sorted(set().union(*levels)):
        if name in out:
            raise argparse.ArgumentTypeError(
                f"input '{name}' is in --shapes and in --min/--opt/--max-shapes; give one or "
                "the other"
            )
        missing = [w for w, lv in zip(("min", "opt", "max"), levels, strict=True) if name not in lv]
        if missing:
            raise argparse.ArgumentTypeError(
                f"input '{name}' lacks --{'-shapes, --'.join(missing)}-shapes: give min, opt "
                "and max together (or --shapes for one fixed shape)"
            )
        out[name] = InputShapes(levels[0][name], levels[1][name], levels[2][name])
    return out


def overrides_from_args(args: argparse.Namespace) -> BuildOverrides:
    """The :class:`BuildOverrides` of the parsed options (argparse exits 2 on a bad mix)."""
    try:
        shapes = _profile_shapes(args)
    except argparse.ArgumentTypeError as exc:  # a usage error, like argparse's own: exit 2
        print(f"edge-agent: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    timing = Path(args.timing_cache).expanduser().resolve() if args.timing_cache else None
    return BuildOverrides(
        shapes=shapes,
        workspace_mib=args.workspace,
        dla_core=args.dla_core,
        timing_cache=timing,
    )
