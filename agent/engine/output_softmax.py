"""Settle ``model.yaml``'s ``output.softmax: auto`` from the ONNX graph.

A classifier whose graph already ends in Softmax (torchvision and Paddle exports often do) must
not get a second softmax from the decoder: that flattens its probabilities toward uniform. The
decision is taken from the graph (:func:`agent.engine.onnxgraph.output_is_softmax`), never from
the output values, when the bundle is loaded in the build child; the settled value (``apply``
or ``none``) then travels in the artifact manifest (``bundle.config``) to the daemon's
pipeline postprocessor (:func:`settled_from_manifest`: the daemon never reads the graph) and to
``edge-agent infer``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.model import ModelBundleConfig
from agent.engine.onnxgraph import output_is_softmax

__all__ = ["settle_output_softmax", "settled_from_manifest"]

log = logging.getLogger(__name__)


def settle_output_softmax(config: ModelBundleConfig, onnx_path: Path) -> ModelBundleConfig:
    """``config`` with ``output.softmax: auto`` replaced by ``none`` when the graph output is
    made by a Softmax (or Exp of LogSoftmax), else by ``apply``. Explicit values, other
    decodings and an unreadable ONNX file (reported by ``prepare`` with its own message) leave
    ``config`` unchanged; an unsettled ``auto`` applies softmax."""
    if config.output.decode != "softmax_topk" or config.output.softmax != "auto":
        return config
    try:
        is_softmax = output_is_softmax(onnx_path, config.output.name)
    except Exception as exc:  # not parseable: prepare() reports it with a proper message
        log.debug("cannot read %s to settle output.softmax: %s", onnx_path, exc)
        return config
    settled = config.with_softmax_resolved(is_softmax)
    log.debug("output.softmax: auto -> %s (%s)", settled.output.softmax, onnx_path)
    return settled


def settled_from_manifest(
    config: ModelBundleConfig, manifest: Mapping[str, Any]
) -> ModelBundleConfig:
    """``config`` with ``output.softmax: auto`` settled as the build child settled it, read
    from an artifact manifest (``bundle.config.output.softmax``); no graph is read. A manifest
    without a settled value leaves ``auto`` (the decoder then applies softmax)."""
    if config.output.decode != "softmax_topk" or config.output.softmax != "auto":
        return config
    bundle = manifest.get("bundle")
    recorded = bundle.get("config") if isinstance(bundle, Mapping) else None
    output = recorded.get("output") if isinstance(recorded, Mapping) else None
    value = output.get("softmax") if isinstance(output, Mapping) else None
    if value not in ("apply", "none"):
        log.warning("the artifact manifest has no settled output.softmax; applying softmax")
        return config
    return config.with_softmax_resolved(value == "none")
