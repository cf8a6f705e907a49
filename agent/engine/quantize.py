"""Explicit INT8 quantization: calibrate activation ranges, insert Q/DQ nodes per backend recipe.

The recipes are data (:data:`RECIPES`): TensorRT wants symmetric S8 activations and per-channel
symmetric S8 weights with Q/DQ only where it can fuse them; ONNX Runtime's CPU kernels are fast
with asymmetric U8 activations and S8 weights.

Activation ranges are computed once per (prepared model, calibration set, method) with
``onnxruntime.quantization.calibrate.create_calibrator`` and cached as ORT's own calibration-cache
JSON (``cache_dir/calib/<key>.json``); ``quantize_static(..., calibration_cache_path=...)``
loads them and skips calibration on a hit. The ranges do not depend on the recipe or on excluded
nodes (every float tensor is calibrated), so one cache serves both recipes and the re-quantization
done by the mixed-precision pass.

Mixed precision: nodes named in ``keep_float`` are never quantized, nor is the float tail of the
graph (:func:`float_tail`: everything downstream of the last weighted layers, e.g. a detector's
decode head, which TensorRT also runs in float). Then an automatic pass runs
the float and the Q/DQ model side by side on a few calibration frames, measures how much error
each node *adds* (per output channel, so a channel that quantization wipes out is not hidden by
a large neighbour, the classic YOLO "boxes and scores in one Concat" failure) and excludes nodes
whose added error is far above the rest; the model is then re-quantized.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from agent.backends.base import ProgressFn, no_progress
from agent.core.errors import CalibrationError, ModelError
from agent.core.fsutil import fsync_dir, fsync_file
from agent.engine.bundle import onnx_sha256
from agent.engine.calibration import CalibrationSet, FrameReader
from agent.engine.prepare import PreparedModel

__all__ = ["RECIPES", "QuantizedModel", "Recipe", "calibration_cache_key", "quantize"]

Method = Literal["entropy", "minmax", "percentile"]
_log = logging.getLogger(__name__)
_CACHE_VERSION = "1"


@dataclass(frozen=True)
class Recipe:
    """How one backend wants its Q/DQ graph. Types are ``onnxruntime.quantization.QuantType``
    member names, resolved when quantizing (importing this module stays cheap)."""

    name: str
    activation_type: Literal["QInt8", "QUInt8"]
    weight_type: Literal["QInt8", "QUInt8"]
    activation_symmetric: bool
    weight_symmetric: bool
    per_channel: bool
    #: Operator types that get Q/DQ; ``None`` = everything ORT's QDQ quantizer supports.
    op_types: tuple[str, ...] | None
    extra_options: Mapping[str, Any] = field(default_factory=dict[str, Any])
    description: str = ""
    #: Keep the post-processing tail (nodes with no weighted layer downstream: box decode,
    #: score sigmoid, the final Concat of boxes and scores) in float. Quantizing it buys no speed
    #: and one shared scale for pixel-sized boxes and 0..1 scores wipes the scores out.
    keep_tail_float: bool = True

    def options(self) -> dict[str, Any]:
        """``extra_options`` for ``quantize_static``."""
        return {
            **dict(self.extra_options),
            "ActivationSymmetric": self.activation_symmetric,
            "WeightSymmetric": self.weight_symmetric,
        }


#: Weighted layers and the ops between them that both runtimes execute in INT8.
_COMPUTE_OPS = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "Concat",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Resize",
)

RECIPES: dict[str, Recipe] = {
    "tensorrt": Recipe(
        name="tensorrt",
        activation_type="QInt8",
        weight_type="QInt8",
        activation_symmetric=True,
        weight_symmetric=True,
        per_channel=True,
        # NVIDIA's Q/DQ placement guidance: quantize the inputs of weighted layers (Conv,
        # ConvTranspose, Gemm/MatMul), not their outputs; quantize both inputs of residual Adds
        # and the ops TensorRT runs in INT8 between them (pooling, Concat, Resize); leave
        # BatchNorm/activation fusion to TensorRT (activations stay explicit in the graph).
        op_types=_COMPUTE_OPS,
        extra_options={
            # Relu/Clip must stay in the graph: TensorRT fuses them itself, and with symmetric
            # activations removing them would change the result.
            "QDQKeepRemovableActivations": True,
            # One Q/DQ pair per consumer: TensorRT propagates and fuses each pair on its own.
            "DedicatedQDQPair": True,
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
        },
        description="S8 symmetric activations, S8 per-channel symmetric weights, QDQ, "
        "TensorRT-fusable ops only",
    ),
    "onnxruntime": Recipe(
        name="onnxruntime",
        activation_type="QUInt8",
        weight_type="QInt8",
        activation_symmetric=False,
        weight_symmetric=True,
        per_channel=True,
        # The ops ONNX Runtime has fast U8/S8 kernels for (QLinearConv, MatMulInteger,
        # QLinearAdd, pooling, Concat, Resize) plus Relu/Clip, which the quantizer folds into
        # the preceding Conv's output range so no DQ -> Relu -> Q round trip is left between
        # convolutions. Measured on the bundled detector (1 thread, VNNI, entropy): this set
        # gives 1.69x over FP32 with a 0.00 pt mAP@0.5 change; without Relu 1.36x; quantizing
        # every op type 1.73x but -0.62 pt.
        op_types=(*_COMPUTE_OPS, "Relu", "Clip"),
        extra_options={},
        description="U8 asymmetric activations, S8 per-channel symmetric weights, QDQ on the "
        "compute path (fast on VNNI x86 and ARM dot-product CPUs)",
    ),
}


@dataclass(frozen=True)
class QuantizedModel:
    """A Q/DQ ONNX file and how it was made."""

    path: Path
    recipe: str
    method: str
    excluded_nodes: tuple[str, ...]
    auto_excluded: tuple[str, ...]
    calib_sha256: str
    report: dict[str, Any]


# --------------------------------------------------------------------------- calibration cache


def calibration_cache_key(
    model_sha256: str, calib_sha256: str, method: str, percentile: float
) -> str:
    """Cache key of activation ranges: model + calibration set + method (+ percentile)."""
    extra = f"{percentile:.6f}" if method == "percentile" else ""
    text = f"v{_CACHE_VERSION}\0{model_sha256}\0{calib_sha256}\0{method}\0{extra}"
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def _method_enum(method: str):
    from onnxruntime.quantization import CalibrationMethod

    table = {
        "entropy": CalibrationMethod.Entropy,
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in table:
        raise ValueError(f"calibration method '{method}' is not one of {sorted(table)}")
    return table[method]


def _fsync_file(path: Path) -> None:
    """Make ``path`` and its directory entry durable (best effort)."""
    with contextlib.suppress(OSError):
        fsync_file(path)
        fsync_dir(path.parent)


def _cached_ranges_ok(cache_path: Path, method: str) -> bool:
    from onnxruntime.quantization.calibrate import load_tensors_data

    if not cache_path.is_file():
        return False
    try:
        data = load_tensors_data(cache_path)
    except Exception as exc:  # corrupt / truncated / foreign JSON
        _log.warning("calibration cache %s unreadable (%s); recalibrating", cache_path, exc)
        return False
    return data.calibration_method == _method_enum(method) and bool(list(data.keys()))


#: Frames (batches) per calibrator pass: activations of this many frames are held at once.
_CALIB_CHUNK = 8


class _Chunk(CalibrationDataReader):
    """At most ``limit`` batches of ``reader``: a CalibrationDataReader-compatible view."""

    def __init__(self, reader: FrameReader, limit: int) -> None:
        self.reader = reader
        self.left = limit

    def get_next(self) -> dict[str, np.ndarray] | None:  # type: ignore[override]
        if self.left <= 0:
            return None
        self.left -= 1
        return self.reader.get_next()


def _calibrate(
    prepared: PreparedModel,
    reader: FrameReader,
    *,
    method: str,
    percentile: float,
    cache_path: Path,
    tmp_dir: Path,
) -> int:
    """Compute ranges of every float tensor and save them as ORT's calibration cache."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options: dict[str, Any] = {}
    if method == "percentile":
        # The calibrator defaults to symmetric ranges for percentile; U8 recipes want the real
        # one-sided range of post-ReLU tensors, symmetric recipes symmetrize later anyway.
        options = {"percentile": percentile, "symmetric": False}
    calibrator = create_calibrator(
        prepared.path,
        None,  # every float tensor: the cache then serves every recipe and exclusion set
        augmented_model_path=str(tmp_dir / "augmented.onnx"),
        calibrate_method=_method_enum(method),
        extra_options=options,
    )
    try:
        reader.rewind()
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print() progress
            # Chunks bound memory: a calibrator holds every activation of the frames it is
            # fed until collect_data returns, then folds them into running ranges/histograms.
            chunks = -(-len(reader) // _CALIB_CHUNK)
            for _ in range(chunks):
                calibrator.collect_data(_Chunk(reader, _CALIB_CHUNK))
            ranges = calibrator.compute_data()
    except Exception as exc:
        raise CalibrationError(
            f"calibration run failed: {type(exc).__name__}: {exc}",
            fix="check that the calibration frames match the model input (size, layout) and "
            "that the model runs in ONNX Runtime on this host",
            path=prepared.path,
        ) from exc
    finally:
        del calibrator
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors_data(ranges, cache_path)  # tmp file + os.replace
    _fsync_file(cache_path)
    return len(list(ranges.keys()))


# --------------------------------------------------------------------------- quantization


def _quantize_once(
    prepared: PreparedModel,
    out_path: Path,
    reader: FrameReader,
    *,
    recipe: Recipe,
    method: str,
    exclude: Sequence[str],
    cache_path: Path,
) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(prepared.path),
        str(out_path),
        calibration_data_reader=reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(recipe.op_types) if recipe.op_types else None,
        per_channel=recipe.per_channel,
        reduce_range=False,
        activation_type=QuantType[recipe.activation_type],
        weight_type=QuantType[recipe.weight_type],
        nodes_to_exclude=list(exclude),
        calibrate_method=_method_enum(method),
        extra_options=recipe.options(),
        calibration_cache_path=str(cache_path),
        # >2 GiB models: prepare() wrote external data, keep it that way
        use_external_data_format=prepared.path.with_name(prepared.path.name + ".data").exists(),
    )


