"""``edge-agent build BUNDLE``: prepare, calibrate, quantize, build, validate and cache an engine.

A progress bar on a terminal (stderr), JSON-lines progress events on stdout otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli.common import format_table, positive_float, print_json
from agent.cli.overrides import add_override_args, overrides_from_args
from agent.cli.progress import ProgressPrinter
from agent.cli.quant_summary import quantization_json, quantization_text
from agent.config.cachedir import cache_dir_help, resolve_cache_dir
from agent.config.device import DeviceProfile
from agent.config.load import resolve_profile
from agent.engine.artifact import save_engine_copy
from agent.engine.build.orchestrator import build_engine
from agent.engine.build.outcome import BuildOutcome

__all__ = ["PRECISION_CHOICES", "register"]

PRECISION_CHOICES = ("int8", "fp16", "fp32", "auto")


def _cmd_build(args: argparse.Namespace) -> int:
    profile, l4t, how = resolve_profile(args.profile, args.profiles_dir)
    precision = args.precision or profile.build.default_precision
    overrides = overrides_from_args(args)
    cache = resolve_cache_dir(args.cache_dir)
    cache_dir = cache.path
    printer = ProgressPrinter()
    if not printer.tty:
        printer(
            "profile",
            1.0,
            f"profile {profile.name} ({how}); precision {precision}; cache {cache}",
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
            overrides=overrides,
        )
    finally:
        printer.close()
    saved = save_engine_copy(outcome.artifact, Path(args.output)) if args.output else []
    if args.json:
        int8 = outcome.artifacts.get("int8")
        summary = {
            **outcome.to_json(),
            "profile": profile.name,
            "l4t_release": l4t,
            "quantization": None if int8 is None else quantization_json(int8.manifest),
            "overrides": overrides.key_json(),
            "saved": [str(p) for p in saved],
        }
        # one document, the same keys either way: indented for a person, one line for a pipe
        doc = {"event": "result", **summary}
        if printer.tty:
            print_json(doc)
        else:
            print_json(doc, indent=None)
        return 0
    _print_outcome(outcome, profile, how)
    for path in saved:
        print(f"saved:     {path}")
    return 0


def _print_outcome(outcome: BuildOutcome, profile: DeviceProfile, how: str) -> None:
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
    int8 = outcome.artifacts.get("int8")
    text = "" if int8 is None else quantization_text(int8.manifest, gate=False)
    if text:
        print()
        print(text)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``build`` to the ``edge-agent`` parser."""
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
        metavar="DIR",
        help=cache_dir_help(),
    )
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument(
        "--gate-seconds",
        type=positive_float,
        default=3.0,
        help="time budget of the validation gate's latency measurement (default 3)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_override_args(p)
    p.set_defaults(handler=_cmd_build)
