"""A context-manager base for objects that hold a resource until ``close()``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import TypeVar

_C = TypeVar("_C", bound="Closeable")


class Closeable(ABC):
    """``with obj:`` closes it on exit; subclasses implement an idempotent ``close()``."""

    @abstractmethod
    def close(self) -> None:
        """Release the resource; calling it again does nothing."""

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
