"""Quantization recipes: how each backend wants its Q/DQ graph (data, no tooling).

TensorRT wants symmetric S8 activations and per-channel symmetric S8 weights with Q/DQ only
where it can fuse them; ONNX Runtime's CPU kernels are fast with asymmetric U8 activations and
S8 weights.
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
