"""``edge-agent bench ARTIFACT``: trtexec-like throughput and latency with N concurrent streams."""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.backends.base import Backend, Runner
from agent.cli.artifacts import dla_core, load_with_backend
from agent.cli.common import format_table, positive_float, print_json
from agent.core.errors import ArtifactError, EdgeAgentError, ModelError
from agent.engine.cache import Artifact

__all__ = ["register", "run_bench"]


def _input_shape(artifact: Artifact, batch: int) -> tuple[tuple[int, ...], str, str]:
    inputs = artifact.inputs
    if len(inputs) != 1:
        raise ModelError(
            f"bench supports one input; the artifact has {[t.name for t in inputs]}",
            fix="bench models with a single image input",
            path=artifact.dir,
        )
    spec = inputs[0]
    opt: list[int] = list(artifact.manifest.get("shapes", {}).get(spec.name, {}).get("opt", []))
    dims: list[int] = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i < len(opt):
            dims.append(int(opt[i]))
        else:
            raise ArtifactError(
                f"input '{spec.name}' has a dynamic dimension {i} and the manifest holds no "
                "optimization shape for it",
                fix="rebuild the artifact with `edge-agent build`",
                path=artifact.dir,
            )
    if batch != dims[0]:
        fixed = spec.shape[0]
        if isinstance(fixed, int) and fixed > 0:
            raise ArtifactError(
                f"the artifact was built with a fixed batch of {fixed} (input {spec.name} "
                f"{list(spec.shape)}), so --batch {batch} cannot run",
                fix=f"use --batch {fixed}, or build with a profile whose backend supports dynamic "
                "batch (TensorRT)",
                path=artifact.dir,
            )
        dims[0] = batch
    dtype = spec.dtype if spec.dtype in ("float32", "float16") else "float32"
    return tuple(dims), spec.name, dtype


