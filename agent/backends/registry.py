"""Backend selection: the name a device profile gives (``build.backend``) → its backend facade."""

from __future__ import annotations

import importlib

from agent.backends.base import Backend, OnnxFiles
from agent.core.errors import BackendUnavailable

#: backend name → the module whose ``make_backend`` returns its facade, imported on first use (so
#: a host without TensorRT, or one that never runs ONNX Runtime, does not pay for the import)
BACKEND_MODULES = {
    "onnxruntime": "agent.backends.onnxruntime",
    "tensorrt": "agent.backends.tensorrt.backend",
}


def get_backend(name: str, *, onnx_files: OnnxFiles | None = None) -> Backend:
    """Import the backend module lazily and return its facade. ``onnx_files``: the ONNX file
    tools a backend that reads ONNX graphs itself (ONNX Runtime's build and inspect) needs."""
    module_name = BACKEND_MODULES.get(name)
    if module_name is None:
        raise BackendUnavailable(
            f"unknown backend '{name}'",
            fix=f"use one of {sorted(BACKEND_MODULES)} in the device profile's build.backend",
        )
    module = importlib.import_module(module_name)
    backend: Backend = module.make_backend(onnx_files)
    ok, why = backend.available()
    if not ok:
        raise BackendUnavailable(
            f"backend '{name}' is not usable here: {why}",
            fix="pick a device profile whose build.backend is available on this host "
            "(the cpu profile uses onnxruntime)",
        )
    return backend
