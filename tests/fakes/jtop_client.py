"""A fake of jetson-stats' jtop client (``jtop.jtop``) talking to a fake ``jtop.service``.

What the client surface is (jetson-stats ``jtop/jtop.py``, 4.3.x and 7.x alike): ``start()``
connects to the service and raises ``JtopException`` ("The jtop.service is not active...") when
it is not running; ``ok(spin)`` returns whether the reader thread still runs and re-raises the
error that stopped it ("Lost connection with jtop server"); ``close()``; and the properties
``power``, ``temperature``, ``memory``, ``cpu`` (plain dicts), ``gpu`` (a ``GPU``, a
``GenericInterface``: ``items``/``keys``/``values``/``get``/``[]``, not a dict) and
``nvpmodel`` (``None`` or an ``NVPModel`` with ``.name`` / ``.id``).

The board data (the dict shapes of each jetson-stats version) live in
:mod:`tests.fakes.jtop_v4` and :mod:`tests.fakes.jtop_v7`; this module only plays the service.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from dataclasses import dataclass, field
from typing import Any


class JtopException(Exception):
    """jetson-stats ``jtop/core/exceptions.py``."""


@dataclass
class JtopService:
    """The state of the fake ``jtop.service``: stop it (``running = False``) and every client
    loses its connection; bump ``generation`` when it restarts (old clients stay lost)."""

    running: bool = True
    generation: int = 0
    clients: int = 0


@dataclass(frozen=True)
class JtopBoard:
    """What one jetson-stats version reports on one board (its service's ``jtop_decode``)."""

    version: str
    power: dict[str, Any]
    temperature: dict[str, Any]
    memory: dict[str, Any]
    gpu: dict[str, Any]
    cpu: dict[str, Any]
    nvpmodel: tuple[str, int] | None
    notes: list[str] = field(default_factory=list[str])


class GenericInterface:
    """jetson-stats ``jtop/core/common.py`` ``GenericInterface``: dict-like, not a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def items(self) -> ItemsView[str, Any]:
        return self._data.items()

    def keys(self) -> KeysView[str]:
        return self._data.keys()

    def values(self) -> ValuesView[Any]:
        return self._data.values()

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class NVPModel:
    """jetson-stats ``jtop/core/nvpmodel.py``: the active mode's ``name`` and ``id``."""

    def __init__(self, name: str, mode_id: int) -> None:
        self._name, self._id = name, mode_id

    @property
    def name(self) -> str:
        return self._name

    @property
    def id(self) -> int:
        return self._id


class FakeJtopClient:
    """One ``jtop.jtop(interval=...)`` client of ``service`` reading ``board``."""

    def __init__(self, board: JtopBoard, service: JtopService, interval: float = 1.0) -> None:
        self.board = board
        self.interval = interval
        self._service = service
        self._running = False
        self._generation = -1
        service.clients += 1

    def start(self) -> None:
        if not self._service.running:
            raise JtopException(
                "The jtop.service is not active. Please run:\nsudo systemctl restart jtop.service"
            )
        self._generation = self._service.generation
        self._running = True

    def ok(self, spin: bool = False) -> bool:
        if not self._service.running or self._generation != self._service.generation:
            self._running = False
            raise JtopException("Lost connection with jtop server")
        return self._running

    def close(self) -> None:
        self._running = False

    @property
    def power(self) -> dict[str, Any]:
        return copy.deepcopy(self.board.power)

    @property
    def temperature(self) -> dict[str, Any]:
        return copy.deepcopy(self.board.temperature)

    @property
    def memory(self) -> dict[str, Any]:
        return copy.deepcopy(self.board.memory)

    @property
    def gpu(self) -> GenericInterface:
        return GenericInterface(copy.deepcopy(self.board.gpu))

    @property
    def cpu(self) -> dict[str, Any]:
        return copy.deepcopy(self.board.cpu)

    @property
    def nvpmodel(self) -> NVPModel | None:
        mode = self.board.nvpmodel
        return None if mode is None else NVPModel(*mode)


def client_factory(board: JtopBoard, service: JtopService) -> Callable[[], FakeJtopClient]:
    """What :class:`agent.monitor.jtop.JtopSource` takes as ``factory``."""

    def make() -> FakeJtopClient:
        return FakeJtopClient(board, service)

    return make
