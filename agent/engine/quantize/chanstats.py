"""Per-channel error statistics folded frame by frame.

The probe's error of a tensor is, per output channel (axis 1), the ratio of the error power
``sum (ref - test)^2`` to the reference's variation ``sum (ref - mean)^2``. Both are kept as
running accumulators (count, mean and centred sum of squares merged with Chan et al.'s
pairwise update, which stays exact where ``sum x^2 - (sum x)^2 / n`` would cancel), so a
tensor never has to be held for more than one frame.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["ChannelStats", "channel_error"]

log = logging.getLogger(__name__)

#: A channel's error ratio is capped here (1.0 = its variation is gone).
_CAP = 2.0


def _per_channel(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """``x`` viewed so that axis 1 is the channel axis, and the axes to reduce over."""
    if x.ndim >= 2:
        return x, (0, *range(2, x.ndim))
    return x.reshape(1, 1, -1), (0, 2)


class ChannelStats:
    """Running per-channel signal and noise of one tensor over frames."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.noise: np.ndarray | None = None
        self.shape: tuple[int, ...] | None = None
        self.mismatch = False

    def add(self, ref: np.ndarray, test: np.ndarray) -> None:
        """Fold one frame's reference and test values of the tensor."""
        ref, test = np.asarray(ref), np.asarray(test)
        tail = ref.shape[1:]
        if ref.shape != test.shape or (self.shape is not None and tail != self.shape):
            self.mismatch = True
            return
        self.shape = tail
        if ref.size == 0:
            return
        r, axes = _per_channel(ref)
        t, _ = _per_channel(test)
        n = r.size // r.shape[1]
        mean = np.asarray(np.mean(r, axis=axes, dtype=np.float64))
        shape = [1] * r.ndim
        shape[1] = -1
        centred = r - mean.reshape(shape)  # float64
        m2 = np.sum(centred * centred, axis=axes)
        del centred
        diff = np.subtract(r, t, dtype=np.float64)
        noise = np.sum(diff * diff, axis=axes)
        del diff
        self._merge(n, mean, m2, noise)

    def _merge(self, n: int, mean: np.ndarray, m2: np.ndarray, noise: np.ndarray) -> None:
        if self.mean is None or self.m2 is None or self.noise is None:
            self.count, self.mean, self.m2, self.noise = n, mean, m2, noise
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.noise = self.noise + noise
        self.count = total

    def error(self) -> float:
        """Mean over live channels of min(noise / signal, 2); 0 with no live channel, inf when
        the shapes disagreed."""
        if self.mismatch:
            return float("inf")
        if self.m2 is None or self.noise is None:
            return 0.0
        signal = self.m2
        live = signal > max(float(signal.max()) * 1e-9, 1e-20)
        if not live.any():
            return 0.0
        return float(np.mean(np.minimum(self.noise[live] / signal[live], _CAP)))

    def channel_means(self) -> np.ndarray | None:
        """Per-channel mean of the reference over every folded frame."""
        return self.mean


def channel_error(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean over channels (axis 1) of the per-channel ratio of error power to the reference's
    variance, each capped at 2 (1.0 = that channel's variation is gone).

    Per channel, because channels can mean different things: a YOLO ``[N, 4+C, A]`` output
    whose class-score rows are wiped out by a scale sized for pixel coordinates has a tiny
    tensor-wide error but half its channels at ~1. The mean (not the max) keeps a few nearly
    dead feature-map channels from flagging a healthy layer. Constant channels are skipped.
    """
    ref, test = np.asarray(ref), np.asarray(test)
    if ref.shape != test.shape:
        return float("inf")
    stats = ChannelStats()
    stats.add(ref, test)
    return stats.error()
