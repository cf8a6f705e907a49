"""An engine artifact directory given on the command line (``inspect``, ``bench``, ``infer``)."""

from __future__ import annotations

from pathlib import Path

from agent.backends.base import Backend
from agent.backends.registry import get_backend
from agent.engine.cache import Artifact, load_artifact
from agent.engine.onnxfiles import ONNX_FILES

__all__ = ["dla_core", "load_with_backend"]


def load_with_backend(path: str) -> tuple[Artifact, Backend]:
    """(artifact, backend) for an artifact directory given on the command line."""
    artifact = load_artifact(Path(path))
    return artifact, get_backend(artifact.backend, onnx_files=ONNX_FILES)


def dla_core(artifact: Artifact) -> int | None:
    """The DLA core the artifact was built for, from the cache key in its manifest."""
    key = artifact.manifest.get("key")
    core = key.get("dla_core") if isinstance(key, dict) else None
    return core if isinstance(core, int) else None
