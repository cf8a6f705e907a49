"""A fake ``tensorrt`` package per API generation, split by role: ``state`` (recorder, device
memory, enums), ``onnx_rules`` (what the parser checks and infers), ``network`` (logger, network,
parser), ``builder``, ``inspector``, ``context`` (execution, profiler, output allocator),
``runtime`` (engine, runtime), ``module`` (``make_fake_tensorrt``), ``cuda`` (the runner's CUDA
layer) and ``models`` (tiny ONNX models and the build request)."""

from tests.fakes.tensorrt.builder import MAGIC
from tests.fakes.tensorrt.cuda import FakeCuda
from tests.fakes.tensorrt.models import (
    SHAPES,
    build_request,
    onnx_dq_model,
    onnx_fp16_model,
    onnx_nonzero_model,
    onnx_relu_model,
)
from tests.fakes.tensorrt.module import (
    ALL_GENERATIONS,
    EXPECTED_FLAGS,
    GENERATIONS,
    JETPACK7_GENERATIONS,
    make_fake_tensorrt,
    make_stub_namespace,
)
from tests.fakes.tensorrt.onnx_rules import DQ_INPUT_TYPES, dequantize_input_errors
from tests.fakes.tensorrt.state import DeviceMemory, Recorder

__all__ = [
    "ALL_GENERATIONS",
    "DQ_INPUT_TYPES",
    "EXPECTED_FLAGS",
    "GENERATIONS",
    "JETPACK7_GENERATIONS",
    "MAGIC",
    "SHAPES",
    "DeviceMemory",
    "FakeCuda",
    "Recorder",
    "build_request",
    "dequantize_input_errors",
    "make_fake_tensorrt",
    "make_stub_namespace",
    "onnx_dq_model",
    "onnx_fp16_model",
    "onnx_nonzero_model",
    "onnx_relu_model",
]
