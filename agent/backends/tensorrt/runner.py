"""The TensorRT runner: a leased shared engine (:mod:`.engines`), its own execution context and
CUDA stream, grow-only device and pinned host buffers per tensor (on an integrated GPU, mapped
pinned buffers that TensorRT reads and writes in place, no copies: see
:mod:`agent.backends.cuda.memory`), an ``IOutputAllocator`` for outputs with data-dependent shapes
(:mod:`.outputs`); inputs are host arrays or :class:`DeviceTensor` bindings. With ``timing`` on
(``edge-agent bench``) it times the H2D / compute / D2H stages with CUDA events (:mod:`.timing`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.backends.base import (
    DeviceTensor,
    InputShapes,
    RunnerBase,
    TensorSpec,
    summarize_layer_times,
)
from agent.backends.cuda import memory as cuda_memory
from agent.backends.cuda import runtime as cuda_runtime
from agent.backends.tensorrt.engines import SHARED, EngineLease, SharedEngines
from agent.backends.tensorrt.inspect import inspector_layers, io_specs, profile_shapes
from agent.backends.tensorrt.loader import LayerTimes, dims, is_none, load_trt, make_profiler, trt
from agent.backends.tensorrt.outputs import make_output_allocator
from agent.backends.tensorrt.plan import Capabilities, detect_capabilities
from agent.backends.tensorrt.staging import IOBuffers, check_feeds, host_view, outside_profile
from agent.backends.tensorrt.timing import ZERO_COPY_NOTE, StageTiming
from agent.core.errors import BackendUnavailable


class CudaLayer:
    """The CUDA calls the runner makes, from :mod:`agent.backends.cuda` (runtime, memory);
    tests inject a fake with the same names."""

    Stream = cuda_runtime.Stream
    Event = cuda_runtime.Event
    DeviceBuffer = cuda_memory.DeviceBuffer
    PinnedBuffer = cuda_memory.PinnedBuffer
    MappedBuffer = cuda_memory.MappedBuffer
    zero_copy_staging = staticmethod(cuda_memory.zero_copy_staging)
    copy_htod_async = staticmethod(cuda_memory.copy_htod_async)
    copy_dtoh_async = staticmethod(cuda_memory.copy_dtoh_async)


#: the CUDA layer a runner uses when none is injected (read when the runner activates)
CUDA: Any = CudaLayer()


class TrtRunner(RunnerBase):
    """Runs one serialized engine: the engine is leased from ``engines`` (one deserialized copy
    per plan file for the whole process), the runner owns one execution context, one CUDA stream,
    grow-only device and pinned host buffers per tensor. Not thread-safe: give each worker its
    own runner (TensorRT: one execution context per concurrently used thread/stream).

    ``dla_core``: the DLA core the engine was built for (``Runtime.DLA_core`` is set to it before
    deserializing); None for GPU engines. ``cuda`` is the CUDA layer (:data:`CUDA` by default);
    tests inject a fake. ``engines``: the shared store (:data:`~.engines.SHARED` by default).

    ``zero_copy``: stage host inputs/outputs in mapped pinned memory that TensorRT reads and
    writes in place (no device buffer, no copies); None (default) asks the CUDA layer's
    ``zero_copy_staging()`` (True on an integrated GPU such as a Jetson's, see
    :mod:`agent.backends.cuda.memory`); False keeps pinned + device buffers and async copies.

    ``timing``: time each inference's stages (:meth:`last_stage_ms`); off by default so serving
    records no events; ``edge-agent bench`` sets it.
    """

    def __init__(
        self,
        artifact_dir: Path,
        main_file: str,
        *,
        threads: int = 0,
        dla_core: int | None = None,
        cuda: Any = None,
        engines: SharedEngines | None = None,
        zero_copy: bool | None = None,
        timing: bool = False,
    ) -> None:
        self.path = artifact_dir / main_file
        self.threads = threads  # TensorRT runs on the GPU; kept for the Runner signature
        self.dla_core = dla_core
        self._cuda: Any = cuda
        self._profile: LayerTimes | None = None
        self._caps = Capabilities()
        self._engines = engines if engines is not None else SHARED
        self._lease: EngineLease | None = None
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._stream: Any = None
        self._done: Any = None
        self._allocator: Any = None
        self._allocated: set[str] = set()
        self._io = IOBuffers()
        self._zero_copy_wanted = zero_copy
        self._zero_copy = False
        self._timing = StageTiming()
        self._timing.enabled = timing

    @property
    def timing(self) -> bool:
        """Whether each inference's H2D / compute / D2H stages are timed (CUDA events)."""
        return self._timing.enabled

    @timing.setter
    def timing(self, value: bool) -> None:
        self._timing.enabled = bool(value)

    def last_stage_ms(self) -> dict[str, float] | None:
        """Milliseconds of the last inference's stages (``h2d``, ``compute``, ``d2h``: CUDA
        event times on the runner's stream, read after it synchronized); a stage that queued no
        copy is 0.0. None when :attr:`timing` is off or no timed inference completed."""
        return self._timing.last

    def transfers_note(self) -> str | None:
        """Why the copies are 0 (zero-copy staging on an integrated GPU), else None."""
        return ZERO_COPY_NOTE if self._zero_copy else None

    def profile_shapes(self) -> dict[str, InputShapes]:
        """min/opt/max of each dynamic input in the engine's optimization profile 0 (empty
        when every input is static); the runner must be active."""
        if self._engine is None:
            raise RuntimeError("runner is not active; use it as a context manager")
        return profile_shapes(self._engine, self._caps, self._inputs)

    @property
    def zero_copy(self) -> bool:
        """Whether this (active) runner stages I/O in mapped host memory without copies."""
        return self._zero_copy

    @property
    def active(self) -> bool:
        return self._context is not None

    def activate(self) -> None:
        if self.active:
            return
        self._caps = detect_capabilities(load_trt())
        if self._cuda is None:
            self._cuda = CUDA
        lease = self._engines.acquire(self.path, self.dla_core)
        try:
            context = lease.engine.create_execution_context()
            if is_none(context):
                raise BackendUnavailable(
                    "TensorRT could not create an execution context (device memory exhausted?)",
                    fix="stop other GPU work or lower the worker count in the device profile",
                )
            inputs, outputs = io_specs(lease.engine, self._caps)
            self._stream = self._cuda.Stream()
            # Waiting on a blocking-sync event, not cudaStreamSynchronize: the host thread sleeps
            # instead of spinning (see agent.backends.cuda.runtime.Event).
            self._done = self._cuda.Event()
            wanted = self._zero_copy_wanted
            self._zero_copy = self._cuda.zero_copy_staging() if wanted is None else wanted
            self._io = IOBuffers(self._cuda, zero_copy=self._zero_copy)
        except BaseException:
            self._close_cuda()
            self._engines.release(lease)
            raise
        self._lease, self._engine = lease, lease.engine
        self._inputs, self._outputs = tuple(inputs), tuple(outputs)
        self._context = context

    def deactivate(self) -> None:
        try:
            if self._stream is not None:
                self._stream.synchronize()
        finally:
            self._close_cuda()
            # The context goes before the engine's lease: a context must not outlive its engine.
            self._context = None
            self._engine = None
            self._profile = None
            lease, self._lease = self._lease, None
            if lease is not None:
                self._engines.release(lease)

    def _close_cuda(self) -> None:
        self._io.close()
        if self._allocator is not None:
            self._allocator.close()
        self._allocator = None
        self._allocated.clear()
        self._timing.close()
        for handle in (self._done, self._stream):
            if handle is not None:
                handle.close()
        self._done = None
        self._stream = None

    def _stage(self, name: str, array: NDArray[Any]) -> int:
        """Write ``array`` into its pinned buffer and, unless zero-copy, queue the copy into its
        device buffer on the stream; returns the device address to bind."""
        dev, host = self._io.get(name, array.nbytes)
        staged = host_view(host, array.dtype, array.shape)
        staged[...] = array
        if dev is None:  # mapped: the engine reads the pinned buffer in place
            return int(host.device_ptr)
        self._cuda.copy_htod_async(dev, staged, self._stream)
        self._timing.copied("h2d")
        return int(dev.ptr)

    def _output_view(self, spec: TensorSpec, shape: tuple[int, ...]) -> tuple[int, NDArray[Any]]:
        """The device address to bind and the pinned host view that receives output ``spec``
        (the same memory when zero-copy)."""
        dtype = np.dtype(spec.dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        dev, host = self._io.get(spec.name, nbytes)
        address = int(host.device_ptr) if dev is None else int(dev.ptr)
        return address, host_view(host, dtype, shape)

    def _fetch(self, results: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """Copy the outputs down, wait for them and return copies of the host views. Outputs
        with data-dependent shapes are read from the output allocator (their shape is known once
        ``execute_async_v3`` returned)."""
        for spec in self._outputs:
            if spec.name in self._allocated:
                results[spec.name] = self._allocated_view(spec)
            elif not self._zero_copy:  # zero-copy: the engine wrote the host view itself
                dev = self._io.device[spec.name]
                self._cuda.copy_dtoh_async(results[spec.name], dev, self._stream)
                self._timing.copied("d2h")
        self._timing.mark(self._stream)  # end of d2h
        self._done.record(self._stream)
        self._done.synchronize()
        self._timing.finish()
        return {name: np.array(view, copy=True) for name, view in results.items()}

    def _allocated_view(self, spec: TensorSpec) -> NDArray[Any]:
        shape = self._allocator.shapes.get(spec.name)
        if shape is None or any(d < 0 for d in shape):
            raise RuntimeError(f"TensorRT did not report the shape of output '{spec.name}'")
        dtype = np.dtype(spec.dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        _dev, host = self._io.get(spec.name, 0, device=False, host_bytes=nbytes)
        view = host_view(host, dtype, shape)
        if nbytes:
            src = self._allocator.buffers[spec.name]
            self._cuda.copy_dtoh_async(view, src, self._stream)
            self._timing.copied("d2h")
        return view

    #: :class:`~agent.backends.base.DeviceTensor` feeds are bound without a copy
    accepts_device_inputs = True

    @property
    def stream(self) -> Any:
        """The runner's CUDA stream (None until active): queue the work that writes a
        :class:`~agent.backends.base.DeviceTensor` input on it."""
        return self._stream

    def infer(self, feeds: Mapping[str, NDArray[Any] | DeviceTensor]) -> dict[str, NDArray[Any]]:
        """Run the engine. A feed is a host array (staged in pinned memory and copied up) or a
        :class:`~agent.backends.base.DeviceTensor` written on :attr:`stream` (bound as is)."""
        context = self._context
        if context is None:
            raise RuntimeError("runner is not active; use it as a context manager")
        check_feeds(self._inputs, feeds)
        device_feeds = {k: v for k, v in feeds.items() if isinstance(v, DeviceTensor)}
        host_feeds = {k: v for k, v in feeds.items() if not isinstance(v, DeviceTensor)}
        self._timing.begin(self._cuda, self._stream)
        if not self._caps.io_tensors_api:
            if device_feeds:
                raise ValueError(
                    "device-memory inputs need TensorRT's named-tensor API (TensorRT >= 8.5)"
                )
            return self._infer_bindings(host_feeds)
        for spec in self._inputs:
            tensor = device_feeds.get(spec.name)
            if tensor is not None:
                self._bind_device_input(context, spec, tensor)
            else:
                self._bind_host_input(context, spec, host_feeds[spec.name])
        results = self._bind_outputs(context)
        self._timing.mark(self._stream)  # end of h2d
        if not context.execute_async_v3(self._stream.handle):  # pyright: ignore[reportUnknownMemberType]  # stubs: bool shadowed
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        self._timing.mark(self._stream)  # end of compute
        return self._fetch(results)

    @staticmethod
    def _bind_device_input(
        context: trt.IExecutionContext, spec: TensorSpec, tensor: DeviceTensor
    ) -> None:
        if np.dtype(tensor.dtype) != np.dtype(spec.dtype):
            raise ValueError(
                f"input '{spec.name}' is {spec.dtype} but the device tensor is {tensor.dtype}"
            )
        if not context.set_input_shape(spec.name, tensor.shape):  # pyright: ignore[reportUnknownMemberType, reportCallIssue, reportArgumentType]
            raise outside_profile(spec, tensor.shape)
        context.set_tensor_address(spec.name, tensor.ptr)  # pyright: ignore[reportUnknownMemberType]  # stubs: bool shadowed

    def _bind_host_input(
        self, context: trt.IExecutionContext, spec: TensorSpec, feed: NDArray[Any]
    ) -> None:
        array = np.ascontiguousarray(feed, dtype=np.dtype(spec.dtype))
        if not context.set_input_shape(spec.name, array.shape):  # pyright: ignore[reportUnknownMemberType, reportCallIssue, reportArgumentType]
            raise outside_profile(spec, array.shape)
        address = self._stage(spec.name, array)
        context.set_tensor_address(spec.name, address)  # pyright: ignore[reportUnknownMemberType]  # stubs: bool shadowed

    def _bind_outputs(self, context: trt.IExecutionContext) -> dict[str, NDArray[Any]]:
        results: dict[str, NDArray[Any]] = {}
        for spec in self._outputs:
            shape = dims(context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                # Still unknown with every input shape set: data-dependent (NonZero, NMS).
                self._use_output_allocator(context, spec.name)
                continue
            address, view = self._output_view(spec, shape)
            context.set_tensor_address(spec.name, address)  # pyright: ignore[reportUnknownMemberType]  # stubs: bool shadowed
            results[spec.name] = view
        return results

    def _use_output_allocator(self, context: trt.IExecutionContext, name: str) -> None:
        if name in self._allocated:
            return
        if self._allocator is None:
            self._allocator = make_output_allocator(self._cuda)
        if not context.set_output_allocator(name, self._allocator):  # pyright: ignore[reportUnknownMemberType]  # stubs: bool shadowed
            raise RuntimeError(f"TensorRT refused an output allocator for output '{name}'")
        self._allocated.add(name)

    def profile_layers(
        self, feeds: Mapping[str, NDArray[Any]], *, iterations: int
    ) -> list[dict[str, Any]]:
        """Per-layer time of ``iterations`` inferences (after one warm-up), reported by a
        ``trt.IProfiler`` set as the execution context's ``profiler``. ``enqueue_emits_profile``
        keeps its default (True): each enqueue reports its layers' times itself. The profiler
        stays attached, not recording, until ``deactivate``."""
        context = self._context
        if context is None or self._engine is None:
            raise RuntimeError("runner is not active; use it as a context manager")
        if self._profile is None:
            self._profile = LayerTimes()
            context.profiler = make_profiler(self._profile)
        profile = self._profile
        profile.recording = False
        self.infer(feeds)  # warm-up: first-run set-up is not layer time
        profile.times.clear()
        profile.recording = True
        try:
            for _ in range(max(1, iterations)):
                self.infer(feeds)
        finally:
            profile.recording = False
        types = {layer["name"]: layer["type"] for layer in inspector_layers(self._engine)}
        times = list(profile.times)
        return summarize_layer_times((n, types.get(n, "?"), ms * 1000.0) for n, ms in times)

    def _infer_bindings(self, feeds: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """TensorRT < 8.5 only: index-based bindings and ``execute_async_v2``. Reached through an
        ``Any`` handle because tensorrt-stubs 10.x (and TensorRT 10) no longer have this API."""
        legacy: Any = self._context
        engine: Any = self._engine
        bindings: list[int] = [0] * int(engine.num_bindings)
        index = {str(engine.get_binding_name(i)): i for i in range(len(bindings))}
        for spec in self._inputs:
            array = np.ascontiguousarray(feeds[spec.name], dtype=np.dtype(spec.dtype))
            legacy.set_binding_shape(index[spec.name], array.shape)
            bindings[index[spec.name]] = self._stage(spec.name, array)
        results: dict[str, NDArray[Any]] = {}
        for spec in self._outputs:
            shape = dims(legacy.get_binding_shape(index[spec.name]))
            if any(d < 0 for d in shape):
                raise RuntimeError(
                    f"output '{spec.name}' has a data-dependent shape; that needs an "
                    "IOutputAllocator (TensorRT >= 8.5's named-tensor API)"
                )
            bindings[index[spec.name]], results[spec.name] = self._output_view(spec, shape)
        self._timing.mark(self._stream)  # end of h2d
        if not legacy.execute_async_v2(bindings, self._stream.handle):
            raise RuntimeError("TensorRT execute_async_v2 failed (see the TensorRT log)")
        self._timing.mark(self._stream)  # end of compute
        return self._fetch(results)
