"""The :class:`agent.backends.base.Backend` facade for TensorRT (``BACKEND``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from agent.backends.base import BuildRequest, BuildResult, OnnxFiles
from agent.backends.tensorrt.build import build_engine
from agent.backends.tensorrt.inspect import inspect_engine
from agent.backends.tensorrt.loader import load_trt
from agent.backends.tensorrt.plan import detect_capabilities, offered_precisions
from agent.backends.tensorrt.runner import TrtRunner
from agent.core.errors import BackendUnavailable
from agent.core.progress import ProgressFn, no_progress


class TensorRTBackend:
    """:class:`agent.backends.base.Backend` for TensorRT."""

    name = "tensorrt"

    @property
    def precisions(self) -> tuple[str, ...]:
        """int8, fp16, fp32; no fp16 on a TensorRT without the FP16 builder flag (11.x, see
        :func:`~agent.backends.tensorrt.plan.offered_precisions`)."""
        try:
            return offered_precisions(detect_capabilities(load_trt()))
        except BackendUnavailable:
            return ("int8", "fp16", "fp32")

    def available(self) -> tuple[bool, str]:
        try:
            caps = detect_capabilities(load_trt())
        except BackendUnavailable as exc:
            return False, str(exc)
        if not (caps.io_tensors_api or caps.bindings_api) or not caps.memory_pool_api:
            return False, f"TensorRT {caps.version} is too old (need 8.6 or newer)"
        if "fp16" not in offered_precisions(caps):
            return True, (
                f"TensorRT {caps.version} (strongly typed: fp16 not offered, no FP16 builder "
                "flag; convert the ONNX with Model Optimizer AutoCast for FP16)"
            )
        return True, f"TensorRT {caps.version}"

    def version(self) -> str:
        return detect_capabilities(load_trt()).version

    def build(self, request: BuildRequest, progress: ProgressFn = no_progress) -> BuildResult:
        return build_engine(request, progress)

    def runner(
        self, artifact_dir: Path, main_file: str, *, threads: int = 0, dla_core: int | None = None
    ) -> TrtRunner:
        return TrtRunner(artifact_dir, main_file, threads=threads, dla_core=dla_core)

    def profile_layers(
        self,
        artifact_dir: Path,
        main_file: str,
        feeds: Mapping[str, NDArray[Any]],
        *,
        iterations: int,
        threads: int = 0,
        dla_core: int | None = None,
    ) -> list[dict[str, Any]]:
        """Per-layer time from a ``trt.IProfiler`` (see :meth:`TrtRunner.profile_layers`)."""
        with self.runner(artifact_dir, main_file, threads=threads, dla_core=dla_core) as runner:
            return runner.profile_layers(feeds, iterations=iterations)

    def inspect(self, artifact_dir: Path, main_file: str) -> list[dict[str, Any]]:
        return inspect_engine(artifact_dir, main_file)


BACKEND = TensorRTBackend()


def make_backend(onnx_files: OnnxFiles | None = None) -> TensorRTBackend:
    """The facade for :func:`agent.backends.registry.get_backend`; TensorRT parses ONNX itself
    (its own parser), so ``onnx_files`` is not needed."""
    del onnx_files
    return BACKEND
