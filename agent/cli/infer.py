"""``edge-agent infer MODEL INPUT...``: run images or ``.npy`` tensors, print decoded results.

MODEL is an artifact directory, an ``.onnx`` (built on the fly) or a TensorRT plan
(:mod:`agent.cli.artifacts`); a bare plan has no bundle, so it takes float ``.npy`` tensors
as they are and prints the raw outputs' shapes (``--out`` keeps them).

Images (and uint8 ``.npy`` frames) are preprocessed with the bundle's input spec; an image
smaller than :data:`~agent.vision.letterbox.MIN_FRAME_SIDE` pixels per side is refused (exit 2)
with its name. Float ``.npy`` tensors go in as they are. A classifier's probabilities get a
softmax unless the bundle's ``output.softmax`` says the model ends in one. ``--out DIR``
keeps each raw output as ``.npy`` plus ``results.json``.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import Runner
from agent.cli.artifacts import add_model_args, dla_core, open_model
from agent.cli.common import print_json
from agent.config.model import ModelBundleConfig
from agent.core.errors import ArtifactError, ModelError
from agent.core.fsutil import atomic_write_bytes, atomic_write_json
from agent.engine.cache import Artifact
from agent.engine.output_softmax import settle_output_softmax
from agent.engine.validate.metrics import select_output
from agent.vision.decode import decode_yolov8, softmax_topk
from agent.vision.letterbox import LetterboxInfo, load_image_or_npy, preprocess, validate_frame

__all__ = ["register"]


@dataclass(frozen=True)
class _Model:
    """What the artifact's manifest says about its inputs and outputs."""

    config: ModelBundleConfig
    labels: list[str]
    size_hw: tuple[int, int]

    @property
    def expected(self) -> tuple[int, ...]:
        h, w = self.size_hw
        return (1, 3, h, w) if self.config.input.layout == "NCHW" else (1, h, w, 3)


def _model_of(artifact: Artifact) -> _Model:
    bundle = artifact.manifest.get("bundle")
    if not isinstance(bundle, dict) or "config" not in bundle:
        raise ArtifactError(
            "the manifest carries no bundle configuration, so inputs cannot be preprocessed",
            fix="rebuild the artifact with `edge-agent build`",
            path=artifact.dir,
        )
    config = ModelBundleConfig.model_validate(bundle["config"])
    if "directory" in bundle:  # an artifact built before output.softmax was settled at load
        config = settle_output_softmax(config, Path(str(bundle["directory"])) / config.onnx)
    labels = [str(x) for x in bundle.get("labels", [])]
    size_hw = tuple(int(v) for v in artifact.manifest.get("input_size_hw", ()))
    if len(size_hw) != 2:
        raise ArtifactError(
            "the manifest has no input_size_hw", fix="rebuild the artifact", path=artifact.dir
        )
    return _Model(config, labels, (size_hw[0], size_hw[1]))


def _decode(
    model: _Model, outputs: dict[str, np.ndarray], letterbox: LetterboxInfo | None
) -> dict[str, Any]:
    task, spec, labels = model.config.task, model.config.output, model.labels
    if task == "classify" or spec.decode == "softmax_topk":
        ids, probs = softmax_topk(
            select_output(outputs, spec).reshape(1, -1),
            spec.top_k,
            apply_softmax=spec.applies_softmax,
        )
        return {
            "top_k": [
                {
                    "class_id": int(c),
                    "label": labels[int(c)] if int(c) < len(labels) else None,
                    "prob": round(float(p), 6),
                }
                for c, p in zip(ids[0], probs[0], strict=True)
            ]
        }
    if task == "detect" or spec.decode == "yolov8":
        (dets,) = decode_yolov8(
            select_output(outputs, spec)[:1],
            conf=spec.conf_threshold,
            iou=spec.iou_threshold,
            max_det=spec.max_detections,
        )
        items = dets.to_json(labels)
        if letterbox is not None and len(dets):
            boxes = letterbox.to_source(dets.boxes)
            for item, box in zip(items, boxes, strict=True):
                item["box"] = [round(float(v), 2) for v in box]
        return {"detections": items, "coordinates": "source" if letterbox is not None else "input"}
    return {}


def _tensor(path: Path, model: _Model) -> tuple[np.ndarray, LetterboxInfo | None]:
    """The input tensor for one file, and the letterbox when it was preprocessed."""
    data = load_image_or_npy(path)
    if path.suffix.lower() != ".npy" or data.dtype == np.uint8:
        frame = validate_frame(data, what=str(path))  # too small, wrong shape: names the file
        return preprocess(frame, model.config.input, model.size_hw)
    tensor = np.ascontiguousarray(data, dtype=np.float32)
    if tensor.shape == model.expected[1:]:
        tensor = tensor[None]
    if tensor.shape != model.expected:
        raise ModelError(
            f"tensor has shape {tuple(data.shape)}; the engine needs {model.expected}",
            fix="save a preprocessed float32 tensor of that shape, or a uint8 "
            "H x W x 3 frame to have it preprocessed",
            path=path,
        )
    return tensor, None


