"""Prepare a bundle's ONNX file for calibration and building.

Checks the file (parseable, complete, supported operators, external data inside the bundle),
upgrades old opsets, checks the image input against ``model.yaml``, works out the
optimization-profile shapes from the device profile, optionally pins dynamic dimensions, and runs
shape inference (symbolic first, ONNX's own when symbolic inference gives up, as it does on some
real YOLO exports). Everything it had to do or work around is recorded in ``notes``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.backends.base import InputShapes, TensorSpec
from agent.config.device import DeviceProfile
from agent.core.errors import ModelError
from agent.engine.bundle import ModelBundle, is_inside
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
    external_locations,
    has_standard_operator,
    load_external_data,
    load_model,
    save_model,
    save_model_with_data_file,
    tensor_specs,
)
from agent.engine.quantize.shapes import fix_dim_param, infer_shapes

__all__ = ["MIN_OPSET", "PreparedModel", "prepare"]

#: Per-channel DequantizeLinear (axis attribute) needs opset 13.
MIN_OPSET = 13
#: Operator domains ONNX Runtime implements besides the default one.
_KNOWN_DOMAINS = {"", "ai.onnx", "com.microsoft", "ai.onnx.ml"}
_TWO_GIB = 2**31 - 1


@dataclass(frozen=True)
class PreparedModel:
    """The prepared ONNX file and what the layers above need to know about it."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    shapes: dict[str, InputShapes]
    opset: int
    notes: tuple[str, ...]


def _load(path: Path) -> ModelProto:
    fix = "re-export the model (torch.onnx.export / yolo export format=onnx) and copy it again"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"cannot read the ONNX file: {exc}", fix=fix, path=path) from exc
    if size == 0:
        raise ModelError("the ONNX file is empty", fix=fix, path=path)
    try:
        model = load_model(path, external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelError(
            f"not an ONNX model, or a truncated one (protobuf parse failed: {exc})",
            fix="check the copy is complete (compare sizes/sha256); " + fix,
            path=path,
        ) from exc
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(
            "the file parsed but holds no graph (truncated, or not an ONNX model)",
            fix="check the copy is complete (compare sizes/sha256); " + fix,
            path=path,
        )
    return model


def _check_external(model: ModelProto, path: Path, bundle_dir: Path) -> list[str]:
    locations = external_locations(model)
    for location, names in locations.items():
        target = path.parent / location
        if not location or Path(location).is_absolute() or not is_inside(target, bundle_dir):
            raise ModelError(
                f"external data '{location}' (tensor {names[0]}) resolves outside the bundle "
                f"directory {bundle_dir}",
                fix="save the model with its external data file next to it in the bundle "
                "(onnx.save_model(..., save_as_external_data=True, location='model.onnx.data'))",
                path=path,
            )
        if not target.is_file():
            raise ModelError(
                f"external data file '{location}' is missing (tensor {names[0]})",
                fix="copy the .data file that was exported with the model into the bundle",
                path=path,
            )
    return sorted(locations)


def _check_ops(model: ModelProto, path: Path) -> None:
    opsets = {e.domain: e.version for e in model.opset_import}
    for node in model.graph.node:
        domain = node.domain or ""
        if domain not in _KNOWN_DOMAINS:
            raise ModelError(
                f"unsupported operator {domain}::{node.op_type} (node '{node.name}'): "
                "no backend here implements the custom domain",
                fix="re-export without the custom op (or replace it with standard ONNX ops); "
                "plugins are not supported",
                path=path,
            )
        if domain in ("", "ai.onnx"):
            version = opsets.get(domain, opsets.get("", opsets.get("ai.onnx", 1)))
            if not has_standard_operator(node.op_type, version):
                raise ModelError(
                    f"unsupported operator {node.op_type} (node '{node.name}') at opset "
                    f"{version}: it is not an ONNX operator",
                    fix="re-export with standard ONNX operators only",
                    path=path,
                )


def _check(path: Path) -> None:
    try:
        check_model(path)
    except ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ModelError(
            f"the ONNX checker rejected the model: {first}",
            fix="re-export the model with a current exporter; if an operator is reported "
            "unknown, replace it with standard ONNX ops",
            path=path,
        ) from exc


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
    if isinstance(channels, int) and channels != 3:
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
    if isinstance(dims[0], int):
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
        if isinstance(fixed, int):
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


def _pin(model: ModelProto, vi: ValueInfoProto, pin: list[int | None]) -> bool:
    """Pin the input's dynamic dims where ``pin`` has a value; a dim_param is replaced
    everywhere it appears in the graph. Returns whether anything changed."""
    changed = False
    for d, value in zip(vi.type.tensor_type.shape.dim, pin, strict=True):
        if value is None or (d.HasField("dim_value") and d.dim_value > 0):
            continue
        if d.HasField("dim_param") and d.dim_param:
            fix_dim_param(model.graph, d.dim_param, value)
        if not (d.HasField("dim_value") and d.dim_value == value):
            d.Clear()
            d.dim_value = value
        changed = True
    return changed


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
        raise ModelError(
            f"the prepared model does not pass the ONNX checker: {exc}",
            fix="re-export the model with opset >= 13 so no conversion is needed",
            path=path,
        ) from exc
    return out


def prepare(
    bundle: ModelBundle, profile: DeviceProfile, work_dir: Path, *, static: bool = False
) -> PreparedModel:
    """Check, upgrade and shape the bundle's ONNX file into ``work_dir/prepared.onnx``.

    ``static=True`` pins every dynamic dimension of the image input to the profile's ``opt``
    shape (what calibration and static engines need); otherwise only dimensions whose
    min == max are pinned. Raises :class:`ModelError` naming the file and the fix.
    """
    path = bundle.onnx_path
    notes: list[str] = []
    model = _load(path)
    ext = _check_external(model, path, bundle.directory)
    _check_ops(model, path)
    _check(path)
    if ext:
        load_external_data(model, path.parent)
        notes.append(f"external data loaded from {', '.join(ext)}")
    model = _upgrade_opset(model, path, notes)

    vi, dims = _image_input(model, bundle, path)
    shapes = _shapes(bundle, profile, dims, notes)
    pin: list[int | None] = [
        shapes.opt[i] if static or shapes.min[i] == shapes.max[i] else None for i in range(4)
    ]
    if _pin(model, vi, pin):
        shown = [p if p is not None else "dynamic" for p in pin]
        why = "static=True" if static else "min == max in the profile"
        notes.append(f"input '{vi.name}' dims pinned to {shown} ({why})")

    out = _write_prepared(model, Path(work_dir), path, notes)
    final = load_model(out, external_data=False)
    inputs, outputs = tensor_specs(final)
    return PreparedModel(
        path=out,
        inputs=inputs,
        outputs=outputs,
        shapes={vi.name: shapes},
        opset=default_opset(final),
        notes=tuple(notes),
    )
