#!/usr/bin/env python3
"""Preprocessing host overhead per frame: capture → model-input tensor.

CPU path (always): a 1280×720 frame, letterboxed to 640×640 into the preallocated (pinned when
CUDA is present) NCHW buffer — measured from the decoded BGR frame, and from the JPEG bytes
(``cv2.imdecode`` included). GPU path (when CUDA works): pinned staging copy + upload + the
fused kernel + stream sync, timed by wall clock and by CUDA events; plus how far the GPU tensor
is from the CPU one. p50/p95 over ``--frames`` iterations after ``--warmup``.

    python3 scripts/bench_preprocess.py --frames 500 --out out/bench_preprocess.json

Writes JSON to ``--out`` and the same figures as markdown next to it (``.md``), and prints the
markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.backends.cuda import runtime as cuda_runtime
from agent.config.model import InputSpec
from agent.pipeline.preprocess.cpu_path import CpuPreprocessor
from agent.pipeline.preprocess.geometry import tolerance
from agent.pipeline.preprocess.gpu_path import GpuPreprocessor


def _stats(ms: list[float]) -> dict[str, float]:
    arr = np.asarray(ms, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 4),
        "p95_ms": round(float(np.percentile(arr, 95)), 4),
        "mean_ms": round(float(arr.mean()), 4),
        "min_ms": round(float(arr.min()), 4),
        "n": int(arr.size),
    }


def _scene(height: int, width: int) -> np.ndarray:
    """A camera-like frame: smooth gradients, shapes and sensor noise (JPEG-compressible)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width * 200, yy / height * 180, (xx + yy) / (width + height) * 220], -1)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    frame = np.clip(img, 0, 255).astype(np.uint8)
    for i in range(12):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(frame, centre, int(rng.integers(10, 120)), colour, -1 if i % 2 else 4)
    return frame


def _bench_cpu(
    spec: InputSpec, size: tuple[int, int], frame: np.ndarray, jpeg: np.ndarray, args: Any
) -> dict[str, Any]:
    with CpuPreprocessor(spec, size, batch=1) as pre:
        for _ in range(args.warmup):
            pre.process([frame])
        tensor_ms: list[float] = []
        for _ in range(args.frames):
            t0 = time.perf_counter()
            pre.process([frame])
            tensor_ms.append((time.perf_counter() - t0) * 1e3)
        decode_ms: list[float] = []
        for _ in range(args.frames):
            t0 = time.perf_counter()
            decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
            if decoded is None:
                raise SystemExit("cv2.imdecode failed")
            pre.process([decoded])
            decode_ms.append((time.perf_counter() - t0) * 1e3)
        # The GPU is compared with the CPU tensor of the same frame (not the JPEG-decoded one).
        pre.process([frame])
        reference = pre.download().copy()
        return {
            "pinned_buffer": pre.pinned,
            "bgr_to_tensor": _stats(tensor_ms),
            "jpeg_to_tensor": _stats(decode_ms),
            "reference": reference,
        }


def _bench_gpu(
    spec: InputSpec, size: tuple[int, int], frame: np.ndarray, reference: np.ndarray, args: Any
) -> dict[str, Any]:
    with (
        cuda_runtime.Stream() as stream,
        GpuPreprocessor(spec, size, batch=1, stream=stream) as pre,
        cuda_runtime.Event() as start,
        cuda_runtime.Event() as end,
    ):
        for _ in range(args.warmup):
            pre.process([frame])
        pre.synchronize()
        wall_ms: list[float] = []
        event_ms: list[float] = []
        for _ in range(args.frames):
            t0 = time.perf_counter()
            start.record(stream)
            pre.process([frame])
            end.record(stream)
            end.synchronize()
            wall_ms.append((time.perf_counter() - t0) * 1e3)
            event_ms.append(start.elapsed_ms(end))
        assert pre.kernel is not None
        got = pre.download()
        diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
        max_tol, mean_tol = tolerance(spec)
        major, minor = cuda_runtime.compute_capability()
        return {
            "arch": pre.kernel.arch,
            "compute_capability": f"{major}.{minor}",
            "upload_kernel_sync_wall": _stats(wall_ms),
            "upload_kernel_events": _stats(event_ms),
            "agreement_vs_cpu": {
                "max_abs": float(diff.max()),
                "mean_abs": float(diff.mean()),
                "identical_fraction": float((diff == 0).mean()),
                "tolerance_max": max_tol,
                "tolerance_mean": mean_tol,
                "within": bool(diff.max() <= max_tol and diff.mean() <= mean_tol),
            },
        }


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Preprocess benchmark: {report['source']} → {report['input']} ({report['resize']})",
        "",
        f"Host: {report['host']}; {report['frames']} frames after {report['warmup']} warm-up.",
        "",
        "| path | p50 ms | p95 ms | mean ms |",
        "|---|---|---|---|",
    ]
    cpu = report["cpu"]
    for key, label in (
        ("bgr_to_tensor", "CPU: BGR frame → tensor (letterbox, normalise, NCHW)"),
        ("jpeg_to_tensor", "CPU: JPEG decode + BGR → tensor"),
    ):
        s = cpu[key]
        lines.append(f"| {label} | {s['p50_ms']} | {s['p95_ms']} | {s['mean_ms']} |")
    gpu = report.get("gpu")
    if isinstance(gpu, dict) and "upload_kernel_sync_wall" in gpu:
        for key, label in (
            ("upload_kernel_sync_wall", "GPU: staging + upload + kernel + sync (wall)"),
            ("upload_kernel_events", "GPU: upload + kernel (CUDA events)"),
        ):
            s = gpu[key]
            lines.append(f"| {label} | {s['p50_ms']} | {s['p95_ms']} | {s['mean_ms']} |")
        agree = gpu["agreement_vs_cpu"]
        lines += [
            "",
            f"GPU ({gpu['arch']}) vs CPU: max |Δ| {agree['max_abs']:.3g} "
            f"(≤ {agree['tolerance_max']:.3g}), mean |Δ| {agree['mean_abs']:.3g} "
            f"(≤ {agree['tolerance_mean']:.3g}), identical {agree['identical_fraction']:.4%}.",
        ]
    else:
        lines += ["", f"GPU path not measured: {gpu}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--size", type=int, default=640, help="square model input size")
    parser.add_argument("--resize", choices=("letterbox", "stretch"), default="letterbox")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU path")
    parser.add_argument("--out", type=Path, default=Path("out/bench_preprocess.json"))
    args = parser.parse_args(argv)

    spec = InputSpec(name="images", resize=args.resize)
    size = (args.size, args.size)
    frame = _scene(args.height, args.width)
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise SystemExit("cv2.imencode failed")

    cpu = _bench_cpu(spec, size, frame, jpeg, args)
    reference = cpu.pop("reference")
    gpu: dict[str, Any] | str
    usable, why = cuda_runtime.available()
    if args.no_gpu:
        gpu = "skipped (--no-gpu)"
    elif not usable:
        gpu = f"CUDA not available: {why}"
    else:
        gpu = _bench_gpu(spec, size, frame, reference, args)

    report: dict[str, Any] = {
        "source": f"{args.width}x{args.height}",
        "input": f"{args.size}x{args.size}",
        "resize": args.resize,
        "frames": args.frames,
        "warmup": args.warmup,
        "host": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
        f"OpenCV {cv2.__version__}, numpy {np.__version__}, cv2 threads {cv2.getNumThreads()}",
        "cpu": cpu,
        "gpu": gpu,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    markdown = _markdown(report)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
