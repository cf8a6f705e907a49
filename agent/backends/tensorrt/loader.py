"""The lazy ``tensorrt`` import and the small loaders every TensorRT step uses.

This package is the only place that imports ``tensorrt``, and it does so here, once: ``trt`` is
the module for the type checker and a proxy at run time that imports ``tensorrt`` on first
attribute access, so the agent imports everywhere. :func:`load_trt` is the checked import (it
says how to install TensorRT); the loaders below are small callables in the Polygraphy style.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from agent.core.errors import ArtifactError, BackendUnavailable

if TYPE_CHECKING:
    import tensorrt as trt
else:

    class _LazyTensorRT:
        """Resolves ``tensorrt`` from ``sys.modules`` (importing it if needed) on each access."""

        def __getattr__(self, name: str) -> Any:
            return getattr(importlib.import_module("tensorrt"), name)

    trt = _LazyTensorRT()

INSTALL_FIX = (
    "install TensorRT from JetPack: sudo apt install python3-libnvinfer; "
    "use a venv with --system-site-packages"
)
ENGINE_FILE = "engine.plan"
MIB = 1024 * 1024


def load_trt() -> ModuleType:
    """Import ``tensorrt`` or raise :class:`BackendUnavailable` saying how to install it.

    ``tensorrt-stubs`` installs a ``tensorrt/`` directory holding only ``__init__.pyi``: Python
    imports it as an empty namespace package, so a module without ``Builder`` is "not installed".
    """
    try:
        module = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise BackendUnavailable(f"cannot import tensorrt ({exc})", fix=INSTALL_FIX) from exc
    if not hasattr(module, "Builder"):
        raise BackendUnavailable(
            "the importable 'tensorrt' has no Builder (it is the type-stubs package, "
            f"found at {list(getattr(module, '__path__', []))}), not TensorRT",
            fix=INSTALL_FIX,
        )
    return module


_NP_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


def np_dtype_name(dtype: object) -> str:
    """numpy name of a ``trt.DataType`` (BF16/FP8/INT4 have no numpy type: lower-case name)."""
    name = str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1].upper()
    return _NP_DTYPES.get(name, name.lower())


class _DimsLike(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> int: ...


def dims(shape: _DimsLike) -> tuple[int, ...]:
    """``trt.Dims`` → tuple (the stubs declare ``__len__``/``__getitem__``, not ``__iter__``)."""
    return tuple(int(shape[i]) for i in range(len(shape)))


# tensorrt-stubs 10.13 defect: its module declares ``bool`` as a ``DataType`` constant, which
# shadows builtins.bool in its own annotations, and it names ``typing_extensions.Buffer`` without
# importing it. Members returning ``bool`` or taking a buffer therefore read as partially Unknown;
# those few calls carry ``pyright: ignore[reportUnknownMemberType]`` and wrap results in bool().


def is_none(value: object) -> bool:
    """TensorRT returns None on failure where the stubs promise an object (build, deserialize)."""
    return value is None


class LogMessages(Protocol):
    """What a logger from :func:`make_logger` keeps."""

    errors: list[str]
    warnings: list[str]


def make_logger() -> trt.ILogger:
    """A ``trt.ILogger`` that keeps warnings and errors, so a failed build can show them."""
    error_level = int(trt.ILogger.ERROR)
    warning_level = int(trt.ILogger.WARNING)

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            level = int(severity)
            if level <= error_level:
                self.errors.append(str(msg))
            elif level == warning_level:
                self.warnings.append(str(msg))

    return CollectingLogger()


def messages(logger: trt.ILogger) -> LogMessages:
    return logger  # type: ignore[return-value]  # CollectingLogger from make_logger


def looks_like_oom(errors: Sequence[str]) -> bool:
    text = " ".join(errors).lower()
    keys = ("out of memory", "outofmemory", "insufficient memory", "requested amount of gpu")
    return any(key in text for key in keys)


@dataclass
class LayerTimes:
    """What a profiler from :func:`make_profiler` collects: (layer name, ms) per layer run."""

    recording: bool = True
    times: list[tuple[str, float]] = field(default_factory=list[tuple[str, float]])


def make_profiler(sink: LayerTimes) -> trt.IProfiler:
    """A ``trt.IProfiler`` whose ``report_layer_time`` appends to ``sink`` while it records."""

    class CollectingProfiler(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            if sink.recording:
                sink.times.append((str(layer_name), float(ms)))

    return CollectingProfiler()


def read_engine(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactError(
            "engine file is missing", fix="rebuild the model with 'edge-agent build'", path=path
        ) from exc


def deserialize(
    logger: trt.ILogger, data: bytes, path: Path, dla_core: int | None = None
) -> tuple[trt.Runtime, trt.ICudaEngine]:
    """Runtime + engine from the plan bytes; ``dla_core``: the DLA core to load it on."""
    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = dla_core
    engine = runtime.deserialize_cuda_engine(data)  # pyright: ignore[reportUnknownMemberType]
    if is_none(engine):
        raise ArtifactError(
            "TensorRT could not deserialize the engine (built by another TensorRT version, for "
            "another GPU, or the file is damaged)",
            fix="delete the cached engine and rebuild it on this device",
            path=path,
        )
    return runtime, engine
