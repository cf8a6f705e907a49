"""How much memory the streamed quantization passes may hold, and how tensors are grouped.

Calibration, bias-correction statistics and the node-error probe fetch intermediate tensors
from ONNX Runtime. A fetched tensor stays alive until the run ends (and is copied into
NumPy), so fetching every activation of a frame at once costs the sum of all activations.
The passes therefore run the model once per *group* of tensors per frame, each group's
activations for one frame fitting the budget, and fold each frame into running statistics.

Sizes are estimated from the prepared model's inferred shapes: a named dimension that the
model input also has takes the fed value, any other unknown dimension the largest dimension of
the fed input, and a tensor with no shape at all the largest estimated tensor.
"""

from __future__ import annotations

import logging
import math
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.engine.onnxgraph import ModelProto, ValueInfoProto, dim_value, elem_type_name

__all__ = [
    "DEFAULT_BUDGET_MIB",
    "MemoryPlan",
    "activation_bytes",
    "budget_from_cap",
    "own_rss_mib",
    "plan_groups",
    "value_infos",
]

log = logging.getLogger(__name__)

_MIB = 1 << 20

#: Memory a quantization may use beyond what the process holds when it starts (no cap known).
DEFAULT_BUDGET_MIB = 1024

#: Kept free under a cap: ONNX Runtime arenas, thread stacks, allocator fragmentation.
_CAP_RESERVE_FRACTION = 0.15
_CAP_RESERVE_MIN_MIB = 96

_ELEM_BYTES = {
    "FLOAT": 4,
    "FLOAT16": 2,
    "BFLOAT16": 2,
    "DOUBLE": 8,
    "INT64": 8,
    "UINT64": 8,
    "INT32": 4,
    "UINT32": 4,
    "INT16": 2,
    "UINT16": 2,
    "INT8": 1,
    "UINT8": 1,
    "BOOL": 1,
}


def _status_mib(key: str) -> float | None:
    """A ``/proc/self/status`` memory line (``VmRSS``, ``VmSize``) in MiB, None where unreadable."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def own_rss_mib() -> float | None:
    """This process's resident memory (``/proc/self/status`` ``VmRSS``), None where unreadable."""
    return _status_mib("VmRSS")


def _address_space_left_mib() -> float | None:
    """What ``RLIMIT_AS`` still allows this process to map (None without a limit): the
    isolated build child runs under one, and ONNX Runtime's threads map far more than they
    touch, so this can bind before resident memory does."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    size = _status_mib("VmSize")
    if soft == resource.RLIM_INFINITY or size is None:
        return None
    return soft / _MIB - size


def budget_from_cap(cap_mib: int, rss_mib: float | None) -> int:
    """The memory budget of a quantization running under ``cap_mib`` (resident memory, MiB)
    in a process that already holds ``rss_mib``: what is left (under the address-space limit
    too, where one is set), less a reserve."""
    left = cap_mib - (rss_mib or 0.0)
    mappable = _address_space_left_mib()
    if mappable is not None:
        left = min(left, mappable)
    reserve = max(_CAP_RESERVE_MIN_MIB, _CAP_RESERVE_FRACTION * cap_mib)
    return max(32, int(left - reserve))


def value_infos(model: ModelProto) -> dict[str, ValueInfoProto]:
    """Every typed tensor of ``model``: value_info, outputs, inputs."""
    infos = {vi.name: vi for vi in model.graph.value_info}
    infos.update({vi.name: vi for vi in model.graph.output})
    infos.update({vi.name: vi for vi in model.graph.input})
    return infos


def _input_dims(model: ModelProto, feed_shape: Sequence[int]) -> dict[str, int]:
    """Named dims of the first model input -> the fed size on that axis."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if not inputs:
        return {}
    dims = inputs[0].type.tensor_type.shape.dim
    named = {}
    for axis, dim in enumerate(dims):
        value = dim_value(dim)
        if isinstance(value, str) and axis < len(feed_shape):
            named[value] = int(feed_shape[axis])
    return named


def _bytes_of(vi: ValueInfoProto, named: Mapping[str, int], unknown_dim: int) -> int | None:
    ttype = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not ttype.HasField("shape"):
        return None
    try:
        elem = _ELEM_BYTES.get(elem_type_name(ttype.elem_type), 4)
    except ValueError:
        elem = 4
    count = 1
    for dim in ttype.shape.dim:
        value = dim_value(dim)
        if isinstance(value, str):
            value = named.get(value, unknown_dim)
        elif value < 0:
            value = unknown_dim
        count *= value
    return count * elem


def activation_bytes(
    model: ModelProto, names: Sequence[str], feed_shape: Sequence[int]
) -> dict[str, int]:
    """Estimated bytes of each tensor ``names`` for one feed of ``feed_shape``."""
    infos = value_infos(model)
    named = _input_dims(model, feed_shape)
    unknown_dim = max([int(d) for d in feed_shape[1:]] or [1])
    sizes = {n: _bytes_of(infos[n], named, unknown_dim) if n in infos else None for n in names}
    known = [s for s in sizes.values() if s is not None]
    fallback = max(known) if known else 4 * math.prod(int(d) for d in feed_shape) * 16
    return {n: s if s is not None else fallback for n, s in sizes.items()}


@dataclass(frozen=True)
class MemoryPlan:
    """How the streamed passes hold tensors: the budget and the bytes one group may hold."""

    budget_mib: int
    group_bytes: int

    @classmethod
    def of(cls, budget_mib: int, model_bytes: int, largest_tensor: int, copies: int) -> MemoryPlan:
        """Of a budget: the sessions (about 3x the model's weights: ORT's copy, the proto,
        the Q/DQ model) and the working set of one inference (about 4 of the largest tensors)
        come off first; the rest is shared by ``copies`` sets of fetched tensors."""
        fixed = 3 * model_bytes + 4 * largest_tensor
        free = budget_mib * _MIB - fixed
        return cls(budget_mib, max(largest_tensor, free // max(1, copies), 1 << 20))


def plan_groups(
    names: Sequence[str], sizes: Mapping[str, int], group_bytes: int
) -> list[list[str]]:
    """Consecutive (topologically ordered) groups of ``names`` whose sizes sum to at most
    ``group_bytes``; a tensor larger than that is a group of its own."""
    groups: list[list[str]] = []
    current: list[str] = []
    used = 0
    for name in names:
        size = sizes.get(name, 0)
        if current and used + size > group_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        groups.append(current)
    return groups