def _percentiles(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    ms = np.asarray(samples, dtype=np.float64) * 1000.0
    return {
        "p50": round(float(np.percentile(ms, 50)), 4),
        "p90": round(float(np.percentile(ms, 90)), 4),
        "p99": round(float(np.percentile(ms, 99)), 4),
        "max": round(float(ms.max()), 4),
        "mean": round(float(ms.mean()), 4),
    }


class _Streams:
    """One thread per runner: activate and warm up, meet at a barrier, infer until stopped."""

    def __init__(self, runners: list[Runner], feed: dict[str, np.ndarray], warmup: int) -> None:
        self.runners = runners
        self.feed = feed
        self.warmup = warmup
        self.samples: list[list[float]] = [[] for _ in runners]
        self.errors: list[BaseException] = []
        self._barrier = threading.Barrier(len(runners) + 1)
        self._stop = threading.Event()

    def _warm(self, runner: Runner) -> bool:
        try:
            runner.activate()
            for _ in range(max(0, self.warmup)):
                runner.infer(self.feed)
        except BaseException as exc:
            self.errors.append(exc)
            self._barrier.abort()
            return False
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                self._barrier.wait()
        return True

    def _worker(self, index: int) -> None:
        runner = self.runners[index]
        if not self._warm(runner):
            return
        try:
            mine = self.samples[index]
            while not self._stop.is_set():
                start = time.perf_counter()
                runner.infer(self.feed)
                mine.append(time.perf_counter() - start)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            runner.deactivate()

    def run(self, seconds: float) -> float:
        """Measure for ``seconds`` once every stream is warm; the wall time measured."""
        pool = [
            threading.Thread(target=self._worker, args=(i,), daemon=True)
            for i in range(len(self.runners))
        ]
        for t in pool:
            t.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            self._barrier.wait()
        started = time.perf_counter()
        if not self.errors:
            time.sleep(max(0.0, seconds))
        self._stop.set()
        for t in pool:
            t.join()
        return time.perf_counter() - started


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


def run_bench(
    artifact: Artifact,
    backend: Backend,
    *,
    batch: int,
    streams: int,
    seconds: float,
    warmup: int,
    threads: int,
) -> dict[str, Any]:
    """Throughput and latency of ``streams`` concurrent runners (one thread each)."""
    shape, name, dtype = _input_shape(artifact, batch)
    rng = np.random.default_rng(0)
    feed = {name: rng.random(shape, dtype=np.float32).astype(dtype)}
    if threads <= 0 and streams > 1:
        threads = max(1, (os.cpu_count() or 1) // streams)
    core = dla_core(artifact)
    runners = [
        backend.runner(artifact.dir, artifact.main_file, threads=threads, dla_core=core)
        for _ in range(streams)
    ]
    bench = _Streams(runners, feed, warmup)
    wall = bench.run(seconds)
    _raise_first(bench.errors, artifact)
    flat = [s for per in bench.samples for s in per]
    count = len(flat)
    return {
        "artifact": str(artifact.dir),
        "backend": artifact.backend,
        "precision": artifact.precision,
        "input": {"name": name, "shape": list(shape), "dtype": dtype},
        "batch": batch,
        "streams": streams,
        "threads_per_stream": threads,
        "warmup": warmup,
        "seconds": round(wall, 3),
        "inferences": count,
        "throughput": {
            "inferences_per_s": round(count / wall, 2) if wall > 0 else 0.0,
            "images_per_s": round(count * batch / wall, 2) if wall > 0 else 0.0,
        },
        "latency_ms": _percentiles(flat),
        "per_stream": [len(s) for s in bench.samples],
    }


def _cmd_bench(args: argparse.Namespace) -> int:
    artifact, backend = load_with_backend(args.artifact)
    if args.batch < 1 or args.streams < 1:
        raise ModelError("--batch and --streams must be at least 1", fix="pass positive values")
    result = run_bench(
        artifact,
        backend,
        batch=args.batch,
        streams=args.streams,
        seconds=args.seconds,
        warmup=args.warmup,
        threads=args.threads,
    )
    if args.per_layer:
        shape = tuple(result["input"]["shape"])
        feed = {result["input"]["name"]: np.random.default_rng(0).random(shape, dtype=np.float32)}
        layers = backend.profile_layers(
            artifact.dir,
            artifact.main_file,
            feed,
            iterations=max(5, args.warmup),
            threads=args.threads,
            dla_core=dla_core(artifact),
        )
        result["layers"] = layers[: args.top]
    if args.json:
        print_json(result)
        return 0
    _print_result(result)
    return 0


def _print_result(result: dict[str, Any]) -> None:
    lat = result["latency_ms"]
    thr = result["throughput"]
    print(f"artifact:   {result['artifact']} ({result['backend']}, {result['precision']})")
    print(
        f"input:      {result['input']['name']} {result['input']['shape']}; "
        f"{result['streams']} stream(s), {result['seconds']} s, {result['inferences']} inferences"
    )
    print(f"throughput: {thr['inferences_per_s']} inferences/s, {thr['images_per_s']} images/s")
    print(
        f"latency:    p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, "
        f"max {lat['max']} ms"
    )
    if "layers" in result:
        print()
        rows = [
            [str(i["name"]), str(i["op_type"]), f"{i['avg_ms']:.4f}", f"{i['percent']:.1f}"]
            for i in result["layers"]
        ]
        print(format_table(["LAYER", "OP", "AVG_MS", "%"], rows))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench`` to the ``edge-agent`` parser."""
    p = sub.add_parser("bench", help="throughput and latency of an engine artifact")
    p.add_argument("artifact", help="artifact directory (printed by build)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--streams", type=int, default=1, help="concurrent runners (default 1)")
    p.add_argument("--seconds", type=positive_float, default=5.0, help="measure time")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per stream first")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads per runner (0 = backend default)"
    )
    p.add_argument("--per-layer", action="store_true", help="profile time per layer")
    p.add_argument("--top", type=int, default=15, help="layers shown with --per-layer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_bench)
