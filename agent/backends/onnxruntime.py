"""ONNX Runtime backend (CPU execution provider): the engine on plain hosts and the float
reference everywhere. The only module that imports ``onnxruntime`` for inference.

``build`` copies the (float or Q/DQ) model to ``out_dir/model.onnx`` and asks ONNX Runtime to
write its optimized graph to ``out_dir/model.optimized.onnx``, so ``inspect`` can show what was
fused and which nodes run in INT8. The runner always loads ``model.onnx`` (ONNX Runtime
re-optimizes it on load); the optimized file is for inspection.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from agent.backends.base import (
    BuildRequest,
    BuildResult,
    GraphNode,
    OnnxFiles,
    RunnerBase,
    TensorSpec,
    summarize_layer_times,
)
from agent.core.errors import BuildFailed, InternalError, ModelError
from agent.core.progress import ProgressFn, no_progress

__all__ = ["BACKEND", "OnnxRuntimeBackend", "OrtRunner", "make_backend"]

MAIN_FILE = "model.onnx"
OPTIMIZED_FILE = "model.optimized.onnx"
_PROVIDERS = ["CPUExecutionProvider"]
_NCHWC = "com.microsoft.nchwc"
_INT8 = {"INT8", "UINT8"}
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _dims(shape: Any) -> tuple[int | str, ...]:
    out: list[int | str] = []
    for d in shape or ():
        if (isinstance(d, int) and d > 0) or (isinstance(d, str) and d):
            out.append(d)
        else:
            out.append(-1)
    return tuple(out)


def _specs(args: Any) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(a.name, _dims(a.shape), _ORT_TYPES.get(str(a.type), str(a.type))) for a in args
    )


def _session_options(threads: int, level: ort.GraphOptimizationLevel) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    # No busy-waiting between runs. The agent holds several sessions (one per worker, plus the
    # float reference during validation); spinning threads of one session steal the cores the
    # next one needs (measured: FP32 detector p50 2.3 ms alone, 8.5 ms interleaved with a
    # spinning INT8 session on 2 cores) and burn power a Jetson's budget does not have.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def _copy_model(files: OnnxFiles, src: Path, out_dir: Path) -> list[str]:
    """Copy the model (and its external data files) into ``out_dir`` as ``model.onnx``."""
    if not files.external_data_files(src):
        shutil.copyfile(src, out_dir / MAIN_FILE)
        return [MAIN_FILE]
    # Re-save with one data file named after the artifact so the directory is self-contained.
    files.save_with_data_file(src, out_dir / MAIN_FILE)
    return [MAIN_FILE, MAIN_FILE + ".data"]


def _precision_of(node: GraphNode, types: Mapping[str, str]) -> str:
    if node.op_type.startswith("QLinear") or node.op_type in (
        "QuantizeLinear",
        "DequantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeLinear",
    ):
        return "int8"
    tensors = [*node.inputs, *node.outputs]
    if any(types.get(t) in _INT8 for t in tensors if t):
        return "int8"
    return "fp32"


def _fused_label(node: GraphNode) -> str:
    """``Conv+Relu`` for ORT's FusedConv with an activation attribute, else the op type."""
    if node.activation is not None:
        return f"{node.op_type.removeprefix('Fused')}+{node.activation}"
    return node.op_type


def _portable(onnx_files: OnnxFiles, path: Path) -> bool:
    if not path.is_file():
        return False
    return not any(node.domain == _NCHWC for node in onnx_files.nodes(path))


def _fusion_counts(onnx_files: OnnxFiles, main: Path, optimized: Path) -> dict[str, Any]:
    """``node_counts`` of the optimized graph (fused ops as ``Conv+Relu``) and ``fused_nodes``."""
    counts: dict[str, int] = {}
    source_ops = {n.op_type for n in onnx_files.nodes(main)}
    if optimized.is_file():
        for node in onnx_files.nodes(optimized):
            label = _fused_label(node)
            counts[label] = counts.get(label, 0) + 1
    return {
        "node_counts": dict(sorted(counts.items())),
        # ops ONNX Runtime created that the input graph did not have (QLinearConv,
        # Conv+Relu, QLinearAdd...): what its fusions made of the Q/DQ graph
        "fused_nodes": {k: v for k, v in sorted(counts.items()) if k not in source_ops},
    }


