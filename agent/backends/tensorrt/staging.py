"""The TensorRT runner's host I/O staging: grow-only device and pinned host buffers per tensor
(mapped pinned buffers and no device buffer when zero-copy, see
:mod:`agent.backends.cuda.memory`), numpy views over them, and the checks of the feeds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.backends.base import TensorSpec

__all__ = ["IOBuffers", "check_feeds", "host_view", "outside_profile"]


def host_view(host: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> NDArray[Any]:
    """An ndarray of ``shape`` over the bytes of pinned buffer ``host``: a view, never a copy."""
    flat: NDArray[np.uint8] = host.array
    return np.ndarray(shape, dtype=dtype, buffer=flat)


def check_feeds(inputs: tuple[TensorSpec, ...], feeds: Mapping[str, object]) -> None:
    missing = [s.name for s in inputs if s.name not in feeds]
    extra = sorted(set(feeds) - {s.name for s in inputs})
    if missing or extra:
        raise ValueError(
            f"feeds do not match the engine inputs: missing {missing}, unexpected {extra}"
        )


def outside_profile(spec: TensorSpec, shape: tuple[int, ...]) -> ValueError:
    return ValueError(
        f"input '{spec.name}' shape {shape} is outside the engine's "
        f"optimization profile (engine shape {spec.shape})"
    )


class IOBuffers:
    """Per tensor name: a device buffer (``device``) and a pinned host buffer (``host``), both
    grow-only, made with the CUDA layer ``cuda``. ``zero_copy``: a mapped host buffer instead of
    the pair, which the engine binds at its ``device_ptr``."""

    def __init__(self, cuda: Any = None, *, zero_copy: bool = False) -> None:
        self.cuda = cuda
        self.zero_copy = zero_copy
        self.device: dict[str, Any] = {}
        self.host: dict[str, Any] = {}

    def get(
        self, name: str, nbytes: int, *, device: bool = True, host_bytes: int | None = None
    ) -> tuple[Any, Any]:
        """Device (unless ``device`` is False) and pinned host buffers of at least ``nbytes``
        (``host_bytes`` for the host one) for ``name``. Zero-copy: (None, mapped buffer)."""
        if self.zero_copy and device:
            host = self.host.get(name)
            if host is None or host.nbytes < nbytes:
                if host is not None:
                    host.close()
                host = self.host[name] = self.cuda.MappedBuffer((max(nbytes, 1),), np.uint8)
            return None, host
        dev = self.device.get(name)
        if device and (dev is None or dev.nbytes < nbytes):
            if dev is not None:
                dev.close()
            dev = self.device[name] = self.cuda.DeviceBuffer(nbytes)
        wanted = nbytes if host_bytes is None else host_bytes
        host = self.host.get(name)
        if host is None or host.nbytes < wanted:
            if host is not None:
                host.close()
            host = self.host[name] = self.cuda.PinnedBuffer((max(wanted, 1),), np.uint8)
        return dev, host

    def close(self) -> None:
        """Free every buffer (the stream's work on them must be complete)."""
        for buf in [*self.device.values(), *self.host.values()]:
            buf.close()
        self.device.clear()
        self.host.clear()
