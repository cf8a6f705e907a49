"""Prepare a bundle's ONNX file for calibration and building.

Checks the file (:mod:`agent.engine.modelcheck`), upgrades old opsets, checks the image input
against ``model.yaml``, works out the optimization-profile shapes from the device profile, sets
the input's axes by position (:mod:`agent.engine.pin`), folds constant subgraphs and
BatchNormalization into the weights before any Q/DQ goes in, and runs shape inference
(symbolic first, ONNX's own when symbolic inference gives up, as it does on some real YOLO
exports). Everything it did or worked around is recorded in ``notes``, and errors name the
bundle's ONNX file, never the temporary files in ``work_dir``.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.backends.base import InputShapes, TensorSpec
from agent.config.device import DeviceProfile
from agent.core.errors import InternalError, ModelError
from agent.engine.bundle import ModelBundle
from agent.engine.fold import fold_batchnorm
from agent.engine.modelcheck import check_external, check_onnx, check_ops, load_onnx
from agent.engine.onnxgraph import (
    FLOAT,
    FLOAT16,
    ModelProto,
    ValidationError,
    ValueInfoProto,
    check_model,
    convert_opset,
    default_opset,
    dim_value,
    elem_type_name,
    load_external_data,
    load_model,
    save_model,
    save_model_with_data_file,
    tensor_specs,
)
from agent.engine.pin import AxisPins, is_dynamic, pin_axes
from agent.engine.quantize.constfold import fold_constants
from agent.engine.quantize.shapes import infer_shapes

__all__ = ["MIN_OPSET", "PreparedModel", "prepare"]

#: Per-channel DequantizeLinear (axis attribute) needs opset 13.
MIN_OPSET = 13
_TWO_GIB = 2**31 - 1


@dataclass(frozen=True)
class PreparedModel:
    """The prepared ONNX file and what the layers above need to know about it."""

    #: the prepared file (in the build's work directory: temporary, never name it to a user)
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    shapes: dict[str, InputShapes]
    opset: int
    notes: tuple[str, ...]
    #: the bundle's ONNX file the prepared one was made from: what errors should name
    source: Path
    #: BatchNormalization node -> the Conv/ConvTranspose/Gemm node it was folded into
    folded: dict[str, str] = field(default_factory=dict[str, str])


def _image_input(
    model: ModelProto, bundle: ModelBundle, path: Path
) -> tuple[ValueInfoProto, list[int | str]]:
    spec = bundle.config.input
    inits = {t.name for t in model.graph.initializer}
    real_inputs = [v for v in model.graph.input if v.name not in inits]
    by_name = {v.name: v for v in real_inputs}
    yaml = bundle.directory / "model.yaml"
    if spec.name not in by_name:
        raise ModelError(
            f"model.yaml names input '{spec.name}' but the ONNX inputs are {sorted(by_name)}",
            fix=f"set input.name in {yaml} to one of {sorted(by_name)}",
            path=path,
        )
    if len(real_inputs) > 1:
        others = sorted(n for n in by_name if n != spec.name)
        raise ModelError(
            f"the model has extra inputs {others} besides the image input '{spec.name}'",
            fix="export the model with the image as its only input (bake other inputs in as "
            "constants)",
            path=path,
        )
    vi = by_name[spec.name]
    ttype = vi.type.tensor_type
    if ttype.elem_type not in (FLOAT, FLOAT16):
        raise ModelError(
            f"input '{spec.name}' has element type "
            f"{elem_type_name(ttype.elem_type)}; a float image input is expected",
            fix="export the model with a float32 image input (normalisation happens here)",
            path=path,
        )
    dims = [dim_value(d) for d in ttype.shape.dim]
    if len(dims) != 4:
        raise ModelError(
            f"input '{spec.name}' has rank {len(dims)} (shape {dims}) but model.yaml says "
            f"layout {spec.layout}, which needs rank 4",
            fix=f"export an image input of rank 4, or fix input.layout in {yaml}",
            path=path,
        )
    channel_axis = 1 if spec.layout == "NCHW" else 3
    channels = dims[channel_axis]
    if isinstance(channels, int) and not is_dynamic(channels) and channels != 3:
        other = "NHWC" if spec.layout == "NCHW" else "NCHW"
        hint = ""
        if dims[4 - channel_axis if channel_axis == 3 else 3] == 3:
            hint = f" (the shape looks {other})"
        raise ModelError(
            f"input '{spec.name}' has {channels} channels at axis {channel_axis} (shape {dims}), "
            f"but model.yaml says layout {spec.layout} with 3 colour channels{hint}",
            fix=f"set input.layout to {other} in {yaml} if that is the model's layout, "
            "or export a 3-channel model",
            path=path,
        )
    return vi, dims


def _shapes(
    bundle: ModelBundle, profile: DeviceProfile, dims: list[int | str], notes: list[str]
) -> InputShapes:
    spec = bundle.config.input
    nchw = spec.layout == "NCHW"
    h_axis, w_axis = (2, 3) if nchw else (1, 2)
    batch = profile.shapes.batch
    cap = profile.runtime.max_batch
    b = [min(batch.min, cap), min(batch.opt, cap), min(batch.max, cap)]
    if isinstance(dims[0], int) and not is_dynamic(dims[0]):
        if b != [dims[0]] * 3:
            notes.append(f"batch is fixed to {dims[0]} in the ONNX file; profile batch {b} ignored")
        b = [dims[0]] * 3
    if spec.size is not None:
        h = [spec.size[0]] * 3
        w = [spec.size[1]] * 3
    else:
        ph, pw = profile.shapes.height, profile.shapes.width
        h = [ph.min, ph.opt, ph.max]
        w = [pw.min, pw.opt, pw.max]
    for axis, rng, what in ((h_axis, h, "height"), (w_axis, w, "width")):
        fixed = dims[axis]
        if isinstance(fixed, int) and not is_dynamic(fixed):
            if spec.size is not None and rng[0] != fixed:
                raise ModelError(
                    f"model.yaml input.size asks {what} {rng[0]} but the ONNX input is fixed at "
                    f"{fixed}",
                    fix=f"set input.size to the exported size, or re-export with {what} "
                    f"{rng[0]} or a dynamic {what}",
                    path=bundle.directory / "model.yaml",
                )
            if rng != [fixed] * 3:
                notes.append(f"{what} is fixed to {fixed} in the ONNX file; profile range ignored")
            rng[:] = [fixed] * 3

    def shape(i: int) -> tuple[int, ...]:
        return (b[i], 3, h[i], w[i]) if nchw else (b[i], h[i], w[i], 3)

    return InputShapes(shape(0), shape(1), shape(2))


def _save(model: ModelProto, path: Path, large: bool) -> None:
    if large:
        save_model_with_data_file(model, path)
    else:
        save_model(model, path)


def _upgrade_opset(model: ModelProto, path: Path, notes: list[str]) -> ModelProto:
    """``model`` at opset :data:`MIN_OPSET` at least (per-channel Q/DQ needs it)."""
    opset = default_opset(model)
    if opset >= MIN_OPSET:
        return model
    try:
        model = convert_opset(model, MIN_OPSET)
    except Exception as exc:
        raise ModelError(
            f"opset {opset} could not be converted to {MIN_OPSET}: {exc}",
            fix=f"re-export the model with opset >= {MIN_OPSET} (e.g. opset_version=17)",
            path=path,
        ) from exc
    notes.append(f"opset upgraded from {opset} to {MIN_OPSET} (per-channel Q/DQ needs it)")
    return model


def _scrub(text: str, work_dir: Path, source: Path) -> str:
    """``text`` with every path under ``work_dir`` (temporary files) replaced by ``source``."""
    for root in dict.fromkeys((str(work_dir), str(work_dir.resolve()))):
        text = re.sub(re.escape(root) + r"[^\s'\"(),;]*", str(source), text)
    return text


def _write_prepared(model: ModelProto, work_dir: Path, path: Path, notes: list[str]) -> Path:
    """Save ``model`` with inferred shapes as ``work_dir/prepared.onnx`` and check it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / "prepared.onnx"
    large = model.ByteSize() > _TWO_GIB - (64 << 20)
    with tempfile.TemporaryDirectory(prefix="prepare.", dir=work_dir) as tmp:
        staged = Path(tmp) / "staged.onnx"
        _save(model, staged, large)
        infer_shapes(staged, out, large, notes)
    try:
        check_model(out)
    except ValidationError as exc:
        reason = _scrub(str(exc), work_dir, path)
        raise ModelError(
            f"the prepared model does not pass the ONNX checker: {reason}",
            fix="re-export the model with opset >= 13 so no conversion is needed",
            path=path,
        ) from exc
    return out


