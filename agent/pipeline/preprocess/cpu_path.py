"""The CPU preprocessing path: the reference letterbox into one preallocated batch buffer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.backends.cuda import memory as cuda_memory
from agent.backends.cuda import runtime as cuda_runtime
from agent.config.model import InputSpec
from agent.pipeline.preprocess.geometry import BatchPreprocessor, batch_shape
from agent.vision.letterbox import LetterboxInfo, preprocess


class CpuPreprocessor(BatchPreprocessor):
    """Reference preprocessing into one preallocated batch buffer (:attr:`buffer`).

    ``pinned``: page-locked memory (cuda-python) — ``None`` means "when CUDA is available".
    The buffer is allocated once; :meth:`process` fills slots ``0..len(frames)-1`` in place.
    """

    device = "cpu"

    def __init__(
        self,
        spec: InputSpec,
        size_hw: tuple[int, int],
        batch: int = 1,
        *,
        pinned: bool | None = None,
    ):
        self.spec = spec
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.batch = int(batch)
        shape = batch_shape(spec, self.size_hw, self.batch)
        self._pinned: cuda_memory.PinnedBuffer | None = None
        if pinned is None:
            pinned = cuda_runtime.available()[0]
        if pinned:
            self._pinned = cuda_memory.PinnedBuffer(shape, np.float32)
            self.buffer: np.ndarray = self._pinned.array
        else:
            self.buffer = np.zeros(shape, dtype=np.float32)

    @property
    def pinned(self) -> bool:
        return self._pinned is not None

    def process(self, frames: Sequence[np.ndarray]) -> list[LetterboxInfo]:
        """Fill one batch slot per frame; returns each frame's geometry."""
        self._check_count(frames)
        infos: list[LetterboxInfo] = []
        for i, frame in enumerate(frames):
            _, info = preprocess(frame, self.spec, self.size_hw, out=self.buffer[i])
            infos.append(info)
        return infos

    def download(self) -> np.ndarray:
        """The batch buffer itself (already on the host)."""
        return self.buffer

    def close(self) -> None:
        if self._pinned is not None:
            pinned, self._pinned = self._pinned, None
            del self.buffer
            pinned.close()
