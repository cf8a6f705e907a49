"""``edge-agent quantize``: the calibrated Q/DQ ONNX a build would make, without the engine.

Prepare the bundle's ONNX for the profile (static shapes where the backend needs them: ONNX
Runtime, and TensorRT on the DLA, which takes only min = opt = max), load the calibration set,
quantize with the profile's backend recipe in the isolated, memory-capped child (the build's own
:func:`~agent.engine.build.steps.quantize_in_child`), then move the Q/DQ model to ``out``
atomically with a JSON report beside it (``<out stem>.json``). The file is what the build hands
its backend: ``trtexec --onnx=FILE --int8`` or DeepStream's ``onnx-file`` can build it on the
device.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from agent.config.device import DeviceProfile
from agent.core.errors import ModelError
from agent.core.fsutil import atomic_write_json, fsync_dir, fsync_file
from agent.core.progress import ProgressFn, no_progress
from agent.engine.build.floats import explain_float_layers, graph_facts, sensitivity_ranking
from agent.engine.build.steps import quantize_in_child, resolve_calib_dir
from agent.engine.bundle import ModelBundle, load_bundle
from agent.engine.calibration import CalibrationSet, load_calibration_set
from agent.engine.prepare import PreparedModel, prepare
from agent.engine.quantize.entry import QuantizedModel

__all__ = ["QdqExport", "export_qdq", "report_path", "static_shapes"]

log = logging.getLogger(__name__)

#: how many of the most sensitive layers the report lists
SENSITIVITY_TOP = 10


@dataclasses.dataclass(frozen=True)
class QdqExport:
    """What ``export_qdq`` wrote: the Q/DQ model, its report (also written beside it) and the
    wall time."""

    path: Path
    report_path: Path
    report: dict[str, Any]
    seconds: float


def static_shapes(profile: DeviceProfile) -> bool:
    """Whether the profile's backend needs every dynamic dimension pinned: ONNX Runtime here,
    and the DLA, which takes only static shapes (TensorRT developer guide, "DLA supported
    layers and restrictions": min = opt = max)."""
    return profile.build.backend == "onnxruntime" or profile.build.dla.enabled


def report_path(out: Path) -> Path:
    """The report beside ``out``: ``model.qdq.onnx`` -> ``model.qdq.json``."""
    if out.suffix == ".json":
        return out.with_name(out.name + ".report.json")
    return out.with_suffix(".json")


def _prepare(
    bundle: ModelBundle, profile: DeviceProfile, work: Path, progress: ProgressFn
) -> PreparedModel:
    progress("prepare", 0.0, "checking and shaping the ONNX model")
    prepared = prepare(bundle, profile, work / "prepare", static=static_shapes(profile))
    progress("prepare", 1.0, "; ".join(prepared.notes) or "ok")
    return prepared


def _calibration(
    bundle: ModelBundle,
    profile: DeviceProfile,
    prepared: PreparedModel,
    calib_dir: Path | None,
    progress: ProgressFn,
) -> CalibrationSet:
    """The calibration frames (no held-out frames: nothing is validated here; one is checked
    when the bundle has a labelled heldout/, which the loader insists on)."""
    opt = prepared.shapes[bundle.config.input.name].opt
    size_hw = (opt[2], opt[3]) if bundle.config.input.layout == "NCHW" else (opt[1], opt[2])
    directory = resolve_calib_dir(bundle, calib_dir)
    heldout = 1 if bundle.heldout_dir is not None else 0
    frames = profile.build.calibration.frames
    calib = load_calibration_set(directory, bundle, size_hw, frames, heldout, progress=progress)
    return dataclasses.replace(calib, heldout=[], heldout_frames=[])


def _options(
    bundle: ModelBundle, profile: DeviceProfile, method: str | None, work: Path
) -> dict[str, Any]:
    cal = profile.build.calibration
    return {
        "recipe": profile.build.backend,
        "method": method or cal.method,
        "keep_float": list(bundle.config.keep_float),
        "work_dir": work / "quantize",
        "cache_dir": None,
        "percentile": cal.percentile,
        "memory_cap_mib": profile.build.build_memory_cap_mib,
    }


def _report(
    bundle: ModelBundle,
    profile: DeviceProfile,
    prepared: PreparedModel,
    quantized: QuantizedModel,
    *,
    frames: int,
    peak_rss_mib: float | None,
) -> dict[str, Any]:
    facts = graph_facts(prepared.path, quantized.recipe)
    floats = explain_float_layers(quantized, list(bundle.config.keep_float), facts.ops)
    shapes = prepared.shapes[bundle.config.input.name]
    return {
        "model": bundle.config.name,
        "source": str(bundle.onnx_path),
        "profile": profile.name,
        "recipe": quantized.recipe,
        "method": quantized.method,
        "input_shapes": {"min": shapes.min, "opt": shapes.opt, "max": shapes.max},
        "static_shapes": static_shapes(profile),
        "calib_sha256": quantized.calib_sha256,
        "calibration_frames": frames,
        "float_layers": [layer.to_json() for layer in floats],
        "sensitivity_top": sensitivity_ranking(quantized.report)[:SENSITIVITY_TOP],
        "peak_rss_mib": None if peak_rss_mib is None else round(peak_rss_mib, 1),
        "notes": list(prepared.notes),
    }


def _move_into_place(src: Path, out: Path) -> None:
    """Rename ``src`` over ``out`` (same directory, so atomic) and make both durable."""
    fsync_file(src)
    os.replace(src, out)
    fsync_dir(out.parent)


def _check_out(out: Path) -> Path:
    out = Path(out)
    if out.is_dir():
        raise ModelError(
            f"--out {out} is a directory", fix="pass a file name such as model.qdq.onnx", path=out
        )
    if not out.parent.is_dir():
        raise ModelError(
            f"the folder of --out {out} does not exist",
            fix=f"create {out.parent} first or write elsewhere",
            path=out.parent,
        )
    return out


def export_qdq(
    bundle_path: Path,
    profile: DeviceProfile,
    out: Path,
    *,
    calib_dir: Path | None = None,
    method: str | None = None,
    progress: ProgressFn = no_progress,
) -> QdqExport:
    """Quantize the bundle for ``profile`` and write the Q/DQ ONNX to ``out`` and its report
    beside it; a failure leaves ``out`` as it was. ``method`` overrides the profile's
    calibration method. Errors are the agent's user errors (bad bundle, no frames, OOM)."""
    started = time.monotonic()
    out = _check_out(out)
    bundle = load_bundle(Path(bundle_path))
    work = out.parent / f".tmp-quantize-{bundle.config.name}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        prepared = _prepare(bundle, profile, work, progress)
        calib = _calibration(bundle, profile, prepared, calib_dir, progress)
        progress("quantize", 0.0, f"calibrating on {len(calib.calib)} frames")
        options = _options(bundle, profile, method, work)
        quantized, rss = quantize_in_child(
            prepared,
            calib,
            options,
            limits=profile.build,
            progress=progress,
            scratch_dir=work,
        )
        report = _report(
            bundle, profile, prepared, quantized, frames=len(calib.calib), peak_rss_mib=rss
        )
        report["seconds"] = round(time.monotonic() - started, 2)
        _move_into_place(quantized.path, out)
        atomic_write_json(report_path(out), report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("wrote %s (%s recipe, %s)", out, report["recipe"], report["method"])
    return QdqExport(out, report_path(out), report, report["seconds"])
