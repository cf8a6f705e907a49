"""One held-out frame as the gate consumes it: the model feed, how the image was fitted into
the input (to map boxes back) and its ground truth, when the held-out set is labelled."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from agent.engine.validate.labels import FrameLabel
from agent.vision.letterbox import LetterboxInfo

__all__ = ["GateFrame", "as_gate_frame"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateFrame:
    """A frame for the gate. ``letterbox`` is None for an already preprocessed tensor;
    ``label`` is None when the held-out set has no labels."""

    feed: Mapping[str, np.ndarray]
    name: str = ""
    letterbox: LetterboxInfo | None = None
    label: FrameLabel | None = None


def as_gate_frame(item: GateFrame | Mapping[str, np.ndarray]) -> GateFrame:
    """A bare feed (``{input name: tensor}``) is a frame without geometry or labels."""
    return item if isinstance(item, GateFrame) else GateFrame(feed=item)
