"""Q/DQ insertion: one quantization run of a recipe with cached ranges, and a count of what it
inserted."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from onnxruntime.quantization import QuantType

from agent.engine.onnxgraph import load_model
from agent.engine.prepare import PreparedModel
from agent.engine.quantize.ortcompat import quantize_with_ranges
from agent.engine.quantize.ranges import method_enum
from agent.engine.quantize.reader import FrameReader
from agent.engine.quantize.recipes import Recipe

__all__ = ["count_qdq", "quantize_once"]

log = logging.getLogger(__name__)


def quantize_once(
    prepared: PreparedModel,
    out_path: Path,
    reader: FrameReader,
    *,
    recipe: Recipe,
    method: str,
    exclude: Sequence[str],
    cache_path: Path,
    source: Path | None = None,
) -> None:
    """One QDQ quantization of ``prepared`` (or of ``source``, a rewrite of it with the same
    tensors) into ``out_path`` with ranges from ``cache_path``, leaving the nodes ``exclude``
    in float (``quantize_static`` where ORT takes a range cache, else the same steps:
    :mod:`agent.engine.quantize.ortcompat`)."""
    quantize_with_ranges(
        source if source is not None else prepared.path,
        out_path,
        reader,
        ranges_path=cache_path,
        calibrate_method=method_enum(method),
        op_types=recipe.op_types,
        per_channel=recipe.per_channel,
        activation_type=QuantType[recipe.activation_type],
        weight_type=QuantType[recipe.weight_type],
        nodes_to_exclude=exclude,
        extra_options=recipe.options(),
        # >2 GiB models: prepare() wrote external data, keep it that way
        use_external_data_format=prepared.path.with_name(prepared.path.name + ".data").exists(),
    )


def count_qdq(path: Path) -> dict[str, int]:
    """How many QuantizeLinear / DequantizeLinear nodes the file holds."""
    model = load_model(path, external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