def _post_qdq_names(model: onnx.ModelProto) -> dict[str, str]:
    """tensor -> the output of the DequantizeLinear fed by its QuantizeLinear (what consumers
    of the tensor really see in a Q/DQ graph)."""
    q_out = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {t: dq_of[q] for t, q in q_out.items() if q in dq_of}


def _run_intermediates(
    model_path: Path,
    names: Sequence[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    post_qdq: bool = False,
) -> dict[str, np.ndarray]:
    """Run ``model_path`` (no graph optimization) returning the float tensors ``names``, with
    the frames concatenated along the batch axis. ``post_qdq`` reads each tensor after its
    Q/DQ pair where it has one."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }
    present = {o.name for o in model.graph.output}
    produced = {o for node in model.graph.node for o in node.output}
    alias = _post_qdq_names(model) if post_qdq else {}
    fetch = {n: alias.get(n, n) for n in names if n in produced}
    wanted = [f for f in fetch.values() if types.get(f) == onnx.TensorProto.FLOAT]
    for name in wanted:
        if name not in present:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
            present.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="acts.", dir=model_path.parent) as tmp:
        probe = Path(tmp) / "probe.onnx"
        large = model.ByteSize() > (1 << 31) - (64 << 20)
        onnx.save_model(model, str(probe), save_as_external_data=large)
        session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
        out_names = [o.name for o in session.get_outputs() if o.name in set(wanted)]
        runs = [[np.asarray(v) for v in session.run(out_names, dict(feed))] for feed in feeds]
        del session
    values = {
        name: np.concatenate([np.asarray(r[i]) for r in runs], axis=0)
        if runs[0][i].ndim
        else np.asarray(runs[0][i])
        for i, name in enumerate(out_names)
    }
    return {n: values[f] for n, f in fetch.items() if f in values}


def channel_error(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean over channels (axis 1) of the per-channel ratio of error power to the reference's
    variance, each capped at 2 (1.0 = that channel's variation is gone).

    Per channel, because channels can mean different things: a YOLO ``[N, 4+C, A]`` output
    whose class-score rows are wiped out by a scale sized for pixel coordinates has a tiny
    tensor-wide error but half its channels at ~1. The mean (not the max) keeps a few nearly
    dead feature-map channels from flagging a healthy layer. Constant channels are skipped.
    """
    ref = np.asarray(ref, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if ref.shape != test.shape:
        return float("inf")
    if ref.size == 0:
        return 0.0
    if ref.ndim >= 2:
        ref = np.moveaxis(ref, 1, 0).reshape(ref.shape[1], -1)
        test = np.moveaxis(test, 1, 0).reshape(test.shape[1], -1)
    else:
        ref, test = ref.reshape(1, -1), test.reshape(1, -1)
    centred = ref - ref.mean(axis=1, keepdims=True)
    signal = np.sum(centred * centred, axis=1)  # the variation carries the information
    noise = np.sum((ref - test) ** 2, axis=1)
    live = signal > max(float(signal.max()) * 1e-9, 1e-20)
    if not live.any():
        return 0.0
    return float(np.mean(np.minimum(noise[live] / signal[live], 2.0)))


def node_errors(
    float_path: Path, qdq_path: Path, feeds: Sequence[Mapping[str, np.ndarray]]
) -> tuple[dict[str, float], float]:
    """Error each node of the float model *adds* in the Q/DQ model: the noise ratio of its
    outputs minus the worst one of its activation inputs (graph inputs count as exact).

    Tensors keep their names through ORT's QDQ rewrite (a removed Relu's output is produced by
    its Conv), so matching is by name, reading each Q/DQ tensor after its DequantizeLinear (what
    consumers see), per channel (see :func:`channel_error`). Also returns the mean error of
    the graph outputs."""
    float_model = onnx.load(str(float_path), load_external_data=False)
    inits = {t.name for t in float_model.graph.initializer}
    tensors = [o for node in float_model.graph.node for o in node.output if o]
    ref = _run_intermediates(float_path, tensors, feeds)
    test = _run_intermediates(qdq_path, [t for t in tensors if t in ref], feeds, post_qdq=True)
    err = {name: channel_error(ref[name], test[name]) for name in ref if name in test}
    added: dict[str, float] = {}
    for node in float_model.graph.node:
        outs = [err[o] for o in node.output if o in err]
        if not outs:
            continue
        ins = [err.get(i, 0.0) for i in node.input if i and i not in inits]
        added[node.name] = max(0.0, max(outs) - max(ins, default=0.0))
    outputs = [err[o.name] for o in float_model.graph.output if o.name in err]
    return added, float(np.mean(outputs)) if outputs else 0.0


def find_outliers(errors: Mapping[str, float], *, k: float = 6.0, floor: float = 0.05) -> list[str]:
    """Nodes whose added error is above ``median + k * MAD`` and above ``floor``, worst first."""
    if not errors:
        return []
    values = np.array(list(errors.values()), dtype=np.float64)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    limit = max(median + k * mad, floor)
    return sorted((n for n, e in errors.items() if e > limit), key=lambda n: -errors[n])


def _quantized_consumers(model: onnx.ModelProto, recipe: Recipe) -> dict[str, list[str]]:
    """node -> names of the nodes that consume its outputs and that the recipe quantizes."""
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            by_input.setdefault(name, []).append(node)
    result: dict[str, list[str]] = {}
    for node in model.graph.node:
        result[node.name] = [
            c.name
            for out in node.output
            for c in by_input.get(out, ())
            if recipe.op_types is None or c.op_type in recipe.op_types
        ]
    return result


_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def float_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes downstream of the last weighted layers: no Conv/Gemm/MatMul with a
    constant weight is reachable from them. Those are post-processing (decode, activations
    on the outputs, Concat of boxes and scores) and stay float in every recipe."""
    initializers = {t.name for t in model.graph.initializer}
    initializers |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    by_input: dict[str, list[int]] = {}
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            by_input.setdefault(name, []).append(index)
    nodes = list(model.graph.node)
    weighted = [
        n.op_type in _WEIGHTED and any(i in initializers for i in n.input[1:]) for n in nodes
    ]
    # leads[i]: a weighted node is i itself or downstream of i. Graph nodes are topologically
    # sorted (ONNX requires it), so one reverse pass settles every node.
    leads = [False] * len(nodes)
    for index in range(len(nodes) - 1, -1, -1):
        node = nodes[index]
        leads[index] = weighted[index] or any(
            leads[c] for out in node.output for c in by_input.get(out, ())
        )
    return [n.name for i, n in enumerate(nodes) if not leads[i] and n.name]


def _count_qdq(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def quantize(
    prepared: PreparedModel,
    calib: CalibrationSet,
    *,
    recipe: str,
    method: Method,
    keep_float: Sequence[str] = (),
    work_dir: Path,
    cache_dir: Path | None = None,
    percentile: float = 99.999,
    progress: ProgressFn = no_progress,
    auto_exclude: bool = True,
    probe_frames: int = 8,
    max_rounds: int = 3,
) -> QuantizedModel:
    """Quantize ``prepared`` with ``recipe`` into ``work_dir/model.int8.<recipe>.onnx``.

    Ranges come from ``cache_dir/calib/<key>.json`` when present (no calibration run), else
    are computed on ``calib.calib`` and saved there (``work_dir`` is used without a cache dir).
    """
    if recipe not in RECIPES:
        raise ModelError(
            f"unknown quantization recipe '{recipe}'",
            fix=f"use one of {sorted(RECIPES)} (it follows the profile's build.backend)",
        )
    rcp = RECIPES[recipe]
    _method_enum(method)
    if not calib.calib:
        raise CalibrationError(
            "the calibration set is empty",
            fix="copy JPEGs from this device's cameras into the model's calibration folder "
            "(calib/README.md says how)",
        )
    model = onnx.load(str(prepared.path), load_external_data=False)
    node_names = [n.name for n in model.graph.node]
    unknown = [n for n in keep_float if n not in set(node_names)]
    if unknown:
        import difflib

        hints = {u: difflib.get_close_matches(u, node_names, n=3) for u in unknown}
        raise ModelError(
            f"keep_float names nodes that are not in the model: {hints} (name: close matches)",
            fix="use node names as shown by `edge-agent inspect` / Netron; remove stale entries "
            "from keep_float in model.yaml",
            path=prepared.path,
        )
    if not prepared.inputs:
        raise ModelError("the prepared model has no inputs", path=prepared.path)
    image = prepared.inputs[0]
    batch = image.shape[0] if image.shape and isinstance(image.shape[0], int) else 1
    batch = batch if batch > 0 else 1

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    model_sha = onnx_sha256(prepared.path)
    key = calibration_cache_key(model_sha, calib.sha256, method, percentile)
    cache_path = Path(cache_dir if cache_dir is not None else work_dir) / "calib" / f"{key}.json"
    reader = FrameReader(image.name, calib.calib, batch=batch, progress=progress)

    started = time.monotonic()
    cache_hit = _cached_ranges_ok(cache_path, method)
    calibrated_tensors = 0
    with tempfile.TemporaryDirectory(prefix="quant.", dir=work_dir) as tmp:
        if cache_hit:
            progress("calibrate", 1.0, f"activation ranges from cache {cache_path.name}")
        else:
            with contextlib.suppress(FileNotFoundError):
                cache_path.unlink()  # stale/corrupt: quantize_static must not trust it
            progress("calibrate", 0.0, f"calibrating {len(calib.calib)} frames ({method})")
            calibrated_tensors = _calibrate(
                prepared,
                reader,
                method=method,
                percentile=percentile,
                cache_path=cache_path,
                tmp_dir=Path(tmp),
            )
        calib_s = time.monotonic() - started

        out_path = work_dir / f"model.int8.{recipe}.onnx"
        tail = float_tail(model) if rcp.keep_tail_float else []
        excluded = list(dict.fromkeys([*keep_float, *tail]))

        def requantize(exclude: Sequence[str]) -> None:
            _quantize_once(
                prepared,
                out_path,
                reader,
                recipe=rcp,
                method=method,
                exclude=exclude,
                cache_path=cache_path,
            )

        progress("quantize", 0.0, f"inserting Q/DQ ({recipe} recipe)")
        requantize(excluded)

        auto: list[str] = []
        reverted: list[str] = []
        errors: dict[str, float] = {}
        final_errors: dict[str, float] = {}
        out_err = final_out_err = None
        if auto_exclude:
            probe = calib.calib[: max(1, probe_frames)]
            feeds = [
                {image.name: np.concatenate([t] * batch, axis=0) if batch > 1 else t} for t in probe
            ]
            consumers = _quantized_consumers(model, rcp)
            progress("quantize", 0.5, "measuring per-node quantization error")
            errors, out_err = node_errors(prepared.path, out_path, feeds)
            final_errors, final_out_err = errors, out_err
            # A destroyed tensor hides the next culprit downstream (its added error looks
            # small when its inputs are already wrong), so exclude in a few rounds.
            for round_ in range(max_rounds):
                flagged = [n for n in find_outliers(final_errors) if n not in excluded + auto]
                # Q/DQ on a tensor comes from its producer *or* from consumers quantizing their
                # inputs, so a flagged node's quantized consumers stay float with it.
                new = list(
                    dict.fromkeys([*flagged, *(c for n in flagged for c in consumers.get(n, ()))])
                )
                new = [n for n in new if n not in excluded + auto]
                if not new:
                    break
                auto += new
                progress("quantize", 0.6 + 0.1 * round_, f"keeping in float: {new}")
                requantize(excluded + auto)
                final_errors, final_out_err = node_errors(prepared.path, out_path, feeds)
            if auto and final_out_err > 0.5 * out_err:
                # Keeping them float did not halve the output error: the spikes were noise,
                # not a quantization failure; do not pay for float nodes that buy nothing.
                reverted, auto = auto, []
                requantize(excluded)
                final_errors, final_out_err = errors, out_err
        progress("quantize", 1.0, f"wrote {out_path.name}")

    worst = sorted(final_errors.items(), key=lambda kv: -kv[1])[:8]
    report: dict[str, Any] = {
        "recipe": rcp.name,
        "recipe_description": rcp.description,
        "activation_type": rcp.activation_type,
        "weight_type": rcp.weight_type,
        "per_channel": rcp.per_channel,
        "op_types": list(rcp.op_types) if rcp.op_types else "all",
        "method": method,
        "percentile": percentile if method == "percentile" else None,
        "calibration_frames": len(calib.calib),
        "calibration_batch": batch,
        "calibration_cache": str(cache_path),
        "calibration_cache_hit": cache_hit,
        "calibrated_tensors": calibrated_tensors,
        "calibration_s": round(calib_s, 3),
        "reader_batches": reader.calls,
        "qdq_nodes": _count_qdq(out_path),
        "node_error_before": {n: round(e, 6) for n, e in sorted(errors.items())},
        "output_error_before": out_err,
        "output_error": final_out_err,
        "auto_exclusion_reverted": reverted,
        "float_tail": tail,
        "worst_node_errors": {n: round(e, 6) for n, e in worst},
        "prepare_notes": list(prepared.notes),
    }
    (work_dir / f"model.int8.{recipe}.json").write_text(json.dumps(report, indent=2, default=str))
    return QuantizedModel(
        path=out_path,
        recipe=recipe,
        method=method,
        excluded_nodes=tuple(excluded + auto),
        auto_excluded=tuple(auto),
        calib_sha256=calib.sha256,
        report=report,
    )
