"""Set the image input's axes by position.

Exporters name dynamic axes freely: PaddlePaddle names height and width both ``?``, other
exports leave axes anonymous or write ``dim_value: -1``. Fixing a dimension *by name* (as
``make_dim_param_fixed`` does) pins every axis sharing that name to one value, so a 48x192 input
becomes 48x48. Here every axis of the image input is set on its own: a value where the caller
pins it, otherwise a dynamic name of its own. A name is fixed graph-wide only when it belongs to
exactly one axis of the input; shapes elsewhere in the graph that use a shared name, or a
``dim_value <= 0``, are cleared so shape inference works them out again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from agent.engine.onnxgraph import GraphProto, ValueInfoProto

__all__ = ["AxisPins", "is_dynamic", "pin_axes"]


@dataclass(frozen=True)
class AxisPins:
    """What :func:`pin_axes` changed."""

    #: axis -> value it was set to (axes that were dynamic before)
    pinned: dict[int, int]
    #: axis -> its new dynamic name (it was anonymous, ``<= 0`` or shared a name)
    renamed: dict[int, str]
    #: dim_params that several axes of the input shared
    shared: tuple[str, ...]
    #: dimensions cleared elsewhere in the graph (stale shared names, values ``<= 0``)
    cleared: int

    @property
    def changed(self) -> bool:
        return bool(self.pinned or self.renamed or self.cleared)


def is_dynamic(value: int | str) -> bool:
    """Whether a dimension read by :func:`agent.engine.onnxgraph.dim_value` is dynamic: a name,
    or an int ``<= 0`` (``-1``: anonymous, or a ``dim_value <= 0`` in the file)."""
    return not isinstance(value, int) or value <= 0


def _value_infos(graph: GraphProto) -> Iterator[ValueInfoProto]:
    yield from graph.input
    yield from graph.output
    yield from graph.value_info
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _value_infos(attr.g)
            for sub in attr.graphs:
                yield from _value_infos(sub)


def _all_params(graph: GraphProto) -> set[str]:
    return {
        d.dim_param
        for vi in _value_infos(graph)
        for d in vi.type.tensor_type.shape.dim
        if d.HasField("dim_param")
    }


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def _elsewhere(graph: GraphProto, fixed: dict[str, int], stale: set[str]) -> int:
    """Fix the names in ``fixed`` and clear the names in ``stale`` (and values ``<= 0``) in every
    shape of the graph; returns how many dims were cleared. The image input holds none of them
    any more, so it is not touched."""
    cleared = 0
    for vi in _value_infos(graph):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in fixed:
                value = fixed[d.dim_param]
                d.Clear()
                d.dim_value = value
            elif (d.HasField("dim_param") and d.dim_param in stale) or (
                d.HasField("dim_value") and d.dim_value <= 0
            ):
                d.Clear()
                cleared += 1
    return cleared


def pin_axes(graph: GraphProto, vi: ValueInfoProto, pin: Sequence[int | None]) -> AxisPins:
    """Set each dynamic axis of the input ``vi`` of ``graph`` to ``pin[axis]``, or to a dynamic
    name of its own where ``pin[axis]`` is None and the axis has none (anonymous, ``<= 0``,
    or a name shared with another axis). Fixed axes (``dim_value > 0``) are left alone."""
    dims = vi.type.tensor_type.shape.dim
    names = [d.dim_param if d.HasField("dim_param") and d.dim_param else "" for d in dims]
    counts = Counter(n for n in names if n)
    shared = {n for n, c in counts.items() if c > 1}
    taken = _all_params(graph)
    pinned: dict[int, int] = {}
    renamed: dict[int, str] = {}
    fixed: dict[str, int] = {}
    for axis, (d, value) in enumerate(zip(dims, pin, strict=True)):
        if d.HasField("dim_value") and d.dim_value > 0:
            continue
        name = names[axis]
        if value is not None:
            if name and name not in shared:
                fixed[name] = value
            d.Clear()
            d.dim_value = value
            pinned[axis] = value
        elif not name or name in shared:
            d.Clear()
            d.dim_param = renamed[axis] = _unique(f"{vi.name}_dim{axis}", taken)
    cleared = _elsewhere(graph, fixed, shared)
    return AxisPins(pinned, renamed, tuple(sorted(shared)), cleared)
