"""Quantization recipes: how each backend wants its Q/DQ graph (data, no tooling).

TensorRT wants symmetric S8 activations and per-channel symmetric S8 weights, Q/DQ on the
*inputs* of the layers it fuses (never an INT32 bias behind a DequantizeLinear); ONNX Runtime's
CPU kernels are fast with asymmetric U8 activations and S8 weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["RECIPES", "Method", "Recipe"]

log = logging.getLogger(__name__)

Method = Literal["entropy", "minmax", "percentile"]


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

#: Weighted layers whose outputs TensorRT fuses with the next op: no output Q/DQ on them.
_FUSED_OUTPUT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

#: ``quantize_static`` options for TensorRT, after NVIDIA Model Optimizer's own ORT settings
#: (NVIDIA/Model-Optimizer ``modelopt/onnx/quantization/int8.py``, ``_configure_ort``'s
#: ``trt_guided_options``: QuantizeBias False, ActivationSymmetric,
#: OpTypesToExcludeOutputQuantization = every op type, DedicatedQDQPair,
#: QDQOpTypePerChannelSupportToAxis {Conv: 0, ConvTranspose: 1}). Differences, on purpose:
#: output Q/DQ is excluded only on the fused weighted layers, because ORT's QDQDirect8BitOp
#: (MaxPool, Resize...) quantizes nothing but its output unless ForceQuantizeNoInputCheck is
#: set, so excluding every output would leave those ops float; and weights stay ORT's default
#: S8 initializer + DequantizeLinear rather than AddQDQPairToWeight (float weight + Q + DQ).
_TENSORRT_ORT_OPTIONS: dict[str, Any] = {
    # Bias stays float. ORT's default quantizes each Conv/Gemm bias to an INT32 initializer
    # behind a DequantizeLinear, and TensorRT's ONNX parser accepts only 8-bit quantized types
    # (INT8; FP8/INT4 on 10.x+) as DequantizeLinear input: onnx-tensorrt docs/operators.md
    # ("INT8, INT4, and FP8 are treated as Quantized Types"), failing with "only activation types
    # allowed as input to this layer" (microsoft/onnxruntime#14229, onnx/onnx-tensorrt#850).
    # TensorRT folds the float bias into the INT8 kernel itself.
    "QuantizeBias": False,
    # No Q/DQ on the outputs of the layers TensorRT fuses with what follows (Conv+BN+ReLU,
    # Conv+Add, Gemm/MatMul+activation): a Q/DQ there splits the fusion and adds reformats.
    # The next quantized layer puts its own Q/DQ on its input instead (after the activation).
    "OpTypesToExcludeOutputQuantization": list(_FUSED_OUTPUT_OPS),
    # Relu/Clip must stay in the graph: TensorRT fuses them itself, and with symmetric
    # activations removing them would change the result.
    "QDQKeepRemovableActivations": True,
    # One Q/DQ pair per consumer: TensorRT propagates and fuses each pair on its own.
    "DedicatedQDQPair": True,
    # Per-channel weight axis = output channels. ORT's QDQConv/QDQGemm pick it themselves
    # (Conv [K, C, R, S] -> 0, ConvTranspose [C, K, R, S] -> 1, Gemm by transB) and do not read
    # this map; MatMul (weights [C, K]) does and needs 1.
    "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
}

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
        # ORT's defaults do neither on their own (QDQConv/QDQGemm/QDQMatMul quantize their
        # outputs and their bias): ``extra_options`` below turn both off.
        op_types=_COMPUTE_OPS,
        extra_options=_TENSORRT_ORT_OPTIONS,
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
