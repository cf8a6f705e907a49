"""``edge-agent bench MODEL``: trtexec-like throughput and latency with N concurrent streams.

MODEL is an artifact directory, an ``.onnx`` (built on the fly) or a TensorRT plan
(:mod:`agent.cli.artifacts`). The report gives min / mean / median / p90 / p95 / p99 / max /
std-dev latency and throughput (trtexec's performance summary), and the H2D / compute / D2H
split where the runner measures it (:mod:`agent.cli.bench_stats`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import (
    Backend,
    ProfileShapedRunner,
    Runner,
    StageTimedRunner,
    TensorSpec,
)
from agent.cli.artifacts import Loaded, add_model_args, dla_core, open_model
from agent.cli.bench_stats import latency_stats, print_bench, split_json
from agent.cli.bench_streams import Streams
from agent.cli.common import positive_float, print_json
from agent.core.errors import ArtifactError, EdgeAgentError, ModelError
from agent.engine.cache import Artifact

__all__ = ["register", "run_bench"]


def _fixed_shape(spec: TensorSpec, dims: Sequence[int], where: Path) -> tuple[int, ...]:
    """``dims`` for input ``spec``, checked against its rank and fixed axes."""
    if len(dims) != len(spec.shape) or any(
        isinstance(d, int) and d > 0 and d != w for d, w in zip(spec.shape, dims, strict=False)
    ):
        raise ModelError(
            f"--shapes asks {'x'.join(map(str, dims))} for input '{spec.name}', whose shape is "
            f"{list(spec.shape)}",
            fix="give a shape of that rank with the fixed axes as they are",
            path=where,
        )
    return tuple(dims)


def _batch_range(artifact: Artifact, spec: TensorSpec) -> tuple[int, int]:
    fixed = spec.shape[0]
    if isinstance(fixed, int) and fixed > 0:
        return fixed, fixed
    shapes = artifact.manifest.get("shapes", {}).get(spec.name, {})
    low, high = shapes.get("min") or [1], shapes.get("max") or [1 << 30]
    return int(low[0]), int(high[0])


def _input_shape(
    artifact: Artifact, spec: TensorSpec, batch: int, explicit: Sequence[int] | None
) -> tuple[int, ...]:
    """The benchmark's input shape: ``--shapes`` when given, else the optimization shape with
    the batch axis set to ``batch`` (within the artifact's batch range)."""
    if explicit is not None:
        return _fixed_shape(spec, explicit, artifact.dir)
    opt: list[int] = list(artifact.manifest.get("shapes", {}).get(spec.name, {}).get("opt", []))
    dims: list[int] = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i < len(opt):
            dims.append(int(opt[i]))
        elif i == 0:
            dims.append(batch)
        else:
            raise ArtifactError(
                f"input '{spec.name}' has a dynamic dimension {i} {list(spec.shape)} and no "
                "optimization shape is recorded for it",
                fix=f"pass --shapes {spec.name}:"
                + "x".join("N" for _ in spec.shape)
                + " (as trtexec's --shapes), or rebuild the artifact with `edge-agent build`",
                path=artifact.dir / artifact.main_file,
            )
    low, high = _batch_range(artifact, spec)
    if not low <= batch <= high:
        example = "x".join(str(d) for d in [batch, *dims[1:]])
        raise ArtifactError(
            f"--batch {batch} is outside the batch range {low}-{high} the artifact was built "
            f"for (input {spec.name} {list(spec.shape)})",
            fix=f"use --batch {low}..{high}, or build with --shapes {spec.name}:{example}",
            path=artifact.dir,
        )
    dims[0] = batch
    return tuple(dims)


def _bench_input(
    artifact: Artifact,
    inputs: Sequence[TensorSpec],
    batch: int,
    shapes: Mapping[str, Sequence[int]],
) -> tuple[tuple[int, ...], str, str]:
    if len(inputs) != 1:
        raise ModelError(
            f"bench supports one input; the model has {[t.name for t in inputs]}",
            fix="bench models with a single image input",
            path=artifact.dir,
        )
    spec = inputs[0]
    unknown = sorted(set(shapes) - {spec.name})
    if unknown:
        raise ModelError(
            f"--shapes names {unknown}; the model's inputs are {[spec.name]}",
            fix=f"use {spec.name} before the ':' in --shapes",
            path=artifact.dir,
        )
    shape = _input_shape(artifact, spec, batch, shapes.get(spec.name))
    dtype = spec.dtype if spec.dtype in ("float32", "float16") else "float32"
    return shape, spec.name, dtype


def _raise_first(errors: list[BaseException], artifact: Artifact) -> None:
    if not errors:
        return
    err = errors[0]
    if isinstance(err, EdgeAgentError):
        raise err
    raise ModelError(
        f"inference failed during bench: {err}",
        fix="check the input shape and the artifact",
        path=artifact.dir,
    )


def _split(
    stages: Mapping[str, Sequence[float]], latency_ms: Sequence[float], runners: list[Runner]
) -> dict[str, Any]:
    """:func:`split_json`, with the runner's note on its transfers (zero-copy) when measured."""
    split = split_json(stages, latency_ms)
    first = runners[0]
    note = first.transfers_note() if isinstance(first, StageTimedRunner) else None
    if split["measured"] and note:
        split["transfers"] = note
    return split


def run_bench(
    artifact: Artifact,
    backend: Backend,
    *,
    batch: int,
    streams: int,
    seconds: float,
    warmup: int,
    threads: int,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Throughput and latency of ``streams`` concurrent runners (one thread each)."""
    if threads <= 0 and streams > 1:
        threads = max(1, (os.cpu_count() or 1) // streams)
    core = dla_core(artifact)
    runners: list[Runner] = [
        backend.runner(artifact.dir, artifact.main_file, threads=threads, dla_core=core)
        for _ in range(streams)
    ]
    for runner in runners:  # CUDA events around the copies and the engine (off when serving)
        if isinstance(runner, StageTimedRunner):
            runner.timing = True
    inputs = artifact.inputs
    if not inputs:  # a bare plan: the engine says what it takes
        first = runners[0]
        first.activate()
        inputs = first.inputs
        if isinstance(first, ProfileShapedRunner):  # and its profile: opt shape, batch range
            shapes_json = {k: v.to_json() for k, v in first.profile_shapes().items()}
            artifact.manifest.setdefault("shapes", shapes_json)
    shape, name, dtype = _bench_input(artifact, inputs, batch, shapes or {})
    feed = {name: np.random.default_rng(0).random(shape, dtype=np.float32).astype(dtype)}
    bench = Streams(runners, feed, warmup)
    wall = bench.run(seconds)
    _raise_first(bench.errors, artifact)
    flat = [s for per in bench.samples for s in per]
    count = len(flat)
    return {
        "artifact": str(artifact.dir if artifact.manifest.get("files") else artifact.main_path),
        "backend": artifact.backend,
        "precision": artifact.precision,
        "input": {"name": name, "shape": list(shape), "dtype": dtype},
        "batch": shape[0],
        "streams": streams,
        "threads_per_stream": threads,
        "warmup": warmup,
        "seconds": round(wall, 3),
        "inferences": count,
        "throughput": {
            "inferences_per_s": round(count / wall, 2) if wall > 0 else 0.0,
            "images_per_s": round(count * shape[0] / wall, 2) if wall > 0 else 0.0,
        },
        "latency_ms": latency_stats(flat),
        "split": _split(bench.stages, flat, runners),
        "per_stream": [len(s) for s in bench.samples],
    }


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.streams < 1:
        raise ModelError("--batch and --streams must be at least 1", fix="pass positive values")
    loaded = open_model(args)
    artifact, backend = loaded.artifact, loaded.backend
    result = run_bench(
        artifact,
        backend,
        batch=args.batch,
        streams=args.streams,
        seconds=args.seconds,
        warmup=args.warmup,
        threads=args.threads,
        shapes=args.shapes,
    )
    result["source"] = loaded.source
    if args.per_layer:
        _per_layer(args, loaded, result)
    if args.json:
        print_json(result)
        return 0
    print_bench(result)
    return 0


def _per_layer(args: argparse.Namespace, loaded: Loaded, result: dict[str, Any]) -> None:
    artifact = loaded.artifact
    shape = tuple(result["input"]["shape"])
    feed = {result["input"]["name"]: np.random.default_rng(0).random(shape, dtype=np.float32)}
    layers = loaded.backend.profile_layers(
        artifact.dir,
        artifact.main_file,
        feed,
        iterations=max(5, args.warmup),
        threads=args.threads,
        dla_core=dla_core(artifact),
    )
    result["layers"] = layers[: args.top]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` to the ``edge-agent`` parser."""
    p = sub.add_parser(
        "bench",
        help="throughput and latency (min/mean/median/p95/p99/max/std-dev) of a model",
        description="trtexec-like benchmark of an artifact directory, an .onnx (built on the "
        "fly) or a TensorRT plan, with N concurrent streams.",
    )
    add_model_args(p, "benchmark")
    p.add_argument("--batch", type=int, default=1, help="batch size (within the built range)")
    p.add_argument("--streams", type=int, default=1, help="concurrent runners")
    p.add_argument("--seconds", type=positive_float, default=5.0, help="measure time")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per stream first")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads per runner (0 = backend default)"
    )
    p.add_argument("--per-layer", action="store_true", help="profile time per layer")
    p.add_argument("--top", type=int, default=15, help="layers shown with --per-layer")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.set_defaults(handler=_cmd_bench)
