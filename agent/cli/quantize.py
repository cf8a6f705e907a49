"""``edge-agent quantize BUNDLE --profile P --out FILE``: write the calibrated Q/DQ ONNX for a
profile's backend (the model a build would hand TensorRT or ONNX Runtime) without building an
engine, for ``trtexec --onnx`` or DeepStream on the device.

Progress goes to stderr (a bar on a terminal, JSON-lines events otherwise), so stdout holds only
the summary (``--json``: one JSON document).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from agent.cli.common import format_table, print_json
from agent.cli.progress import ProgressPrinter
from agent.config.load import resolve_profile
from agent.engine.build.qdq_export import QdqExport, export_qdq

__all__ = ["METHOD_CHOICES", "register"]

METHOD_CHOICES = ("entropy", "minmax", "percentile")
#: float-kept nodes named per reason in the text summary (the JSON report lists them all)
_SHOWN = 4


def _cmd_quantize(args: argparse.Namespace) -> int:
    profile, _l4t, how = resolve_profile(args.profile, args.profiles_dir)
    printer = ProgressPrinter(stream=sys.stderr)
    printer("profile", 1.0, f"profile {profile.name} ({how}); recipe {profile.build.backend}")
    try:
        result = export_qdq(
            Path(args.bundle),
            profile,
            Path(args.out),
            calib_dir=Path(args.calib) if args.calib else None,
            method=args.method,
            progress=printer,
        )
    finally:
        printer.close()
    if args.json:
        print_json(_summary(result))
        return 0
    _print_result(result, how)
    return 0


def _summary(result: QdqExport) -> dict[str, Any]:
    return {"path": str(result.path), "report_path": str(result.report_path), **result.report}


def _print_result(result: QdqExport, how: str) -> None:
    report = result.report
    rss = report.get("peak_rss_mib")
    print(f"model:    {result.path}")
    print(f"report:   {result.report_path}")
    print(f"profile:  {report['profile']} ({how})")
    print(f"recipe:   {report['recipe']}, {report['method']} calibration")
    print(f"frames:   {report['calibration_frames']}")
    print(
        f"time:     {result.seconds:.1f}s"
        + ("" if rss is None else f"; peak RSS of quantization {rss:.0f} MiB")
    )
    floats = report.get("float_layers") or []
    if floats:
        print(f"\nkept in float ({len(floats)} nodes):")
        print(format_table(["REASON", "NODES"], _float_rows(floats)))
    top = report.get("sensitivity_top") or []
    if top:
        rows = [[r["node"], r.get("op", ""), f"{float(r['added_error']):.4g}"] for r in top]
        print("\nmost sensitive layers:")
        print(format_table(["NODE", "OP", "ADDED_ERROR"], rows))
    for note in report.get("notes") or []:
        print(f"note: {note}")


def _float_rows(floats: list[dict[str, Any]]) -> list[list[str]]:
    """One row per reason: the nodes kept in float for it (the first few, then a count)."""
    by_reason: dict[str, list[str]] = {}
    for layer in floats:
        by_reason.setdefault(str(layer["reason"]), []).append(str(layer["node"]))
    rows: list[list[str]] = []
    for reason, nodes in by_reason.items():
        shown = ", ".join(nodes[:_SHOWN])
        more = f" and {len(nodes) - _SHOWN} more" if len(nodes) > _SHOWN else ""
        rows.append([reason, shown + more])
    return rows


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``quantize`` to the ``edge-agent`` parser."""
    p = sub.add_parser(
        "quantize",
        help="write the calibrated Q/DQ ONNX for a profile (no engine build)",
        description="Prepare the bundle's ONNX for the profile, calibrate and insert Q/DQ with "
        "the profile's backend recipe, and write the model (with a JSON report beside it) "
        "for trtexec --onnx or DeepStream; no engine is built.",
    )
    p.add_argument("bundle", help="model bundle directory (with model.yaml) or its model.yaml")
    p.add_argument("--profile", default="auto", help="device profile name, or auto (detect)")
    p.add_argument("--profiles-dir", default=None, help="directory of device profile YAMLs")
    p.add_argument("--out", required=True, help="Q/DQ ONNX file to write (e.g. model.qdq.onnx)")
    p.add_argument("--calib", default=None, help="calibration frames (default calib/<model>/)")
    p.add_argument(
        "--method",
        choices=METHOD_CHOICES,
        default=None,
        help="calibration method (default: the profile's build.calibration.method)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_cmd_quantize)
