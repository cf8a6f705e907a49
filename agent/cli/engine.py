"""``edge-agent build | inspect | bench | infer``: engines from the command line.

* ``build BUNDLE`` — prepare, calibrate, quantize, build, validate and cache an engine; a progress
  bar on a terminal (stderr), JSON-lines progress events on stdout otherwise.
* ``inspect ARTIFACT`` — layers after fusion and the precision each runs in.
* ``bench ARTIFACT`` — trtexec-like throughput and latency with N concurrent streams.
* ``infer ARTIFACT INPUT...`` — run images or ``.npy`` tensors and print decoded results.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from agent.cli.common import format_table, resolve_profile
from agent.core.errors import ArtifactError, EdgeAgentError, ModelError

log = logging.getLogger(__name__)

PRECISION_CHOICES = ("int8", "fp16", "fp32", "auto")


# ---------------------------------------------------------------------------- helpers


def _print_json(data: Any, stream: IO[str] | None = None, *, indent: int | None = 2) -> None:
    out = stream if stream is not None else sys.stdout
    out.write(json.dumps(data, indent=indent, default=str) + "\n")
    out.flush()


class ProgressPrinter:
    """A tqdm bar per stage on a TTY (stderr); JSON-lines events on stdout otherwise."""

    def __init__(self, *, tty: bool | None = None, stream: IO[str] | None = None) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.stream = stream
        self._bar: Any = None
        self._stage = ""
        self._last = -1.0
        self._lock = threading.Lock()

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        with self._lock:
            if self.tty:
                self._tqdm(stage, fraction, message)
                return
            fraction = max(0.0, min(1.0, float(fraction)))
            if stage == self._stage and fraction < 1.0 and fraction - self._last < 0.05:
                return
            self._stage, self._last = stage, fraction
            event = {
                "event": "progress",
                "stage": stage,
                "fraction": round(fraction, 4),
                "message": message,
            }
            _print_json(event, self.stream, indent=None)

    def _tqdm(self, stage: str, fraction: float, message: str) -> None:
        from tqdm import tqdm

        if stage != self._stage or self._bar is None:
            self.close()
            self._stage = stage
            self._bar = tqdm(
                total=100,
                file=sys.stderr,
                leave=True,
                bar_format="{bar:24} {percentage:3.0f}% {desc}",
            )
        self._bar.n = round(max(0.0, min(1.0, fraction)) * 100)
        self._bar.set_description_str(f"{stage}: {message[:70]}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _load(path: str) -> tuple[Any, Any]:
    """(artifact, backend) for an artifact directory given on the command line."""
    from agent.backends.base import get_backend
    from agent.engine.cache import load_artifact

    artifact = load_artifact(Path(path))
    return artifact, get_backend(artifact.backend)


def _dla_core(artifact: Any) -> int | None:
    """The DLA core the artifact was built for, from the cache key in its manifest."""
    key = artifact.manifest.get("key")
    core = key.get("dla_core") if isinstance(key, dict) else None
    return core if isinstance(core, int) else None


# ---------------------------------------------------------------------------- build


def _cmd_build(args: argparse.Namespace) -> int:
    from agent.engine.build import build_engine, default_cache_dir

    profile, l4t, how = resolve_profile(args.profile, args.profiles_dir)
    precision = args.precision or profile.build.default_precision
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    printer = ProgressPrinter()
    if not printer.tty:
        printer(
            "profile",
            1.0,
            f"profile {profile.name} ({how}); precision {precision}; cache {cache_dir}",
        )
    try:
        outcome = build_engine(
            Path(args.bundle),
            profile,
            precision=precision,
            calib_dir=Path(args.calib) if args.calib else None,
            cache_dir=cache_dir,
            l4t_release=l4t,
            progress=printer,
            force=args.force,
            gate_seconds=args.gate_seconds,
        )
    finally:
        printer.close()
    summary = outcome.to_json()
    summary["profile"] = profile.name
    summary["l4t_release"] = l4t
    if args.json:
        if printer.tty:
            _print_json(summary)
        else:
            _print_json({"event": "result", **summary}, indent=None)
        return 0
    report = outcome.report
    print(f"artifact:  {outcome.artifact.dir}")
    print(
        f"precision: {outcome.artifact.precision}" + ("  (cache hit)" if outcome.cache_hit else "")
    )
    print(f"why:       {report.why}")
    print(f"profile:   {profile.name} ({how})")
    print()
    print(
        format_table(
            ["PRECISION", "METRIC", "VALUE", "P50_MS", "P99_MS", "PASSED"], report.table_rows()
        )
    )
    if outcome.timings:
        timings = ", ".join(f"{k} {v:.2f}s" for k, v in outcome.timings.items())
        rss = (
            ""
            if outcome.peak_rss_mib is None
            else f"; peak RSS of build {outcome.peak_rss_mib:.0f} MiB"
        )
        print(f"\ntimings: {timings}{rss}")
    for note in outcome.notes:
        print(f"note: {note}")
    return 0


# ---------------------------------------------------------------------------- inspect


def _cmd_inspect(args: argparse.Namespace) -> int:
    artifact, backend = _load(args.artifact)
    layers = backend.inspect(artifact.dir, artifact.main_file)
    by_op = Counter(str(layer.get("op_type", "?")) for layer in layers)
    by_prec = Counter(str(layer.get("precision", "?")) for layer in layers)
    summary = {
        "layers": len(layers),
        "by_precision": dict(by_prec.most_common()),
        "by_op_type": dict(by_op.most_common()),
    }
    if args.json:
        _print_json(
            {
                "artifact": str(artifact.dir),
                "backend": artifact.backend,
                "precision": artifact.precision,
                "layers": layers,
                "summary": summary,
            }
        )
        return 0
    print(f"artifact: {artifact.dir} ({artifact.backend}, {artifact.precision})")
    rows = [
        [
            str(i),
            str(layer.get("name", "")),
            str(layer.get("op_type", "")),
            str(layer.get("precision", "")),
        ]
        for i, layer in enumerate(layers)
    ]
    print(format_table(["#", "NAME", "OP", "PRECISION"], rows))
    print()
    print(
        f"{len(layers)} layers; by precision: "
        + ", ".join(f"{k} {v}" for k, v in by_prec.most_common())
    )
    print(format_table(["OP", "COUNT"], [[k, str(v)] for k, v in by_op.most_common()]))
    return 0


# ---------------------------------------------------------------------------- bench


def _input_shape(artifact: Any, batch: int) -> tuple[tuple[int, ...], str, str]:
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


def run_bench(
    artifact: Any,
    backend: Any,
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
    dla_core = _dla_core(artifact)
    runners = [
        backend.runner(artifact.dir, artifact.main_file, threads=threads, dla_core=dla_core)
        for _ in range(streams)
    ]
    samples: list[list[float]] = [[] for _ in range(streams)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(streams + 1)
    stop = threading.Event()

    def worker(index: int) -> None:
        runner = runners[index]
        try:
            runner.activate()
            for _ in range(max(0, warmup)):
                runner.infer(feed)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            return
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
        try:
            mine = samples[index]
            while not stop.is_set():
                start = time.perf_counter()
                runner.infer(feed)
                mine.append(time.perf_counter() - start)
        except BaseException as exc:
            errors.append(exc)
        finally:
            runner.deactivate()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(streams)]
    for t in pool:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    started = time.perf_counter()
    if not errors:
        time.sleep(max(0.0, seconds))
    stop.set()
    for t in pool:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        err = errors[0]
        if isinstance(err, EdgeAgentError):
            raise err
        raise ModelError(
            f"inference failed during bench: {err}",
            fix="check the input shape and the artifact",
            path=artifact.dir,
        )
    flat = [s for per in samples for s in per]
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
        "per_stream": [len(s) for s in samples],
    }


def _cmd_bench(args: argparse.Namespace) -> int:
    artifact, backend = _load(args.artifact)
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
            dla_core=_dla_core(artifact),
        )
        result["layers"] = layers[: args.top]
    if args.json:
        _print_json(result)
        return 0
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
    return 0


# ---------------------------------------------------------------------------- infer


def _decode(
    task: str, config: Any, labels: Sequence[str], outputs: dict[str, np.ndarray], letterbox: Any
) -> dict[str, Any]:
    from agent.engine.validate import select_output
    from agent.vision.decode import decode_yolov8, softmax_topk

    spec = config.output
    if task == "classify" or spec.decode == "softmax_topk":
        ids, probs = softmax_topk(select_output(outputs, spec).reshape(1, -1), spec.top_k)
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


def _cmd_infer(args: argparse.Namespace) -> int:
    from agent.config.schema import ModelBundleConfig
    from agent.core.fsutil import atomic_write_bytes, atomic_write_json
    from agent.vision.letterbox import load_image_or_npy, preprocess

    artifact, backend = _load(args.artifact)
    bundle = artifact.manifest.get("bundle")
    if not isinstance(bundle, dict) or "config" not in bundle:
        raise ArtifactError(
            "the manifest carries no bundle configuration, so inputs cannot be preprocessed",
            fix="rebuild the artifact with `edge-agent build`",
            path=artifact.dir,
        )
    config = ModelBundleConfig.model_validate(bundle["config"])
    labels = [str(x) for x in bundle.get("labels", [])]
    size_hw = tuple(int(v) for v in artifact.manifest.get("input_size_hw", ()))
    if len(size_hw) != 2:
        raise ArtifactError(
            "the manifest has no input_size_hw", fix="rebuild the artifact", path=artifact.dir
        )
    h, w = size_hw
    expected = (1, 3, h, w) if config.input.layout == "NCHW" else (1, h, w, 3)
    out_dir = Path(args.out) if args.out else None
    results: list[dict[str, Any]] = []
    runner = backend.runner(
        artifact.dir, artifact.main_file, threads=args.threads, dla_core=_dla_core(artifact)
    )
    with runner:
        for raw_path in args.inputs:
            path = Path(raw_path)
            if not path.is_file():
                raise ModelError("input file does not exist", fix="check the path", path=path)
            data = load_image_or_npy(path)
            letterbox = None
            if path.suffix.lower() == ".npy" and data.dtype != np.uint8:
                tensor = np.ascontiguousarray(data, dtype=np.float32)
                if tensor.shape == expected[1:]:
                    tensor = tensor[None]
                if tensor.shape != expected:
                    raise ModelError(
                        f"tensor has shape {tuple(data.shape)}; the engine needs {expected}",
                        fix="save a preprocessed float32 tensor of that shape, or a uint8 "
                        "H x W x 3 frame to have it preprocessed",
                        path=path,
                    )
            else:
                tensor, letterbox = preprocess(data, config.input, (h, w))
            started = time.perf_counter()
            outputs = runner.infer({config.input.name: tensor})
            latency = (time.perf_counter() - started) * 1000.0
            item: dict[str, Any] = {
                "input": str(path),
                "task": config.task,
                "latency_ms": round(latency, 3),
                "outputs": {k: list(v.shape) for k, v in outputs.items()},
            }
            if letterbox is not None:
                item["source_size"] = [letterbox.src_w, letterbox.src_h]
            item.update(_decode(config.task, config, labels, outputs, letterbox))
            if out_dir is not None:
                saved: dict[str, str] = {}
                for name, value in outputs.items():
                    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
                    target = out_dir / f"{path.stem}.{safe}.npy"
                    buf = io.BytesIO()
                    np.save(buf, value, allow_pickle=False)
                    atomic_write_bytes(target, buf.getvalue())
                    saved[name] = str(target)
                item["saved"] = saved
            results.append(item)
    doc = {"artifact": str(artifact.dir), "precision": artifact.precision, "results": results}
    if out_dir is not None:
        atomic_write_json(out_dir / "results.json", doc)
    if args.json:
        _print_json(doc)
        return 0
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
    return 0


# ---------------------------------------------------------------------------- registration


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``build``, ``inspect``, ``bench`` and ``infer`` to the ``edge-agent`` parser."""
    p = sub.add_parser(
        "build",
        help="build (or fetch from the cache) a validated engine for a model bundle",
        description="Prepare, calibrate, quantize, build and validate an engine; the result is "
        "stored in the engine cache.",
    )
    p.add_argument("bundle", help="model bundle directory (with model.yaml) or its model.yaml")
    p.add_argument("--profile", default="auto", help="device profile name, or auto (detect)")
    p.add_argument("--profiles-dir", default=None, help="directory of device profile YAMLs")
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default=None,
        help="engine precision (default: the profile's build.default_precision)",
    )
    p.add_argument("--calib", default=None, help="calibration frames (default calib/<model>/)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="engine cache (default $XDG_CACHE_HOME/edge-agent, else .cache/edge-agent)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument(
        "--gate-seconds",
        type=_positive_float,
        default=3.0,
        help="time budget of the validation gate's latency measurement (default 3)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_cmd_build)

    p = sub.add_parser("inspect", help="layers of an engine artifact and their precision")
    p.add_argument("artifact", help="artifact directory (printed by build)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_inspect)

    p = sub.add_parser("bench", help="throughput and latency of an engine artifact")
    p.add_argument("artifact", help="artifact directory (printed by build)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--streams", type=int, default=1, help="concurrent runners (default 1)")
    p.add_argument("--seconds", type=_positive_float, default=5.0, help="measure time")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per stream first")
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads per runner (0 = backend default)"
    )
    p.add_argument("--per-layer", action="store_true", help="profile time per layer")
    p.add_argument("--top", type=int, default=15, help="layers shown with --per-layer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_bench)

    p = sub.add_parser("infer", help="run images or .npy tensors through an engine artifact")
    p.add_argument("artifact", help="artifact directory (printed by build)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or .npy arrays")
    p.add_argument("--out", default=None, help="write raw outputs (.npy) and results.json here")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = backend default)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_infer)
