#!/usr/bin/env python3
"""INT8 vs FP32 on the CPU backend: speed, accuracy, build cost.

Builds the bundled detector and classifier and a ResNet-18-shaped CNN (random weights, 224x224,
speed only) with the ``cpu`` device profile through the real build path (isolated children,
validation gate, engine cache), then measures in one run:

* batch-1 latency p50/p99 of the INT8 and FP32 artifacts, interleaved round-robin so that noise
  hits both alike, and the speed-up ratio;
* accuracy on the held-out test assets: classifier top-1 accuracy (``labels.json``) in float and
  INT8 plus their top-1 agreement; detector mAP@0.5 (VOC all-point) in float and INT8 plus the
  gate's matched-box agreement;
* build and calibration times and the peak RSS of the build children.

Any other bundle (``--bundle DIR[:CALIB]``, repeatable) is built the same way on ``--profile``;
for every model a closing-note table gives the float and INT8 task metric against the bundle's
labelled held-out set (from the gate report), the agreement, the INT8 speed-up (interleaved),
the peak build RSS and the layers kept in float with their reason.

Prints Markdown (also to ``--md``) and writes everything as JSON to ``--out``.

    python scripts/bench_engine.py --out bench.json [--seconds 10] [--threads 0]
    python scripts/bench_engine.py --models '' --bundle path/to/bundle:path/to/calib --md bench.md
    python scripts/bench_engine.py --models det,cls --fixture yolov8n-shapes \
        --fixture yolo11n-shapes --fixture resnet-shapes --fixture mobilenetv3-shapes \
        --fixture dbnet-shapes --threads 1 --md bench.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agent.backends.registry import get_backend  # noqa: E402
from agent.config.build import DEFAULT_HELDOUT_FRAMES  # noqa: E402
from agent.config.device import DeviceProfile  # noqa: E402
from agent.config.model import ModelBundleConfig  # noqa: E402
from agent.config.profiles.store import ProfileStore  # noqa: E402
from agent.core.fsutil import atomic_write_json  # noqa: E402
from agent.engine.build.orchestrator import build_engine  # noqa: E402
from agent.engine.build.outcome import BuildOutcome  # noqa: E402
from agent.engine.cache import Artifact  # noqa: E402
from agent.engine.validate.gate import measure_latency  # noqa: E402
from agent.engine.validate.meanap import DetectionRecords, map50, match_frame  # noqa: E402
from agent.vision.decode import decode_yolov8  # noqa: E402
from agent.vision.letterbox import load_image_or_npy, preprocess  # noqa: E402
from tests.helpers.scenes import heldout_recipe, stage_bundle  # noqa: E402

MODELS = ROOT / "agent" / "data" / "models"
HELDOUT = ROOT / "agent" / "data" / "heldout"
CALIB = ROOT / "agent" / "data" / "calib"
FIXTURE_MODELS = ROOT / "tests" / "fixtures" / "models"


# ---------------------------------------------------------------------------- ResNet-18-like


def make_resnet18(path: Path, seed: int = 0, size: int = 224, classes: int = 1000) -> None:
    """A ResNet-18-shaped ONNX model (BN folded into conv bias) with He-initialised weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    counter = {"n": 0}

    def uid(prefix: str) -> str:
        counter["n"] += 1
        return f"{prefix}_{counter['n']}"

    def conv(x: str, cin: int, cout: int, k: int, s: int, *, relu: bool = True) -> str:
        name = uid("conv")
        w = rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
        b = rng.normal(0, 0.01, (cout,)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}.w"))
        inits.append(numpy_helper.from_array(b, f"{name}.b"))
        out = f"{name}.out"
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.w", f"{name}.b"],
                [out],
                name=name,
                kernel_shape=[k, k],
                strides=[s, s],
                pads=[k // 2] * 4,
            )
        )
        if not relu:
            return out
        r = f"{name}.relu"
        nodes.append(helper.make_node("Relu", [out], [r], name=uid("relu")))
        return r

    def block(x: str, cin: int, cout: int, stride: int) -> str:
        y = conv(x, cin, cout, 3, stride)
        y = conv(y, cout, cout, 3, 1, relu=False)
        short = x if stride == 1 and cin == cout else conv(x, cin, cout, 1, stride, relu=False)
        s = uid("add")
        nodes.append(helper.make_node("Add", [y, short], [s], name=s))
        r = uid("relu")
        nodes.append(helper.make_node("Relu", [s], [r], name=r))
        return r

    x = conv("images", 3, 64, 7, 2)
    nodes.append(
        helper.make_node(
            "MaxPool",
            [x],
            ["pool"],
            name="pool",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        )
    )
    x, cin = "pool", 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        x = block(x, cin, cout, stride)
        x = block(x, cout, cout, 1)
        cin = cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat", axis=1))
    fc_w = rng.normal(0, np.sqrt(1.0 / 512), (classes, 512)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc_w, "fc.w"))
    inits.append(numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b"))
    nodes.append(
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)
    )
    graph = helper.make_graph(
        nodes,
        "resnet18_like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))


def make_resnet_bundle(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    make_resnet18(directory / "model.onnx")
    (directory / "model.yaml").write_text(
        "# ResNet-18-shaped CNN with random weights: for speed only.\n"
        "name: resnet18-like\nversion: 1\ntask: classify\nonnx: model.onnx\n"
        "input: {name: images, size: [224, 224], resize: stretch,\n"
        "        mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}\n"
        "output: {decode: softmax_topk, name: logits, top_k: 5}\n"
        "tolerance: {top1_agreement_min: 0.0}  # random weights: the gate is not meaningful\n"
    )
    return directory


# ---------------------------------------------------------------------------- accuracy


def _bundle_config(artifact: Artifact) -> tuple[ModelBundleConfig, tuple[int, int]]:
    cfg = ModelBundleConfig.model_validate(artifact.manifest["bundle"]["config"])
    h, w = artifact.manifest["input_size_hw"]
    return cfg, (int(h), int(w))


def classifier_accuracy(artifacts: dict[str, Artifact], threads: int) -> dict[str, Any]:
    labels = json.loads((HELDOUT / "shapes-cls" / "labels.json").read_text())
    names = sorted(labels)
    backend = get_backend(artifacts["fp32"].backend)
    cfg, size = _bundle_config(artifacts["fp32"])
    tensors = [
        preprocess(load_image_or_npy(HELDOUT / "shapes-cls" / n), cfg.input, size)[0] for n in names
    ]
    truth = np.array([labels[n] for n in names])
    preds: dict[str, np.ndarray] = {}
    for prec, art in artifacts.items():
        with backend.runner(art.dir, art.main_file, threads=threads) as runner:
            preds[prec] = np.array(
                [
                    int(np.argmax(runner.infer({cfg.input.name: t})[cfg.output.name or "logits"]))
                    for t in tensors
                ]
            )
    acc = {p: float((v == truth).mean()) for p, v in preds.items()}
    return {
        "images": len(names),
        "top1_fp32": acc["fp32"],
        "top1_int8": acc["int8"],
        "drop_points": round(100.0 * (acc["fp32"] - acc["int8"]), 3),
        "top1_agreement": float((preds["int8"] == preds["fp32"]).mean()),
    }


def detector_map(artifacts: dict[str, Artifact], threads: int) -> dict[str, Any]:
    """mAP@0.5 (all-point, conf 0.001) in source-image coordinates, per precision, scored by the
    gate's own :mod:`agent.engine.validate.meanap`."""
    labels = json.loads((HELDOUT / "shapes-det" / "labels.json").read_text())
    names = sorted(labels)
    backend = get_backend(artifacts["fp32"].backend)
    cfg, size = _bundle_config(artifacts["fp32"])
    frames = [
        preprocess(load_image_or_npy(HELDOUT / "shapes-det" / n), cfg.input, size) for n in names
    ]
    gts = [
        (
            np.array([g["box"] for g in labels[n]], np.float32).reshape(-1, 4),
            np.array([g["label"] for g in labels[n]], np.int64),
        )
        for n in names
    ]
    out: dict[str, Any] = {"images": len(names)}
    for prec, art in artifacts.items():
        scores: list[np.ndarray] = []
        classes: list[np.ndarray] = []
        tps: list[np.ndarray] = []
        with backend.runner(art.dir, art.main_file, threads=threads) as runner:
            for (tensor, info), (gt_boxes, gt_cls) in zip(frames, gts, strict=True):
                raw = runner.infer({cfg.input.name: tensor})[cfg.output.name or "output0"]
                (dets,) = decode_yolov8(
                    raw, conf=0.001, iou=cfg.output.iou_threshold, max_det=cfg.output.max_detections
                )
                boxes = info.to_source(dets.boxes)
                tps.append(match_frame(boxes, dets.scores, dets.class_ids, gt_boxes, gt_cls))
                scores.append(dets.scores)
                classes.append(dets.class_ids)
        rec = DetectionRecords.build(scores, classes, tps, [g[1] for g in gts])
        out[f"map50_{prec}"] = float(np.nan_to_num(map50(rec)[0]))
    out["drop_points"] = round(100.0 * (out["map50_fp32"] - out["map50_int8"]), 3)
    return out


# ---------------------------------------------------------------------------- speed


def interleaved_latency(
    artifacts: dict[str, Artifact], seconds: float, threads: int
) -> dict[str, Any]:
    backend = get_backend(artifacts["fp32"].backend)
    art = artifacts["fp32"]
    spec = art.inputs[0]
    shape = tuple(int(d) if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
    feed = {spec.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    runners = {p: backend.runner(a.dir, a.main_file, threads=threads) for p, a in artifacts.items()}
    for r in runners.values():
        r.activate()
    try:
        stats = measure_latency(runners, feed, warmup=20, iterations=100_000, max_seconds=seconds)
    finally:
        for r in runners.values():
            r.deactivate()
    out: dict[str, Any] = {
        p: {
            "p50_ms": round(s.p50_ms, 4),
            "p99_ms": round(s.p99_ms, 4),
            "mean_ms": round(s.mean_ms, 4),
            "iterations": s.iterations,
        }
        for p, s in stats.items()
    }
    out["speedup_p50"] = round(stats["fp32"].p50_ms / stats["int8"].p50_ms, 3)
    out["speedup_p99"] = round(stats["fp32"].p99_ms / stats["int8"].p99_ms, 3)
    out["input_shape"] = list(shape)
    return out


# ---------------------------------------------------------------------------- main


def _build(bundle: Path, profile: DeviceProfile, calib: Path, cache: Path) -> BuildOutcome:
    return build_engine(
        bundle,
        profile,
        precision="auto",
        calib_dir=calib,
        cache_dir=cache,
        force=True,
        gate_seconds=2.0,
    )


def _with_calib_frames(profile: DeviceProfile, frames: int) -> DeviceProfile:
    calibration = profile.build.calibration.model_copy(update={"frames": frames})
    build = profile.build.model_copy(update={"calibration": calibration})
    return profile.model_copy(update={"build": build})


def _task_metric(report: dict[str, Any], precision: str) -> dict[str, Any] | None:
    result = report.get("results", {}).get(precision)
    metric = result.get("task_metric") if isinstance(result, dict) else None
    return metric if isinstance(metric, dict) else None


def _build_facts(outcome: BuildOutcome) -> dict[str, Any]:
    int8_art = outcome.artifacts.get("int8")
    q = int8_art.manifest.get("quantization", {}) if int8_art is not None else {}
    report = outcome.report.to_json()
    search = q.get("search") or {}
    return {
        "chosen": outcome.report.chosen,
        "why": outcome.report.why,
        "notes": list(outcome.notes),
        "timings_s": {k: round(v, 3) for k, v in outcome.timings.items()},
        "peak_rss_mib": None if outcome.peak_rss_mib is None else round(outcome.peak_rss_mib, 1),
        "gate": {
            p: {
                "metric": r.metric,
                "value": round(r.value, 4),
                "passed": r.passed,
                "p50_ms": None if r.p50_ms is None else round(r.p50_ms, 4),
                "task_metric": _task_metric(report, p),
            }
            for p, r in outcome.report.results.items()
        },
        "int8_built": int8_art is not None,
        "auto_excluded": q.get("auto_excluded", []),
        "float_layers": q.get("float_layers", []),
        "calibration_method": q.get("method"),
        "search_attempts": len(search.get("attempts") or []),
        "qdq_nodes": q.get("report", {}).get("qdq_nodes", {}),
    }


def _jobs(args: argparse.Namespace, profile: DeviceProfile, tmp: Path) -> list[_Job]:
    """The bundles to measure: ``--models`` (bundled ones) and each ``--bundle DIR[:CALIB]``."""
    wanted = {m for m in args.models.split(",") if m}
    jobs: list[_Job] = []
    if "det" in wanted:
        jobs.append(("shapes-det", MODELS / "shapes-det", CALIB / "shapes-det", profile))
    if "cls" in wanted:
        jobs.append(("shapes-cls", MODELS / "shapes-cls", CALIB / "shapes-cls", profile))
    if "resnet" in wanted:
        resnet = (
            profile
            if args.resnet_calib_frames is None
            else _with_calib_frames(profile, args.resnet_calib_frames)
        )
        bundle = make_resnet_bundle(tmp / "resnet18-like")
        jobs.append(("resnet18-like", bundle, CALIB / "shapes-det", resnet))
    for name in args.fixture:
        # a real export from tests/fixtures/models, staged with its labelled held-out set and a
        # calibration folder rendered from the same synthetic scenes (tests/helpers/scenes.py)
        # classifiers get the gate's default count (its power is stated for it); detectors
        # the recipe's scenes, whose boxes already give the gate its power
        src = FIXTURE_MODELS / name
        held = DEFAULT_HELDOUT_FRAMES if heldout_recipe(src).task == "classify" else None
        staged = stage_bundle(src, tmp, heldout_n=held, calib_n=args.fixture_calib)
        jobs.append((name, staged.bundle, staged.calib_dir or CALIB / name, profile))
    for spec in args.bundle:
        directory, _, calib = spec.partition(":")
        bundle = Path(directory)
        if not calib:
            own = bundle / "calib"
            calib = str(own if own.is_dir() else CALIB / bundle.name)
        jobs.append((bundle.name, bundle, Path(calib), profile))
    return jobs


_Job = tuple[str, Path, Path, DeviceProfile]


def _measure(job: _Job, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    name, bundle, calib, prof = job
    print(f"building {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    outcome = _build(bundle, prof, calib, cache)
    entry: dict[str, Any] = {"bundle": str(bundle), "build": _build_facts(outcome)}
    calibration = outcome.artifact.manifest.get("calibration", {})
    entry["build"]["calibration_frames"] = calibration.get("calib_frames")
    entry["build"]["wall_s"] = round(time.perf_counter() - started, 2)
    if "int8" not in outcome.artifacts or "fp32" not in outcome.artifacts:
        entry["latency"] = None
        return entry
    print(f"measuring {name} ...", file=sys.stderr, flush=True)
    entry["latency"] = interleaved_latency(outcome.artifacts, args.seconds, args.threads)
    if name == "shapes-cls":
        entry["accuracy"] = classifier_accuracy(outcome.artifacts, args.threads)
    elif name == "shapes-det":
        entry["accuracy"] = detector_map(outcome.artifacts, args.threads)
    return entry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="INT8 vs FP32: speed, accuracy against labels, build cost, per bundle."
    )
    parser.add_argument("--out", default="bench_engine.json", help="JSON results file")
    parser.add_argument("--md", default=None, help="also write the Markdown tables here")
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="interleaved latency budget per model (default 10)",
    )
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = auto)")
    parser.add_argument(
        "--models", default="det,cls,resnet", help="subset of det,cls,resnet ('' for none)"
    )
    parser.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="DIR[:CALIB]",
        help="another model bundle (repeatable); calibration frames default to DIR/calib, "
        "else agent/data/calib/<dir name>",
    )
    parser.add_argument(
        "--fixture",
        action="append",
        default=[],
        metavar="NAME",
        help="a real export from tests/fixtures/models (repeatable), e.g. yolov8n-shapes; "
        "staged with its labelled held-out set and rendered calibration frames",
    )
    parser.add_argument(
        "--fixture-calib",
        type=int,
        default=64,
        help="calibration frames rendered for each --fixture (default 64)",
    )
    parser.add_argument("--profile", default="cpu", help="device profile (default cpu)")
    parser.add_argument("--cache-dir", default=None, help="engine cache (default: a temp dir)")
    parser.add_argument(
        "--resnet-calib-frames",
        type=int,
        default=None,
        help="calibration frames for the 224x224 ResNet (default: the profile's)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    profile = ProfileStore().load(args.profile)
    flags = ""
    with contextlib.suppress(OSError):
        flags = Path("/proc/cpuinfo").read_text()
    results: dict[str, Any] = {
        "command": "python scripts/bench_engine.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "profile": profile.name,
        "host": {
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
            "python": platform.python_version(),
            "backend_version": get_backend("onnxruntime").version(),
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-engine.") as tmp:
        cache = Path(args.cache_dir) if args.cache_dir else Path(tmp) / "cache"
        for job in _jobs(args, profile, Path(tmp)):
            results["models"][job[0]] = _measure(job, cache, args)
    atomic_write_json(Path(args.out), results)
    text = markdown(results) + "\n\n" + closing_table(results)
    if args.md:
        Path(args.md).write_text(text + "\n")
    print(text)
    return 0


def _metric_text(metric: dict[str, Any] | None) -> str:
    if not metric:
        return "-"
    return (
        f"{metric['metric']} {100 * metric['value']:.2f} "
        f"[{100 * metric['ci_low']:.1f}, {100 * metric['ci_high']:.1f}]"
    )


def _closing_row(name: str, m: dict[str, Any]) -> str:
    b, lat = m["build"], m.get("latency")
    fp32, int8 = b["gate"].get("fp32", {}), b["gate"].get("int8", {})
    ft, it = fp32.get("task_metric"), int8.get("task_metric")
    delta = "-"
    if it and it.get("delta") is not None:
        delta = f"{100 * it['delta']:+.2f}"
    agreement = "-" if not int8 else f"{int8['metric']} {int8['value']:.4f}"
    speed = "-" if not lat else f"{lat['speedup_p50']:.2f}×"
    every = b["float_layers"]
    floats = [f for f in every if not str(f["reason"]).startswith("float tail")]
    kept = ", ".join(f"{f['node']} ({f['reason']})" for f in floats[:4]) or "none"
    if len(floats) > 4:
        kept += f", … ({len(floats)} in all)"
    if len(every) > len(floats):
        kept += f"; + {len(every) - len(floats)} float-tail nodes"
    if not b["int8_built"]:
        kept = "int8 not built (see notes)"
    return (
        f"| {name} | {_metric_text(ft)} | {_metric_text(it)} | {delta} | {agreement} "
        f"| {speed} | {b['peak_rss_mib']} | {len(floats)}: {kept} | {b['chosen']} |"
    )


def closing_table(results: dict[str, Any]) -> str:
    """The per-model table of the closing note: task metric against labels (float and INT8,
    95 % interval), agreement, INT8 speed-up (interleaved, batch 1), peak build RSS, layers
    kept in float."""
    lines = [
        f"Profile {results.get('profile', 'cpu')}; reproduce: `{results.get('command', '')}`",
        "",
        "| model | float metric vs labels | INT8 metric vs labels | Δ pt | agreement "
        "| INT8 speed-up (p50) | peak build RSS MiB | layers kept in float | served |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines.extend(_closing_row(name, m) for name, m in results["models"].items())
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    host = results["host"]
    lines = [
        f"CPU backend (onnxruntime {host['backend_version']}), {host['cpu_count']} cores, "
        f"VNNI={host['vnni']}, batch 1, interleaved INT8/FP32",
        "",
        "| model | FP32 p50 / p99 ms | INT8 p50 / p99 ms | speed-up p50 | accuracy FP32 → INT8 "
        "| agreement | build s (calib) | peak RSS MiB | auto picks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in results["models"].items():
        lat, b = m["latency"], m["build"]
        if lat is None:
            lines.append(f"| {name} | - | - | - | int8 not built | - | - | - | {b['chosen']} |")
            continue
        acc = m.get("accuracy", {})
        if "top1_fp32" in acc:
            accuracy = (
                f"top-1 {100 * acc['top1_fp32']:.2f} → {100 * acc['top1_int8']:.2f} % "
                f"(−{acc['drop_points']:.2f} pt)"
            )
            agreement = f"top-1 {100 * acc['top1_agreement']:.1f} %"
        elif "map50_fp32" in acc:
            accuracy = (
                f"mAP50 {100 * acc['map50_fp32']:.2f} → {100 * acc['map50_int8']:.2f} "
                f"(−{acc['drop_points']:.2f} pt)"
            )
            agreement = f"boxes {100 * b['gate']['int8']['value']:.1f} %"
        else:
            accuracy = "see the closing table"
            agreement = "-" if "int8" not in b["gate"] else f"{b['gate']['int8']['value']:.4f}"
        t = b["timings_s"]
        total = sum(t.values())
        lines.append(
            f"| {name} | {lat['fp32']['p50_ms']:.3f} / {lat['fp32']['p99_ms']:.3f} "
            f"| {lat['int8']['p50_ms']:.3f} / {lat['int8']['p99_ms']:.3f} "
            f"| {lat['speedup_p50']:.2f}× | {accuracy} | {agreement} "
            f"| {total:.1f} ({t.get('calibrate', 0):.1f}) | {b['peak_rss_mib']} | {b['chosen']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
