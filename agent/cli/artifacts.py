"""The model given to ``inspect``, ``bench`` and ``infer`` on the command line, as trtexec takes it:

* an artifact directory printed by ``build`` (or its ``artifact.json``): loaded and verified;
* an ``.onnx`` file: built on the fly into the engine cache with the profile's defaults and the
  trtexec-style overrides (a cache hit when nothing changed), progress on stderr;
* a bare TensorRT ``.engine``/``.plan``: loaded as it is (TensorRT needed); no manifest, so no
  gate report, no bundle (``infer`` needs one) and the I/O as the engine reports it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.backends.base import Backend
from agent.backends.registry import get_backend
from agent.cli.overrides import add_override_args, overrides_from_args
from agent.cli.progress import ProgressPrinter
from agent.config.cachedir import cache_dir_help, resolve_cache_dir
from agent.config.load import resolve_profile
from agent.core.errors import BackendUnavailable
from agent.engine.artifact import save_engine_copy
from agent.engine.build.orchestrator import build_engine
from agent.engine.cache import Artifact, load_artifact
from agent.engine.onnx_bundle import bundle_for_onnx
from agent.engine.onnxfiles import ONNX_FILES

__all__ = [
    "PLAN_SUFFIXES",
    "Loaded",
    "add_model_args",
    "dla_core",
    "load_with_backend",
    "open_model",
]

#: serialized TensorRT engines, as trtexec --saveEngine names them
PLAN_SUFFIXES = (".engine", ".plan", ".trt")
_PRECISIONS = ("int8", "fp16", "fp32", "auto")


@dataclass(frozen=True)
class Loaded:
    """The artifact to run, its backend, and how it was obtained."""

    artifact: Artifact
    backend: Backend
    #: "artifact", "onnx" (built on the fly; ``cache_hit`` says whether it was cached) or "plan"
    source: str
    cache_hit: bool = False

    @property
    def bare_plan(self) -> bool:
        return self.source == "plan"


def load_with_backend(path: str) -> tuple[Artifact, Backend]:
    """(artifact, backend) for an artifact directory given on the command line."""
    artifact = load_artifact(Path(path))
    return artifact, get_backend(artifact.backend, onnx_files=ONNX_FILES)


def dla_core(artifact: Artifact) -> int | None:
    """The DLA core the artifact was built for, from the cache key in its manifest."""
    key = artifact.manifest.get("key")
    core = key.get("dla_core") if isinstance(key, dict) else None
    return core if isinstance(core, int) else None


def add_model_args(p: argparse.ArgumentParser, verb: str) -> None:
    """The MODEL positional and the options an ``.onnx`` is built with."""
    p.add_argument(
        "model",
        metavar="MODEL",
        help=f"what to {verb}: an artifact directory (printed by build), an .onnx (built on the "
        "fly into the engine cache) or a TensorRT .engine/.plan",
    )
    g = p.add_argument_group("building an .onnx on the fly")
    g.add_argument("--profile", default="auto", help="device profile name, or auto (detect)")
    g.add_argument("--profiles-dir", default=None, help="directory of device profile YAMLs")
    g.add_argument(
        "--precision",
        choices=_PRECISIONS,
        default=None,
        help="engine precision (default: the profile's build.default_precision)",
    )
    g.add_argument("--calib", default=None, help="calibration frames (default calib/<model>/)")
    g.add_argument("--cache-dir", default=None, help=cache_dir_help())
    add_override_args(p)


def _open_plan(path: Path) -> Loaded:
    try:
        backend = get_backend("tensorrt")
    except BackendUnavailable as exc:
        raise BackendUnavailable(
            f"TensorRT is needed to load a plan file, and it is not usable here ({exc.message})",
            fix="run this on the Jetson the plan was built on (JetPack's python3-libnvinfer), or "
            "pass the .onnx or an ONNX Runtime artifact directory to run it on this host",
            path=path,
        ) from exc
    manifest = {
        "backend": "tensorrt",
        "precision": "unknown",
        "main_file": path.name,
        "files": {},
        "inputs": [],
        "outputs": [],
    }
    return Loaded(Artifact(path.parent.resolve(), manifest), backend, "plan")


def _build_onnx(path: Path, args: argparse.Namespace) -> Loaded:
    profile, l4t, _how = resolve_profile(args.profile, args.profiles_dir)
    cache_dir = resolve_cache_dir(args.cache_dir).path
    bundle_dir, _generated = bundle_for_onnx(path, cache_dir)
    printer = ProgressPrinter(stream=sys.stderr)  # stdout stays the command's own output
    try:
        outcome = build_engine(
            bundle_dir,
            profile,
            precision=args.precision or profile.build.default_precision,
            calib_dir=Path(args.calib) if args.calib else None,
            cache_dir=cache_dir,
            l4t_release=l4t,
            progress=printer,
            overrides=overrides_from_args(args),
        )
    finally:
        printer.close()
    backend = get_backend(outcome.artifact.backend, onnx_files=ONNX_FILES)
    return Loaded(outcome.artifact, backend, "onnx", outcome.cache_hit)


def open_model(args: argparse.Namespace) -> Loaded:
    """The artifact for ``args.model`` (see the module docstring); with ``--output`` a copy of
    its engine is written there."""
    path = Path(args.model)
    suffix = path.suffix.lower()
    if path.is_file() and suffix in PLAN_SUFFIXES:
        return _open_plan(path)
    if suffix == ".onnx":
        loaded = _build_onnx(path, args)
    else:
        artifact, backend = load_with_backend(args.model)
        loaded = Loaded(artifact, backend, "artifact")
    if args.output:  # --output/--save-engine: a copy of the engine outside the cache
        save_engine_copy(loaded.artifact, Path(args.output))
    return loaded
