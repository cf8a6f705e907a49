"""Jobs the build child runs: module-level functions ``target(progress, *args)``, pickled by
reference, so their module (and the backend it imports) loads in the child under the cap."""

from __future__ import annotations

import logging
from pathlib import Path

from agent.backends.base import BuildRequest, BuildResult
from agent.backends.registry import get_backend
from agent.core.progress import ProgressFn
from agent.engine.modelcheck import load_onnx
from agent.engine.onnxfiles import ONNX_FILES
from agent.engine.onnxgraph import external_locations

__all__ = ["backend_build_target", "external_locations_target"]

log = logging.getLogger(__name__)


def backend_build_target(
    progress: ProgressFn, backend_name: str, request: BuildRequest
) -> BuildResult:
    """Child-side build: import the backend (after the memory cap is in place) and build."""
    backend = get_backend(backend_name, onnx_files=ONNX_FILES)
    return backend.build(request, progress)


def external_locations_target(progress: ProgressFn, onnx_path: str) -> list[str]:
    """Child-side: the ``location`` of every external-data tensor of the ONNX file (parsed
    without its external data; :class:`ModelError` when it is not a readable ONNX model)."""
    progress("inspect", 0.0, f"reading {onnx_path}")
    return sorted(external_locations(load_onnx(Path(onnx_path))))
