"""Text files of the real-export bundles: model.yaml, labels.txt, README.md, LICENSE-NOTE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.vision.synthetic import LABELS

if TYPE_CHECKING:
    from real_assets_eval import Spec

ULTRALYTICS_NOTE = """\
This ONNX file was exported by Ultralytics (https://github.com/ultralytics/ultralytics), which is
licensed under the GNU Affero General Public License v3.0 (AGPL-3.0). The network architecture
and the exporter are Ultralytics'; the weights were trained here from scratch (no pretrained
weights) on synthetic scenes from agent/vision/synthetic.py. Treat the file as AGPL-3.0.

It is a TEST ASSET ONLY: it lives under tests/fixtures/, which is not part of the edge-agent
wheel (pyproject.toml packages only agent*, and package data only agent/data/**), and it must
never be shipped with the agent or copied into agent/data/.
"""

TORCH_NOTE = """\
Made here with PyTorch and torchvision (BSD-3-Clause) from randomly initialised weights trained on
synthetic scenes from agent/vision/synthetic.py; no pretrained weights or external data. The
weights are the project's own test data, under the project's licence. Test asset only
(tests/fixtures/ is not packaged in the wheel).
"""


def _yaml_floats(v: tuple[float, ...]) -> str:
    return "[" + ", ".join(repr(x) for x in v) + "]"


def model_yaml(spec: Spec) -> str:
    h, w = spec.size_hw
    lines = [f"name: {spec.name}", "version: 1", f"task: {spec.task}", "onnx: model.onnx", "input:"]
    lines += [
        f"  name: {'images' if spec.task == 'detect' else 'x'}",
        "  layout: NCHW",
        "  color: rgb",
        f"  resize: {spec.resize}",
        f"  size: [{h}, {w}]",
    ]
    if spec.resize == "letterbox":
        lines.append("  pad_value: 114")
    lines.append("  scale: 0.00392156862745098")
    if spec.mean != (0.0, 0.0, 0.0):
        lines += [f"  mean: {_yaml_floats(spec.mean)}", f"  std: {_yaml_floats(spec.std)}"]
    lines.append("output:")
    if spec.task == "detect":
        lines += ["  decode: yolov8", "  name: output0", "  conf_threshold: 0.25",
                  "  iou_threshold: 0.5", "  max_detections: 100"]  # fmt: skip
        tol = ["tolerance:", "  box_agreement_min: 0.95"]
    elif spec.task == "classify":
        lines += ["  decode: softmax_topk", "  name: logits", f"  top_k: {len(LABELS)}"]
        tol = ["tolerance:", "  top1_agreement_min: 0.99"]
    else:
        lines += ["  decode: raw", "  name: maps"]
        tol = ["tolerance:", "  relative_error_max: 0.05"]
    return "\n".join([*lines, "labels: labels.txt", *tol]) + "\n"


def write_static_files(out: Path, spec: Spec) -> None:
    (out / "model.yaml").write_text(model_yaml(spec), encoding="utf-8")
    labels = ("shape",) if spec.task == "raw" else LABELS
    (out / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    yolo = spec.name.startswith("yolo")
    (out / "LICENSE-NOTE").write_text(ULTRALYTICS_NOTE if yolo else TORCH_NOTE, encoding="utf-8")


PROPERTIES = {
    "yolov8n-shapes": "input `images` [batch, 3, height, width] (all dynamic, from Ultralytics' "
    "`dynamic=True`); output `output0` [batch, 8, anchors]: cx, cy, w, h in input pixels + 4 "
    "sigmoid class scores (decode `yolov8`).",
    "yolo11n-shapes": "input `images` static [1, 3, 320, 320]; output `output0` [1, 8, 2100] "
    "(decode `yolov8`).",
    "mobilenetv3-shapes": "input `x` [N, 3, ?, ?]: H and W share the dim name `?` (as PaddlePaddle "
    "exports do), so pinning by name would pin both; model.yaml's size is non-square (128x160) so "
    "that mistake shows. BatchNormalization nodes are left unfused (TrainingMode.PRESERVE). "
    "INT8 is no speed win here: with BN folded (ORT basic optimizer) and static QDQ per-channel "
    "INT8, ORT CPU at 1 thread ran it at 0.73x FP32 (depthwise convs, HardSwish, SE blocks); "
    "use resnet-shapes for the 'INT8 >= 1.2x FP32' check.",
    "resnet-shapes": "same export as mobilenetv3-shapes (shared `?` H/W dims, unfused "
    "BatchNormalization), ResNet-18 layout at a quarter of the width (torchvision BasicBlock). "
    "With BN folded and static QDQ per-channel INT8, ORT CPU at 1 thread ran it at 1.88x FP32.",
    "dbnet-shapes": "input `x` [N, 3, 640, 640]; output `maps` [N, 1, 640, 640], a dense sigmoid "
    "probability map (DBNet's probability branch); target = the shapes' boxes filled. "
    "BatchNormalization unfused. Task `raw`.",
    "anon-dims": "input `x` with batch `dim_value: -1` and H, W anonymous (neither dim_value nor "
    "dim_param): exported by torch with named dynamic axes, then those dims rewritten with the "
    "onnx Python API, which is what some exporters emit.",
}


def write_readme(out: Path, spec: Spec, data: dict[str, Any]) -> None:
    fl, train = data["float"], data["train"]
    ho = fl["heldout"]
    text = f"""# {spec.name}

Test asset for issue #13 (real exported models). Made by `scripts/make_real_assets.py`
(`--only {spec.name}`); measured by `scripts/real_assets_eval.py`. Licence: see `LICENSE-NOTE`.

- Framework: {data["framework"]}
- Export: {data["export"]}
- Properties: {PROPERTIES[spec.name]}
- Parameters: {data["parameters"]:,}; model.onnx {fl["file_bytes"]:,} bytes
- Training: {train["epochs"]} epochs on {train["images"]} synthetic images, {train["seconds"]} s on
  {train["device"]}{" (quick smoke run)" if data.get("quick") else ""}

Made on a lent GPU machine (one H200) with, for the YOLO bundles,
`--device 0 --yolo-time 0.085 --yolo-images 4000 --yolo-batch 64 --workers 5` and, for the
torch bundles, `--device 0 --cls-images 8000 --cls-epochs 15 --seg-images 1500 --seg-epochs 15`;
the default `--device cpu` reproduces them on any machine (slowly). No weights or data are
downloaded: YOLO starts from its YAML, the rest from random initialisation.

## Float metric (ONNX Runtime {fl["onnxruntime"]}, CPU)

{fl["metric"]} = **{fl["value"]}** on {ho["n"]} held-out {spec.task} images
({ho["size_wh"][0]}x{ho["size_wh"][1]}, seed {ho["seed"]}) written by
`tests.helpers.scenes.write_heldout(bundle, "{spec.task}", {ho["n"]}, {tuple(ho["size_wh"])})`.
Latency at 1 thread, batch 1: {fl["ort_cpu_1thread_ms"]} ms on {fl["measured_on"]}.

```json
{json.dumps(fl, indent=1)}
```
"""
    (out / "README.md").write_text(text, encoding="utf-8")