def _fold(model: ModelProto, keep_float: Sequence[str], notes: list[str]) -> dict[str, str]:
    """Fold constants, then BatchNormalization, into the weights; returns BN -> its conv."""
    consts = fold_constants(model, keep_float)
    if consts.skipped:
        notes.append(f"constant folding skipped ({consts.skipped})")
    elif consts.folded:
        ops = ", ".join(f"{op} x{n}" for op, n in consts.folded.most_common())
        notes.append(f"folded {consts.folded.total()} constant nodes into initializers ({ops})")
    bn = fold_batchnorm(model.graph, keep_float)
    if bn.folded:
        notes.append(
            f"folded {len(bn.folded)} BatchNormalization nodes into the Conv/ConvTranspose/Gemm "
            "before them (their names kept)"
        )
    for name, conv in bn.kept.items():
        notes.append(
            f"BatchNormalization '{name}' not folded into '{conv}' because model.yaml keep_float "
            f"names it; name '{conv}' there instead to fold it and keep that node in float"
        )
    if bn.unfoldable:
        shown = "; ".join(f"'{n}': {why}" for n, why in list(bn.unfoldable.items())[:3])
        more = f" (+{len(bn.unfoldable) - 3} more)" if len(bn.unfoldable) > 3 else ""
        notes.append(
            f"{len(bn.unfoldable)} BatchNormalization nodes stay unfolded (float in the INT8 "
            f"graph): {shown}{more}"
        )
    return bn.folded


