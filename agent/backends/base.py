"""Builder and Runner protocols shared by every inference backend.

A *builder* turns a prepared ONNX file (float, or explicit Q/DQ INT8) into artifact files inside
a directory; a *runner* loads those files and runs inference. Runners are context managers in the
Polygraphy style: ``activate`` allocates (sessions, contexts, buffers), ``infer`` runs, and
``deactivate`` frees. Only ``backends/tensorrt/`` imports tensorrt and only
``backends/onnxruntime.py`` imports onnxruntime; :mod:`agent.backends.registry` picks a backend
by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from agent.core.progress import ProgressFn, no_progress

Precision = Literal["int8", "fp16", "fp32"]
Shape = tuple[int, ...]

_R = TypeVar("_R", bound="RunnerBase")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (-1 or a symbol name for dynamic dimensions) and numpy dtype of a tensor."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), tuple(data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class InputShapes:
    """Optimization-profile shapes of one input."""

    min: Shape
    opt: Shape
    max: Shape

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class TargetBoard:
    """The board a build is for: the device profile's name, ``identity.family`` and
    ``identity.dla_cores``, and the JetPack of the detected L4T release (None when unknown).
    Backends check board-dependent features (the DLA) against it."""

    profile: str
    family: str
    dla_cores: int
    jetpack: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "family": self.family,
            "dla_cores": self.dla_cores,
            "jetpack": self.jetpack,
        }


@dataclass(frozen=True)
class BuildRequest:
    """Everything a backend needs to build one artifact. Paths are absolute."""

    onnx_path: Path
    out_dir: Path
    precision: Precision
    shapes: Mapping[str, InputShapes]
    workspace_mib: int
    optimization_level: int = 3
    dla_core: int | None = None
    gpu_fallback: bool = True
    timing_cache: Path | None = None
    threads: int = 0
    static_shapes: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict[str, Any])
    #: the build child's memory cap (the profile's ``build.build_memory_cap_mib``): TensorRT bounds
    #: its builder pools by it (on unified memory they are invisible to the child's RSS watch)
    memory_cap_mib: int | None = None
    #: the board the engine is built for (None: not known, e.g. a build outside a profile)
    board: TargetBoard | None = None


@dataclass(frozen=True)
class BuildResult:
    """Files written into ``BuildRequest.out_dir`` (relative names) and backend facts."""

    main_file: str
    files: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    info: Mapping[str, Any] = field(default_factory=dict[str, Any])


@dataclass(frozen=True)
class DeviceTensor:
    """A runner input already in device memory (e.g. the GPU preprocessor's output), written
    by work queued on the runner's own CUDA stream: a runner whose ``accepts_device_inputs`` is
    True binds ``ptr`` as the input address, with no copy and no synchronization."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class GraphNode:
    """One node of an ONNX graph as a backend reads it (see :class:`OnnxFiles`)."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    #: the node's ``activation`` string attribute (ONNX Runtime's fused ops), if it has one
    activation: str | None = None


class OnnxFiles(Protocol):
    """The ONNX file work a backend needs but does not do itself: ``onnx`` has one home,
    :mod:`agent.engine.onnxgraph`, above the backends, so the caller passes an implementation
    in (``agent.engine.onnxfiles.ONNX_FILES``)."""

    def external_data_files(self, path: Path) -> list[str]:
        """Sorted locations of the initializers stored outside the file."""
        ...

    def save_with_data_file(self, src: Path, dst: Path) -> None:
        """Load ``src`` with its external data and write it to ``dst`` with every large tensor
        in one ``<dst name>.data`` file next to it."""
        ...

    def nodes(self, path: Path) -> list[GraphNode]:
        """The graph's nodes in order (external data is not loaded)."""
        ...

    def declared_types(self, path: Path) -> dict[str, str]:
        """Tensor name → element type name (``FLOAT``, ``INT8``...) of the graph's inputs,
        outputs, value infos and initializers, as declared in the file."""
        ...


@runtime_checkable
class Runner(Protocol):
    """Runs inference on one artifact. Use as a context manager."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def activate(self) -> None: ...

    def deactivate(self) -> None: ...

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def __enter__(self) -> Runner: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class StageTimedRunner(Protocol):
    """A runner that can time each inference's stages (TensorRT: CUDA events around the H2D
    copies, the engine and the D2H copies). ``timing`` is off by default, so serving pays
    nothing; ``edge-agent bench`` turns it on before activating."""

    timing: bool

    def last_stage_ms(self) -> Mapping[str, float] | None:
        """Milliseconds of the last inference's ``h2d``, ``compute`` and ``d2h`` (None: none)."""
        ...

    def transfers_note(self) -> str | None:
        """Why the transfers are 0 (zero-copy on an integrated GPU), else None."""
        ...