def _save_outputs(out_dir: Path, path: Path, outputs: dict[str, np.ndarray]) -> dict[str, str]:
    saved: dict[str, str] = {}
    for name, value in outputs.items():
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        target = out_dir / f"{path.stem}.{safe}.npy"
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        atomic_write_bytes(target, buf.getvalue())
        saved[name] = str(target)
    return saved


def _infer_one(runner: Runner, path: Path, model: _Model, out_dir: Path | None) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError("input file does not exist", fix="check the path", path=path)
    tensor, letterbox = _tensor(path, model)
    started = time.perf_counter()
    outputs = runner.infer({model.config.input.name: tensor})
    latency = (time.perf_counter() - started) * 1000.0
    item: dict[str, Any] = {
        "input": str(path),
        "task": model.config.task,
        "latency_ms": round(latency, 3),
        "outputs": {k: list(v.shape) for k, v in outputs.items()},
    }
    if letterbox is not None:
        item["source_size"] = [letterbox.src_w, letterbox.src_h]
    item.update(_decode(model, outputs, letterbox))
    if out_dir is not None:
        item["saved"] = _save_outputs(out_dir, path, outputs)
    return item


def _infer_raw(runner: Runner, path: Path, out_dir: Path | None) -> dict[str, Any]:
    """A bare plan: a float ``.npy`` tensor into its only input, raw outputs out."""
    if path.suffix.lower() != ".npy" or not path.is_file():
        raise ModelError(
            "a bare TensorRT plan has no model.yaml to preprocess images with; give a "
            "preprocessed float .npy tensor",
            fix="save the input tensor with numpy.save, or infer the artifact directory or the "
            ".onnx (their bundle says how to preprocess images)",
            path=path,
        )
    if len(runner.inputs) != 1:
        raise ModelError(
            f"the plan has inputs {[t.name for t in runner.inputs]}; infer feeds one",
            fix="use a model with one input",
            path=path,
        )
    spec = runner.inputs[0]
    tensor = np.ascontiguousarray(load_image_or_npy(path), dtype=np.dtype(spec.dtype))
    started = time.perf_counter()
    outputs = runner.infer({spec.name: tensor})
    item: dict[str, Any] = {
        "input": str(path),
        "task": "raw",
        "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
        "outputs": {k: list(v.shape) for k, v in outputs.items()},
    }
    if out_dir is not None:
        item["saved"] = _save_outputs(out_dir, path, outputs)
    return item


def _cmd_infer(args: argparse.Namespace) -> int:
    loaded = open_model(args)
    artifact, backend = loaded.artifact, loaded.backend
    model = None if loaded.bare_plan else _model_of(artifact)
    out_dir = Path(args.out) if args.out else None
    runner = backend.runner(
        artifact.dir, artifact.main_file, threads=args.threads, dla_core=dla_core(artifact)
    )
    with runner:
        results = [
            _infer_raw(runner, Path(raw), out_dir)
            if model is None
            else _infer_one(runner, Path(raw), model, out_dir)
            for raw in args.inputs
        ]
    doc = {
        "artifact": str(artifact.dir),
        "source": loaded.source,
        "precision": artifact.precision,
        "results": results,
    }
    if out_dir is not None:
        atomic_write_json(out_dir / "results.json", doc)
    if args.json:
        print_json(doc)
        return 0
    _print_results(results)
    return 0


def _print_results(results: Sequence[dict[str, Any]]) -> None:
    for item in results:
        if "top_k" in item:
            best = item["top_k"][0]
            extra = ", ".join(
                f"{t['label'] or t['class_id']} {t['prob']:.3f}" for t in item["top_k"]
            )
            print(f"{item['input']}: {best['label'] or best['class_id']} ({extra})")
        elif "detections" in item:
            print(f"{item['input']}: {len(item['detections'])} detection(s)")
            for det in item["detections"]:
                name = det.get("label", det["class_id"])
                print(f"  {name:<12} {det['score']:.3f}  box {det['box']}")
        else:
            print(f"{item['input']}: outputs {item['outputs']}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``infer`` to the ``edge-agent`` parser."""
    p = sub.add_parser(
        "infer",
        help="run images or .npy tensors through a model",
        description="Run images or .npy tensors through an artifact directory, an .onnx (built "
        "on the fly) or a TensorRT plan, and print the decoded results.",
    )
    add_model_args(p, "run")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or .npy arrays")
    p.add_argument("--out", default=None, help="write raw outputs (.npy) and results.json here")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = backend default)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON document")
    p.set_defaults(handler=_cmd_infer)