def _read_back(final: ModelProto, name: str, axes: AxisPins, why: str, path: Path) -> str:
    """The note on the input shape the prepared file really has; refuses a pin that did not
    hold (a bug: shape inference must not change the input)."""
    vi = next((v for v in final.graph.input if v.name == name), None)
    if vi is None:
        raise InternalError(f"input '{name}' of {path} vanished while preparing it")
    dims = [dim_value(d) for d in vi.type.tensor_type.shape.dim]
    wrong = {a: dims[a] for a, v in axes.pinned.items() if dims[a] != v}
    if wrong:
        raise InternalError(
            f"input '{name}' of {path}: axes {sorted(wrong)} were pinned to "
            f"{[axes.pinned[a] for a in sorted(wrong)]} but the prepared model has {dims}"
        )
    note = f"input '{name}' in the prepared model: {dims}"
    if axes.pinned:
        note += f"; axes {sorted(axes.pinned)} pinned by position ({why})"
    if axes.shared:
        note += f"; dim names {list(axes.shared)} were shared by several axes"
    if axes.renamed:
        note += f"; axes {sorted(axes.renamed)} given names of their own"
    if axes.cleared:
        note += f"; {axes.cleared} stale dims elsewhere cleared for shape inference"
    return note


def _load_external(model: ModelProto, path: Path, locations: list[str]) -> None:
    """Load the external-data tensors; a tensor whose offset/length lies about its data file
    (onnx raises ValueError) is the bundle's error, not ours."""
    try:
        load_external_data(model, path.parent)
    except (ValueError, OSError) as exc:
        raise ModelError(
            f"external data does not match its file ({', '.join(locations)}): {exc}",
            fix="re-export the model and copy the .data file that was written with it; "
            "a truncated or mismatched data file cannot be used",
            path=path,
        ) from exc


def prepare(
    bundle: ModelBundle,
    profile: DeviceProfile,
    work_dir: Path,
    *,
    static: bool = False,
    dynamic_batch: bool = False,
) -> PreparedModel:
    """Check, upgrade, shape and fold the bundle's ONNX file into ``work_dir/prepared.onnx``.

    ``static=True`` pins every dynamic dimension of the image input to the profile's ``opt``
    shape (what calibration and static engines need); otherwise only dimensions whose
    min == max are pinned. ``dynamic_batch=True`` leaves the batch axis out of ``static``
    (ONNX Runtime runs any batch; it is still pinned when the profile's min == max).
    Raises :class:`ModelError` naming the file and the fix.
    """
    path, work_dir = bundle.onnx_path, Path(work_dir)
    notes: list[str] = []
    model = load_onnx(path)
    ext = check_external(model, path, bundle.directory)
    check_ops(model, path)
    check_onnx(path)
    if ext:
        _load_external(model, path, ext)
        notes.append(f"external data loaded from {', '.join(ext)}")
    model = _upgrade_opset(model, path, notes)

    vi, dims = _image_input(model, bundle, path)
    shapes = _shapes(bundle, profile, dims, notes)
    pin: list[int | None] = [
        shapes.opt[i]
        if (static and not (dynamic_batch and i == 0)) or shapes.min[i] == shapes.max[i]
        else None
        for i in range(4)
    ]
    axes = pin_axes(model.graph, vi, pin)
    folded = _fold(model, bundle.config.keep_float, notes)

    out = _write_prepared(model, work_dir, path, notes)
    final = load_model(out, external_data=False)
    why = "static=True" if static else "min == max in the profile"
    notes.append(_read_back(final, vi.name, axes, why, path))
    inputs, outputs = tensor_specs(final)
    return PreparedModel(
        path=out,
        inputs=inputs,
        outputs=outputs,
        shapes={vi.name: shapes},
        opset=default_opset(final),
        notes=tuple(_scrub(n, work_dir, path) for n in notes),
        source=path,
        folded=folded,
    )