@runtime_checkable
class ProfileShapedRunner(Protocol):
    """An (active) runner that reads its engine's optimization profile (a bare TensorRT plan has
    no manifest that records it)."""

    def profile_shapes(self) -> dict[str, InputShapes]:
        """min/opt/max of each dynamic input."""
        ...


class RunnerBase(ABC):
    """Context-manager plumbing and the I/O specs (set by ``activate``) for runners."""

    _inputs: tuple[TensorSpec, ...] = ()
    _outputs: tuple[TensorSpec, ...] = ()

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @abstractmethod
    def activate(self) -> None:
        """Load the artifact and allocate sessions, contexts and buffers."""

    @abstractmethod
    def deactivate(self) -> None:
        """Free what :meth:`activate` allocated; calling it again does nothing."""

    def __enter__(self: _R) -> _R:
        self.activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.deactivate()


def summarize_layer_times(samples: Iterable[tuple[str, str, float]]) -> list[dict[str, Any]]:
    """``(layer name, op type, microseconds)`` per executed layer → one row per layer with
    ``name, op_type, total_us, calls, avg_ms, percent``, the slowest first."""
    totals: dict[str, dict[str, Any]] = {}
    for name, op_type, micros in samples:
        item = totals.setdefault(
            name, {"name": name, "op_type": op_type, "total_us": 0.0, "calls": 0}
        )
        item["total_us"] += float(micros)
        item["calls"] += 1
    grand = sum(i["total_us"] for i in totals.values()) or 1.0
    layers = sorted(totals.values(), key=lambda i: -i["total_us"])
    for item in layers:
        item["avg_ms"] = round(item["total_us"] / max(1, item["calls"]) / 1000.0, 4)
        item["percent"] = round(100.0 * item["total_us"] / grand, 2)
        item["total_us"] = round(item["total_us"], 1)
    return layers


class Backend(Protocol):
    """A backend module's facade: capability check, builder, runner factory and profiler."""

    name: str

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions ``build`` accepts (may depend on the installed version)."""
        ...

    def available(self) -> tuple[bool, str]:
        """(usable here?, why not / version string)."""
        ...

    def version(self) -> str: ...

    def build(self, request: BuildRequest, progress: ProgressFn = no_progress) -> BuildResult: ...

    def runner(
        self, artifact_dir: Path, main_file: str, *, threads: int = 0, dla_core: int | None = None
    ) -> Runner:
        """A runner for the artifact; ``dla_core``: the DLA core it was built for (or None)."""
        ...

    def profile_layers(
        self,
        artifact_dir: Path,
        main_file: str,
        feeds: Mapping[str, np.ndarray],
        *,
        iterations: int,
        threads: int = 0,
        dla_core: int | None = None,
    ) -> list[dict[str, Any]]:
        """Per-layer time over ``iterations`` runs of ``feeds`` (rows of
        :func:`summarize_layer_times`, the slowest first)."""
        ...

    def inspect(self, artifact_dir: Path, main_file: str) -> list[dict[str, Any]]:
        """Layers after fusion with their precision."""
        ...
