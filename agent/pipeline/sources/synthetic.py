"""A moving test pattern as a live source (no camera needed)."""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.pipeline.sources.base import Source
from agent.vision.synthetic import SceneAnimator


class SyntheticSource(Source):
    """A moving test pattern from :class:`SceneAnimator` at ``fps_cap`` (default 30 fps)."""

    kind = "synthetic"
    live = True

    def __init__(self, name: str, *, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(name, kwargs.pop("uri", "synthetic://"), **kwargs)
        self.seed = seed
        self._animator: SceneAnimator | None = None

    def _open(self) -> None:
        w, h = self.size if self.size is not None else (640, 360)
        self._animator = SceneAnimator(seed=self.seed, width=w, height=h)

    def _rate(self) -> float | None:
        return self.fps_cap or 30.0

    def _read(self) -> np.ndarray | None:
        assert self._animator is not None
        image, _ = self._animator.next_frame()
        return image

    def _release(self) -> None:
        self._animator = None