def _node_types(nodes: list[GraphNode], declared: Mapping[str, str]) -> dict[str, str]:
    """``declared`` element types, plus those of Q/DQ outputs, which are rarely listed in
    value_info: derived from the ops."""
    types = dict(declared)
    for node in nodes:
        if node.op_type == "QuantizeLinear" and len(node.inputs) > 2 and node.inputs[2]:
            types.setdefault(node.outputs[0], types.get(node.inputs[2], "UNDEFINED"))
        if node.op_type.startswith("QLinear") or node.op_type == "QuantizeLinear":
            for out in node.outputs:
                types.setdefault(out, "UINT8")
    return types


class OrtRunner(RunnerBase):
    """A CPU ``InferenceSession`` over one ONNX file. With ``profile_prefix`` the session
    records ONNX Runtime's profile (see :meth:`end_profiling`)."""

    def __init__(self, model_path: Path, *, threads: int = 0, profile_prefix: Path | None = None):
        self.model_path = Path(model_path)
        self.threads = threads
        self.profile_prefix = profile_prefix
        self._session: ort.InferenceSession | None = None

    @property
    def active(self) -> bool:
        return self._session is not None

    def activate(self) -> None:
        if self._session is not None:
            return
        if not self.model_path.is_file():
            raise ModelError(
                "artifact file is missing",
                fix="rebuild the engine (edge-agent build)",
                path=self.model_path,
            )
        options = _session_options(self.threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if self.profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(self.profile_prefix)
        try:
            session = ort.InferenceSession(str(self.model_path), options, providers=_PROVIDERS)
        except Exception as exc:
            raise ModelError(
                f"ONNX Runtime cannot load the model: {exc}",
                fix="rebuild the engine; if it persists, re-export the model",
                path=self.model_path,
            ) from exc
        self._session = session
        self._inputs = _specs(session.get_inputs())
        self._outputs = _specs(session.get_outputs())

    def deactivate(self) -> None:
        self._session = None

    def _active_session(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError("OrtRunner used before activate(); use it as `with runner:`")
        return self._session

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._active_session()
        names = [o.name for o in self._outputs]
        results = session.run(names, dict(feeds))
        return {name: np.asarray(value) for name, value in zip(names, results, strict=True)}

    def end_profiling(self) -> Path:
        """Stop profiling and return the JSON trace file (needs ``profile_prefix``)."""
        return Path(self._active_session().end_profiling())


class OnnxRuntimeBackend:
    """The ``Backend`` facade for ONNX Runtime on the CPU. ``onnx_files`` does the ONNX file
    work of ``build`` and ``inspect`` (``onnx`` lives above the backends); running needs none."""

    name = "onnxruntime"
    precisions: tuple[str, ...] = ("int8", "fp32")

    def __init__(self, onnx_files: OnnxFiles | None = None) -> None:
        self.onnx_files = onnx_files

    def _files(self) -> OnnxFiles:
        if self.onnx_files is None:
            raise InternalError(
                "the onnxruntime backend needs ONNX file tools to build or inspect: "
                "get_backend('onnxruntime', onnx_files=...)"
            )
        return self.onnx_files

    def available(self) -> tuple[bool, str]:
        providers = ort.get_available_providers()
        if "CPUExecutionProvider" not in providers:
            return False, f"CPUExecutionProvider missing (providers: {providers})"
        return True, f"onnxruntime {ort.__version__}"

    def version(self) -> str:
        return str(ort.__version__)

    def build(self, request: BuildRequest, progress: ProgressFn = no_progress) -> BuildResult:
        onnx_files = self._files()
        src = Path(request.onnx_path)
        out_dir = Path(request.out_dir)
        if not src.is_file():
            raise BuildFailed(
                "the ONNX file to build does not exist",
                fix="run prepare/quantize first",
                path=src,
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        progress("build", 0.0, f"copying {src.name}")
        try:
            files = _copy_model(onnx_files, src, out_dir)
        except Exception as exc:  # protobuf DecodeError, OSError, missing external data
            raise BuildFailed(
                f"cannot read the model to build: {type(exc).__name__}: {exc}",
                fix="run prepare/quantize again; the intermediate file is damaged",
                path=src,
            ) from exc
        main = out_dir / MAIN_FILE
        progress("build", 0.3, "optimizing with ONNX Runtime (ORT_ENABLE_ALL)")
        level_name = "ORT_ENABLE_ALL"
        optimized = out_dir / OPTIMIZED_FILE
        try:
            session = self._optimize(main, optimized, request.threads, "ORT_ENABLE_ALL")
        except Exception as exc:
            raise BuildFailed(
                f"ONNX Runtime could not load/optimize the model: {exc}",
                fix="check the model with `edge-agent inspect`; re-export it if ONNX Runtime "
                "rejects an operator",
                path=src,
            ) from exc
        # ORT_ENABLE_ALL may emit layout ops (com.microsoft.nchwc) sized for this CPU's vector
        # width; such a file is not portable, so write the EXTENDED graph instead. (The runner
        # always loads model.onnx with ORT_ENABLE_ALL: full speed, decided on the device.)
        if not _portable(onnx_files, optimized):
            session = self._optimize(main, optimized, request.threads, "ORT_ENABLE_EXTENDED")
            level_name = "ORT_ENABLE_EXTENDED"
        if optimized.is_file():
            files.append(OPTIMIZED_FILE)
        inputs = _specs(session.get_inputs())
        outputs = _specs(session.get_outputs())
        del session
        info = {
            "onnxruntime_version": str(ort.__version__),
            "providers": list(_PROVIDERS),
            "optimization_level": level_name,
            "precision": request.precision,
            **_fusion_counts(onnx_files, main, optimized),
        }
        progress("build", 1.0, "done")
        return BuildResult(
            main_file=MAIN_FILE, files=tuple(files), inputs=inputs, outputs=outputs, info=info
        )

    @staticmethod
    def _optimize(src: Path, optimized: Path, threads: int, level: str) -> ort.InferenceSession:
        options = _session_options(threads, getattr(ort.GraphOptimizationLevel, level))
        options.optimized_model_filepath = str(optimized)
        return ort.InferenceSession(str(src), options, providers=_PROVIDERS)

    def runner(
        self, artifact_dir: Path, main_file: str, *, threads: int = 0, dla_core: int | None = None
    ) -> OrtRunner:
        del dla_core  # no DLA on the CPU
        return OrtRunner(Path(artifact_dir) / main_file, threads=threads)

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
        """Per-node kernel time from ONNX Runtime's profiler over ``iterations`` runs."""
        del dla_core
        with tempfile.TemporaryDirectory(prefix="edge-agent-prof.") as tmp:
            runner = OrtRunner(
                Path(artifact_dir) / main_file, threads=threads, profile_prefix=Path(tmp) / "ort"
            )
            with runner:
                for _ in range(max(1, iterations)):
                    runner.infer(feeds)
                events: list[dict[str, Any]] = json.loads(runner.end_profiling().read_text())
        return summarize_layer_times(
            (
                str(ev["name"]).removesuffix("_kernel_time"),
                str(ev.get("args", {}).get("op_name", "?")),
                float(ev.get("dur", 0)),
            )
            for ev in events
            if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time")
        )

    def inspect(self, artifact_dir: Path, main_file: str) -> list[dict[str, Any]]:
        """Nodes of the optimized graph (or of ``main_file`` when none was written) with op type
        (fused ones as ``Conv+Relu``) and precision (int8 if any input/output is 8-bit)."""
        directory = Path(artifact_dir)
        path = directory / OPTIMIZED_FILE
        if not path.is_file():
            path = directory / main_file
        if not path.is_file():
            raise ModelError(
                "no model file in the artifact directory",
                fix="rebuild the engine (edge-agent build)",
                path=directory,
            )
        onnx_files = self._files()
        nodes = onnx_files.nodes(path)
        types = _node_types(nodes, onnx_files.declared_types(path))
        return [
            {
                "name": node.name,
                "op_type": _fused_label(node),
                "domain": node.domain or "ai.onnx",
                "precision": _precision_of(node, types),
            }
            for node in nodes
        ]


BACKEND = OnnxRuntimeBackend()


def make_backend(onnx_files: OnnxFiles | None = None) -> OnnxRuntimeBackend:
    """The facade for :func:`agent.backends.registry.get_backend`: with ``onnx_files`` one that
    can build and inspect, without it :data:`BACKEND` (runners and profiling only)."""
    return BACKEND if onnx_files is None else OnnxRuntimeBackend(onnx_files)
