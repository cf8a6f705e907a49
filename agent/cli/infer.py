"""``edge-agent infer ARTIFACT INPUT...``: run images or ``.npy`` tensors, print decoded results.

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
from agent.cli.artifacts import dla_core, load_with_backend
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


def _cmd_infer(args: argparse.Namespace) -> int:
    artifact, backend = load_with_backend(args.artifact)
    model = _model_of(artifact)
    out_dir = Path(args.out) if args.out else None
    runner = backend.runner(
        artifact.dir, artifact.main_file, threads=args.threads, dla_core=dla_core(artifact)
    )
    with runner:
        results = [_infer_one(runner, Path(raw), model, out_dir) for raw in args.inputs]
    doc = {"artifact": str(artifact.dir), "precision": artifact.precision, "results": results}
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
    p = sub.add_parser("infer", help="run images or .npy tensors through an engine artifact")
    p.add_argument("artifact", help="artifact directory (printed by build)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or .npy arrays")
    p.add_argument("--out", default=None, help="write raw outputs (.npy) and results.json here")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = backend default)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_infer)
