#!/usr/bin/env python3
"""Pipeline efficiency: whole-pipeline fps (file decode included) / raw runner throughput.

Both are measured in one run on the same engine, worker count and batch:

* raw: W threads, each with its own runner, calling ``infer`` on one preprocessed tensor as fast
  as they can for ``--seconds``;
* pipeline: the bundled sample video (looped, not paced) through sources → dispatcher → pool
  (preprocess, infer, postprocess) → a counting sink, for ``--seconds``.

Also reports the per-stage latency p50/p99 of the pipeline run. Markdown on stdout, JSON to --out.

    python scripts/bench_pipeline.py --workers 2 --rounds 3 --seconds 5 --out bench_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from agent.backends.registry import get_backend  # noqa: E402
from agent.config.agent import SourceConfig  # noqa: E402
from agent.config.profiles.store import ProfileStore  # noqa: E402
from agent.engine.build.orchestrator import build_engine  # noqa: E402
from agent.engine.bundle import load_bundle  # noqa: E402
from agent.pipeline.assembly import build_pipeline  # noqa: E402
from agent.pipeline.frames import Result  # noqa: E402
from agent.pipeline.pipeline import PipelineOptions  # noqa: E402
from agent.vision.letterbox import preprocess  # noqa: E402

BUNDLE = ROOT / "agent" / "data" / "models" / "shapes-det"
VIDEO = ROOT / "agent" / "data" / "samples" / "shapes.mp4"
CALIB = ROOT / "agent" / "data" / "calib" / "shapes-det"


class CountingSink:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def write(self, result: Result) -> None:
        with self.lock:
            self.count += 1

    def close(self) -> None:
        return None


def raw_throughput(
    artifact: Any, bundle_dir: Path, workers: int, threads: int, seconds: float
) -> float:
    """Inferences per second of ``workers`` runners on one preprocessed frame."""
    bundle = load_bundle(bundle_dir)
    ok, frame = cv2.VideoCapture(str(VIDEO)).read()
    if not ok:
        raise SystemExit(f"cannot read {VIDEO}")
    size = bundle.config.input.size or (256, 256)
    tensor, _ = preprocess(frame, bundle.config.input, size)
    feed = {artifact.inputs[0].name: tensor[None] if tensor.ndim == 3 else tensor}
    backend = get_backend(artifact.backend)
    counts = [0] * workers
    start_gate = threading.Barrier(workers + 1)
    stop = threading.Event()

    def work(i: int) -> None:
        with backend.runner(artifact.dir, artifact.main_file, threads=threads) as runner:
            for _ in range(5):
                runner.infer(feed)
            start_gate.wait()
            while not stop.is_set():
                runner.infer(feed)
                counts[i] += 1

    pool = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in pool:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - t0
    for t in pool:
        t.join()
    return sum(counts) / elapsed


def pipeline_throughput(
    artifact: Any,
    bundle_dir: Path,
    workers: int,
    threads: int,
    seconds: float,
    *,
    gpu_preprocess: bool = False,
) -> tuple[float, dict[str, Any]]:
    bundle = load_bundle(bundle_dir)
    sink = CountingSink()
    src = SourceConfig(name="video", type="file", uri=str(VIDEO), model="m", loop=True)
    pipe = build_pipeline(
        model=bundle.config.name,
        artifact=artifact,
        backend=get_backend(artifact.backend),
        bundle=bundle.config,
        labels=bundle.labels,
        sources=[src],
        sink=sink,  # type: ignore[arg-type]
        options=PipelineOptions(
            workers=workers,
            max_batch=1,
            threads_per_worker=threads,
            prefer_gpu_preprocess=gpu_preprocess,
        ),
    ).start()
    time.sleep(1.0)  # warm-up: runners loaded, queues full
    with sink.lock:
        first = sink.count
    t0 = time.perf_counter()
    time.sleep(seconds)
    with sink.lock:
        last = sink.count
    elapsed = time.perf_counter() - t0
    stats = pipe.stats()
    pipe.stop(timeout=5)
    return (last - first) / elapsed, stats.to_json()  # the wire form, written as JSON


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Pipeline efficiency: pipeline fps / raw runner fps."
    )
    parser.add_argument("--workers", type=int, default=None, help="default: the cpu profile's")
    parser.add_argument("--threads", type=int, default=None, help="ORT threads per worker")
    parser.add_argument("--seconds", type=float, default=5.0, help="per side, per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved raw/pipeline rounds")
    parser.add_argument("--out", default="bench_pipeline.json")
    parser.add_argument(
        "--model",
        choices=["shapes-det", "resnet18-like"],
        default="shapes-det",
        help="the bundled detector (1.4 ms) or a ResNet-18-shaped CNN (random weights, ~8 ms)",
    )
    parser.add_argument(
        "--gpu-preprocess",
        action="store_true",
        help="preprocess with the NVRTC kernel on each worker's stream (needs CUDA)",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval in seconds (CPython default 0.005)",
    )
    args = parser.parse_args(argv)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)

    profile = ProfileStore().load("cpu")
    workers = args.workers or profile.runtime.streams
    threads = profile.runtime.intra_op_threads if args.threads is None else args.threads
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = BUNDLE
        if args.model == "resnet18-like":
            from bench_engine import make_resnet_bundle

            bundle_dir = make_resnet_bundle(Path(tmp) / "resnet18-like")
        outcome = build_engine(
            bundle_dir, profile, precision="int8", calib_dir=CALIB, cache_dir=Path(tmp) / "c"
        )
        artifact = outcome.artifact
        # Interleaved rounds (raw, pipeline, raw, pipeline, ...): a noisy host's drift hits
        # both sides alike; the efficiency is total pipeline frames / total raw inferences.
        rounds: list[tuple[float, float]] = []
        stats: dict[str, Any] = {}
        for _ in range(args.rounds):
            raw_fps = raw_throughput(artifact, bundle_dir, workers, threads, args.seconds)
            piped_fps, stats = pipeline_throughput(
                artifact,
                bundle_dir,
                workers,
                threads,
                args.seconds,
                gpu_preprocess=args.gpu_preprocess,
            )
            rounds.append((raw_fps, piped_fps))
        raw = sum(r for r, _ in rounds) / len(rounds)
        piped = sum(p for _, p in rounds) / len(rounds)
    result = {
        "model": args.model,
        "precision": artifact.precision,
        "workers": workers,
        "threads_per_worker": threads,
        "batch": 1,
        "preprocess": "gpu" if args.gpu_preprocess else "cpu (dispatcher)",
        "cpu_cores": os.cpu_count(),
        "switch_interval_s": sys.getswitchinterval(),
        "seconds": args.seconds,
        "rounds": [
            {"raw_fps": round(r, 1), "pipeline_fps": round(p, 1), "efficiency": round(p / r, 3)}
            for r, p in rounds
        ],
        "raw_runner_fps": round(raw, 1),
        "pipeline_fps": round(piped, 1),
        "efficiency": round(piped / raw, 3) if raw else None,
        "latency_ms": stats["latency_ms"],
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        f"{args.model} {artifact.precision}, {workers} workers x {threads} thread(s), batch 1, "
        f"{result['preprocess']} preprocess, {os.cpu_count()} CPU cores\n"
    )
    print("| raw runner fps | pipeline fps (decode included) | efficiency |")
    print("|---|---|---|")
    for i, (r, pf) in enumerate(rounds, 1):
        print(f"| round {i}: {r:.1f} | {pf:.1f} | {pf / r:.3f} |")
    print(f"| **all rounds: {raw:.1f}** | **{piped:.1f}** | **{piped / raw:.3f}** |\n")
    print("| stage | p50 ms | p99 ms |")
    print("|---|---|---|")
    for stage, v in stats["latency_ms"].items():
        print(f"| {stage} | {v['p50']} | {v['p99']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
