"""Builder memory-pool limits, pure: what ``IBuilderConfig.set_memory_pool_limit`` gets.

The build child's memory cap is enforced by watching its ``VmRSS``. On a Jetson, host and device
memory are one DRAM and the builder's allocations are nvmap buffers that RSS does not show. The
TensorRT API documents the pools that bound them (``MemoryPoolType``, Python API 8.6–11.x and
tensorrt-stubs 10.13):

* ``WORKSPACE``: scratch memory of one layer's tactic; "defaults to max device memory". Set from
  the profile's ``workspace_mib`` (as before).
* ``TACTIC_DRAM`` (8.6+): "the host DRAM used by the optimizer to run tactics. On embedded
  devices, where host and device memory are unified, this includes all device memory required
  by TensorRT to build the network up to the point of each memory allocation. This defaults to
  75% of totalGlobalMem ... when cudaGetDeviceProperties.embedded is true". On a 4 GB Orin Nano
  that default is ~2.9 GB outside the child's cap. It is set to what the cap leaves above the
  child's resident memory when the build starts (never below the workspace, which a tactic
  needs anyway).
* ``DLA_LOCAL_DRAM`` (default 1 GiB) and ``DLA_GLOBAL_DRAM`` (default 512 MiB): host RAM the DLA
  uses; "must be at least 4 KiB and must be a power of 2". On a DLA build they are bounded to
  the largest power of two within a quarter / an eighth of the cap (never above the default).
* ``DLA_MANAGED_SRAM`` is on-chip SRAM (1 MiB per Orin core) and ``TACTIC_SHARED_MEMORY`` is the
  GPU's per-SM shared memory: neither is DRAM, both keep TensorRT's defaults.

What stays uncapped by any pool (and so outside both the pools and RSS on a Jetson): the CUDA
context and driver allocations made when CUDA initialises (hundreds of MiB with eager module
loading; ``CUDA_MODULE_LOADING=LAZY`` is the default from CUDA 11.7 and keeps it small), cuDNN /
cuBLAS(Lt) handles and their kernel images when a tactic source loads them, and the deserialized
engine used for inspection after the build (the builder objects are released first, see
``build.py``). The parser's copy of the weights is ordinary host memory and is in RSS.
"""

from __future__ import annotations

from agent.backends.tensorrt.plan import BuildPlan

KIB = 1024
MIB = 1024 * KIB
#: TensorRT's documented defaults for the DLA's host-RAM pools
DLA_LOCAL_DEFAULT = 1024 * MIB
DLA_GLOBAL_DEFAULT = 512 * MIB


def _pow2_floor(value: int) -> int:
    return 1 << (max(value, 1).bit_length() - 1)


def _dla_pool(cap_bytes: int, share: int, default: int) -> int:
    return max(4 * KIB, min(default, _pow2_floor(cap_bytes // share)))


def pool_limits(plan: BuildPlan, available: tuple[str, ...], resident_bytes: int) -> dict[str, int]:
    """Pool name → limit in bytes for this build. ``available``: the ``MemoryPoolType`` members
    of this TensorRT (:attr:`Capabilities.memory_pools`); ``resident_bytes``: the build
    process's resident memory just before the build (0 when unknown)."""
    limits = {"WORKSPACE": plan.workspace_bytes}
    cap = plan.memory_cap_bytes
    if cap is None:
        return limits
    if "TACTIC_DRAM" in available:
        limits["TACTIC_DRAM"] = max(plan.workspace_bytes, cap - max(resident_bytes, 0))
    if plan.device_type == "DLA":
        if "DLA_LOCAL_DRAM" in available:
            limits["DLA_LOCAL_DRAM"] = _dla_pool(cap, 4, DLA_LOCAL_DEFAULT)
        if "DLA_GLOBAL_DRAM" in available:
            limits["DLA_GLOBAL_DRAM"] = _dla_pool(cap, 8, DLA_GLOBAL_DEFAULT)
    return limits


def uncapped_note(plan: BuildPlan, available: tuple[str, ...]) -> str | None:
    """A note for the build report when builder memory is not bounded by the cap."""
    if plan.memory_cap_bytes is None:
        return (
            "no build memory cap was given: only WORKSPACE is limited; TACTIC_DRAM keeps "
            "TensorRT's default (75% of memory on a Jetson), outside the child's RSS watch"
        )
    if "TACTIC_DRAM" not in available:
        return "this TensorRT has no TACTIC_DRAM pool (< 8.6): tactic memory is not bounded"
    return None
