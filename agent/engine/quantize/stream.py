"""Fetching intermediate tensors group by group: one ONNX Runtime session per group of
tensors, run frame by frame, each frame handed to a fold function before the next one runs.

Only one group's tensors of one frame are alive at a time (see
:mod:`agent.engine.quantize.memory` for how groups are sized).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort

from agent.engine.onnxgraph import ModelProto, add_float_outputs, save_model

__all__ = ["Feeds", "Fold", "GroupRunner", "open_group", "stream"]

log = logging.getLogger(__name__)

#: Calibration feeds, re-iterable: one ``{input_name: tensor}`` per run.
Feeds = Callable[[], Iterable[Mapping[str, np.ndarray]]]

#: Frame fold: the fetched tensors of one frame, by name.
Fold = Callable[[Mapping[str, np.ndarray]], None]

_TWO_GIB = (1 << 31) - (64 << 20)


class GroupRunner:
    """A session that returns the tensors of one group (by the names the caller uses)."""

    def __init__(self, session: ort.InferenceSession, fetch: Mapping[str, str]) -> None:
        self.session = session
        available = {o.name for o in session.get_outputs()}
        self.fetch = {name: real for name, real in fetch.items() if real in available}
        self._out_names = list(dict.fromkeys(self.fetch.values()))

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one feed; tensors by caller name."""
        values = self.session.run(self._out_names, dict(feed))
        by_real = dict(zip(self._out_names, values, strict=True))
        return {name: np.asarray(by_real[real]) for name, real in self.fetch.items()}


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Same kernels as ORT's calibrators: no graph optimization, tensors keep their names.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    # No per-session arena: freed activations go back to the system (large ones are unmapped)
    # instead of staying reserved by each of the many short-lived group sessions.
    options.enable_cpu_mem_arena = False
    return options


@contextmanager
def open_group(model: ModelProto, fetch: Mapping[str, str], tmp_dir: Path) -> Iterator[GroupRunner]:
    """A session on ``model`` with the float tensors ``fetch.values()`` made outputs; the model
    proto is left as it was (the outputs added for this group are removed again)."""
    kept = len(model.graph.output)
    add_float_outputs(model, list(dict.fromkeys(fetch.values())))
    try:
        with tempfile.TemporaryDirectory(prefix="group.", dir=tmp_dir) as tmp:
            path = Path(tmp) / "group.onnx"
            if model.ByteSize() > _TWO_GIB:
                # saving with external data rewrites the proto's tensors: save a copy
                copy = ModelProto()
                copy.CopyFrom(model)
                save_model(copy, path, external_data=True)
                del copy
            else:
                save_model(model, path)
            session = ort.InferenceSession(
                str(path), _session_options(), providers=["CPUExecutionProvider"]
            )
        runner = GroupRunner(session, fetch)
    finally:
        del model.graph.output[kept:]
    try:
        yield runner
    finally:
        del runner, session


def stream(
    model: ModelProto,
    groups: Sequence[Sequence[str]],
    feeds: Feeds,
    fold: Fold,
    tmp_dir: Path,
) -> None:
    """Run ``model`` once per group per feed, handing each frame's tensors to ``fold``."""
    for group in groups:
        with open_group(model, {name: name for name in group}, tmp_dir) as runner:
            for feed in feeds():
                fold(runner.run(feed))
