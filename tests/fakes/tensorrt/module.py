"""``make_fake_tensorrt``: a fake ``tensorrt`` module per release ("8.6", "10.3", "10.13", "10.16",
"11.0", "11.4.0", "11.4.1").

Only what ``agent/backends/tensorrt/`` calls is mirrored, with the names and parameter names of
the real API (checked against ``tensorrt-stubs`` by ``tests/backends/test_tensorrt_stubs.py``).
The generations differ where TensorRT does:

* 8.6: ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` (the ONNX parser refuses implicit-batch
  networks), no ``STRONGLY_TYPED``; ``Builder.build_engine``/``max_batch_size``; the bindings API
  (``num_bindings``, ``binding_is_input``, ``execute_async_v2``) beside the tensor API;
  ``MemoryPoolType.TACTIC_DRAM`` is new in 8.6.
* 10.3: EXPLICIT_BATCH still present (ignored), STRONGLY_TYPED present; no bindings API, no
  ``build_engine``; ``TACTIC_SHARED_MEMORY``. A strongly typed network rejects precision flags.
* 10.13 (JetPack 7.0/7.1) and 10.16 (JetPack 7.2): the 10.3 API plus
  ``NetworkDefinitionCreationFlag.PREFER_JIT/AOT_PYTHON_PLUGINS`` (bits 2 and 3 in NvInfer.h at tag
  v10.16 of github.com/NVIDIA/TensorRT). ``BuilderFlag.FP16/INT8`` are deprecated since 10.12
  but present.
* 11.0, 11.4.0, 11.4.1 (JetPack 7.2.2): no EXPLICIT_BATCH, no ``BuilderFlag.INT8/FP16/
  OBEY_PRECISION_CONSTRAINTS``, no ``Builder.platform_has_fast_fp16``; ``STRONGLY_TYPED`` is bit 0
  and ignored, PREFER_JIT/AOT_PYTHON_PLUGINS bits 1 and 2 (NvInfer.h at tag v11.1; the "Removed
  Python APIs" table of NVIDIA's 10.x → 11.x migration guide); every network is strongly typed;
  the inspector writes ``"I/O Tensors"`` objects instead of ``"Bindings"``. 11.4.0 and 11.4.1
  share the API: they differ in where DLA exists, which the agent decides from the release
  (:mod:`agent.backends.tensorrt.dla`), not from the module.

``Builder.num_DLA_cores`` is ``module._fake.dla_cores`` (2, as on AGX Orin; set it to 0 to stand
for a TensorRT that offers no DLA on the device).

Rules on every generation: the parser refuses a DequantizeLinear whose input is not a quantized
type; the builder refuses a DLA build with a dynamic profile, a strongly typed DLA build with no
FP16/INT8 tensor, and DLA pools that are not powers of two; an output with a data-dependent shape
(NonZero, NonMaxSuppression) runs only through an ``IOutputAllocator``.

Every call is recorded in ``module._fake.calls`` as ``(method, *args)``; the built "engine" is
JSON behind a magic prefix, and its execution context computes ``relu(first input)`` for each
output through the fake device memory, so a runner round-trip is checkable. With an
``IProfiler`` set as the context's ``profiler`` (and ``enqueue_emits_profile`` left True), each
execution calls ``report_layer_time`` once per layer with ``module._fake.layer_ms[name]``
(default ``0.25 * (index + 1)`` ms).
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np

from tests.fakes.tensorrt.builder import install_builder
from tests.fakes.tensorrt.context import install_context
from tests.fakes.tensorrt.inspector import install_inspector
from tests.fakes.tensorrt.network import install_network
from tests.fakes.tensorrt.runtime import install_runtime
from tests.fakes.tensorrt.state import Fake, Recorder, make_enum

#: one release per API generation (the ``fake`` fixture's parameters); 11.x is 11.4.1, the
#: 11.x that JetPack ships (7.2.2+)
GENERATIONS = ("8.6", "10.3", "11.4.1")
#: the JetPack 7 releases: 10.13 (7.0/7.1), 10.16 (7.2), 11.4.0 (no JetPack), 11.4.1 (7.2.2+)
JETPACK7_GENERATIONS = ("10.13", "10.16", "11.4.0", "11.4.1")
ALL_GENERATIONS = ("8.6", "10.3", "10.13", "10.16", "11.0", "11.4.0", "11.4.1")
_WEAK = ((), ("INT8", "FP16"), ("FP16",))
_STRONG: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] = ((), (), ())
#: what each generation's build sets: (network flags, builder flags for int8, for fp16)
EXPECTED_FLAGS = {
    "8.6": (("EXPLICIT_BATCH",), ("INT8", "FP16"), ("FP16",)),
    "10.3": _WEAK,
    "10.13": _WEAK,
    "10.16": _WEAK,
    "11.0": _STRONG,
    "11.4.0": _STRONG,
    "11.4.1": _STRONG,
}

#: ``tensorrt.__version__``: 10.13.3.9 and 10.16.1.11 as NVIDIA's packages name them (the
#: tensorrt-cu13-bindings 10.13.3.9 and tensorrt 10.16.1.11 wheels); NVIDIA's install pages give
#: 11.4.x's build number only as "11.4.1.x", so the 11.4 fakes carry the product version alone.
VERSIONS = {
    "8.6": "8.6.1.6",
    "10.3": "10.3.0.30",
    "10.13": "10.13.3.9",
    "10.16": "10.16.1.11",
    "11.0": "11.0.0.11",
    "11.4.0": "11.4.0",
    "11.4.1": "11.4.1",
}


def _creation_flags(version: str) -> dict[str, int]:
    """``NetworkDefinitionCreationFlag`` members and bits per release (NvInfer.h)."""
    major, minor = (int(p) for p in version.split(".")[:2])
    if major >= 11:
        return {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}
    ndcf = {"EXPLICIT_BATCH": 0}
    if major >= 10:
        ndcf["STRONGLY_TYPED"] = 1
    if (major, minor) >= (10, 13):
        ndcf |= {"PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3}
    return ndcf


def _install_enums(mod: Any, major: int, ndcf: dict[str, int]) -> None:
    flags = {"GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6}
    if major < 11:
        flags |= {"FP16": 0, "INT8": 1, "OBEY_PRECISION_CONSTRAINTS": 8}
    pools = {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2, "DLA_GLOBAL_DRAM": 3}
    pools["TACTIC_DRAM"] = 4  # 8.6+
    if major >= 10:
        pools["TACTIC_SHARED_MEMORY"] = 5
    dtypes = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "INT64": 8}
    mod.NetworkDefinitionCreationFlag = make_enum("NetworkDefinitionCreationFlag", ndcf)
    mod.BuilderFlag = make_enum("BuilderFlag", flags)
    mod.MemoryPoolType = make_enum("MemoryPoolType", pools)
    mod.DeviceType = make_enum("DeviceType", {"GPU": 0, "DLA": 1})
    mod.ProfilingVerbosity = make_enum(
        "ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2}
    )
    mod.LayerInformationFormat = make_enum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})
    mod.TensorIOMode = make_enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    mod.DataType = make_enum("DataType", dtypes)


def make_fake_tensorrt(version: str = "10.3") -> types.ModuleType:
    """A fresh fake ``tensorrt`` module for one release; its recorder is ``module._fake``."""
    if version not in ALL_GENERATIONS:
        raise ValueError(f"version must be one of {ALL_GENERATIONS}")
    major = int(version.split(".", maxsplit=1)[0])
    mod: Any = types.ModuleType("tensorrt")
    mod.__version__ = VERSIONS[version]
    mod._fake = Recorder(version)
    ndcf = _creation_flags(version)
    _install_enums(mod, major, ndcf)
    np_by_dt = {
        "FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
        "INT64": np.int64,
    }  # fmt: skip
    fk = Fake(mod, mod._fake, major, ndcf, np_by_dt=np_by_dt)
    for install in (install_network, install_builder, install_inspector, install_context):
        install(fk)
    install_runtime(fk)
    return mod


def make_stub_namespace() -> types.ModuleType:
    """What ``import tensorrt`` yields where only tensorrt-stubs is installed: an empty namespace
    package (a ``tensorrt/`` directory holding ``__init__.pyi``)."""
    mod = types.ModuleType("tensorrt")
    mod.__path__ = ["/site-packages/tensorrt"]  # type: ignore[attr-defined]
    mod.__file__ = None
    return mod
