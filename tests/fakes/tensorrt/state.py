"""Shared state of the fake TensorRT: device memory, the call recorder, enum values and the
per-module context (:class:`Fake`) every ``install_*`` function reads."""

from __future__ import annotations

import itertools
import types
import weakref
from dataclasses import dataclass, field
from typing import Any


class DeviceMemory:
    """Fake device memory: base address → bytearray (shared by the fake TRT and fake CUDA), and
    the fake device's timeline ``clock_ms``: the work the fakes queue advances it (a copy by its
    bytes over ``FakeCuda.bytes_per_ms``, an engine execution by its layers' times), and a fake
    CUDA event records the clock, so elapsed times are deterministic. One timeline for every
    stream: the fakes run work in the order it is queued."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}
        self._next = itertools.count(0x10000, 0x10000)
        self.clock_ms = 0.0

    def alloc(self, nbytes: int) -> int:
        ptr = next(self._next)
        self.blocks[ptr] = bytearray(max(nbytes, 1))
        return ptr

    def free(self, ptr: int) -> None:
        del self.blocks[ptr]

    def block(self, ptr: int) -> bytearray:
        return self.blocks[ptr]


@dataclass
class Recorder:
    version: str
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)
    build_error: str | None = None
    memory: DeviceMemory = field(default_factory=DeviceMemory)
    #: what each IBuilderConfig set (its flags and pool limits), kept after the config dies
    configs: list[Any] = field(default_factory=list)
    profiles: list[Any] = field(default_factory=list)
    layer_ms: dict[str, float] = field(default_factory=dict)
    #: builder-side objects (Builder, INetworkDefinition, IBuilderConfig, OnnxParser) still alive
    alive: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    #: for each deserialize_cuda_engine: the type names of the builder objects alive then
    alive_at_deserialize: list[list[str]] = field(default_factory=list)
    #: what ``Builder.num_DLA_cores`` answers (2, as on AGX Orin and Orin NX 16GB)
    dla_cores: int = 2

    def record(self, *call: Any) -> None:
        self.calls.append(call)

    def named(self, method: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == method]


class _EnumValue:
    def __init__(self, owner: str, name: str, value: int):
        self.owner, self.name, self.value = owner, name, value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _EnumValue)
            and other.owner == self.owner
            and other.value == self.value
        )

    def __hash__(self) -> int:
        return hash((self.owner, self.value))

    def __repr__(self) -> str:
        return f"<{self.owner}.{self.name}: {self.value}>"

    __str__ = __repr__


def make_enum(name: str, members: dict[str, int]) -> type:
    values = {k: _EnumValue(name, k, v) for k, v in members.items()}
    return type(name, (), {**values, "__members__": dict(values)})


@dataclass
class Fake:
    """What every ``install_*`` function of the fake module needs."""

    mod: types.ModuleType
    rec: Recorder
    major: int
    #: NetworkDefinitionCreationFlag members (name → bit)
    ndcf: dict[str, int]
    dt_by_onnx: dict[int, str] = field(
        default_factory=lambda: {
            1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8"
        }
    )  # fmt: skip
    np_by_dt: dict[str, Any] = field(default_factory=dict)


def as_tuple(shape: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in shape)
