"""agent/pipeline/preprocess.py: the CPU path's buffer reuse and geometry, a numpy model of the
fused CUDA kernel checked against OpenCV here, and (``gpu``) the kernel itself against the CPU
path within the module's stated tolerance."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from agent.backends.cuda import kernels as cuda_kernels
from agent.backends.cuda import memory as cuda_memory
from agent.backends.cuda import runtime as cuda_runtime
from agent.config.model import InputSpec
from agent.core.errors import BackendUnavailable
from agent.pipeline.preprocess import choose
from agent.pipeline.preprocess.choose import make_preprocessor
from agent.pipeline.preprocess.cpu_path import CpuPreprocessor
from agent.pipeline.preprocess.geometry import fit_geometry, tolerance
from agent.pipeline.preprocess.gpu_path import (
    KERNEL_NAME,
    KERNEL_OPTIONS,
    KERNEL_SOURCE,
    GpuPreprocessor,
)
from agent.vision.letterbox import preprocess


def _gpu_status() -> tuple[bool, str]:
    try:
        cuda_runtime.load_cudart()
        cuda_kernels.load_driver()
        cuda_kernels.load_nvrtc()
    except BackendUnavailable as exc:
        return False, f"cuda-python is not installed: {exc}"
    ok, why = cuda_runtime.available()
    return ok, "" if ok else why


_GPU_OK, _GPU_WHY = _gpu_status()
gpu = pytest.mark.gpu
needs_gpu = pytest.mark.skipif(not _GPU_OK, reason=f"no usable CUDA GPU: {_GPU_WHY}")


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Noise with a few hard edges: the worst case for resize rounding."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[: h // 3, : w // 2] = (255, 0, 0)
    img[h // 2 :, w // 3 : w // 2] = (0, 0, 0)
    return img


def _spec(**kw: object) -> InputSpec:
    return InputSpec.model_validate({"name": "images", **kw})


# --------------------------------------------------------------------- numpy model of the kernel


def _axis(dst: int, src: int) -> tuple[np.ndarray, np.ndarray]:
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    return s, (f - s.astype(np.float32)).astype(np.float32)


def _weights(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    one, coef = np.float32(1), np.float32(2048)
    return np.rint((one - f) * coef).astype(np.int64), np.rint(f * coef).astype(np.int64)


def _resize_model(img: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """The kernel's resize, line for line: OpenCV INTER_LINEAR fixed point, SIMD rounding."""
    h, w = img.shape[:2]
    sx, fx = _axis(new_w, w)
    low = sx < 0
    fx[low], sx[low] = 0, 0
    high = sx >= w - 1
    fx[high], sx[high] = 0, w - 1
    sx1 = np.minimum(sx + 1, w - 1)
    ax0, ax1 = _weights(fx)
    sy, fy = _axis(new_h, h)
    by0, by1 = _weights(fy)
    y0, y1 = np.clip(sy, 0, h - 1), np.clip(sy + 1, 0, h - 1)
    src = img.astype(np.int64)

    def hpass(rows: np.ndarray) -> np.ndarray:
        return src[rows][:, sx] * ax0[:, None] + src[rows][:, sx1] * ax1[:, None]

    t = ((by0[:, None, None] * (hpass(y0) >> 4)) >> 16) + (
        (by1[:, None, None] * (hpass(y1) >> 4)) >> 16
    )
    return np.clip((t + 2) >> 2, 0, 255).astype(np.uint8)


def _kernel_model(frame: np.ndarray, spec: InputSpec, size_hw: tuple[int, int]) -> np.ndarray:
    height, width = size_hw
    geo = fit_geometry(frame.shape[:2], spec, size_hw)
    canvas = np.full((height, width, 3), spec.pad_value, dtype=np.uint8)
    resized = _resize_model(frame, geo.new_w, geo.new_h)
    x0, y0 = max(geo.left, 0), max(geo.top, 0)
    x1, y1 = min(geo.left + geo.new_w, width), min(geo.top + geo.new_h, height)
    canvas[y0:y1, x0:x1] = resized[y0 - geo.top : y1 - geo.top, x0 - geo.left : x1 - geo.left]
    order = (2, 1, 0) if spec.color == "rgb" else (0, 1, 2)
    planes = [
        canvas[:, :, k].astype(np.float32) * np.float32(spec.scale / spec.std[c])
        - np.float32(spec.mean[c] / spec.std[c])
        for c, k in enumerate(order)
    ]
    axis = 0 if spec.layout == "NCHW" else 2
    return np.stack(planes, axis=axis)[None].astype(np.float32)


def _assert_within_tolerance(got: np.ndarray, ref: np.ndarray, spec: InputSpec) -> None:
    max_tol, mean_tol = tolerance(spec)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    assert got.shape == ref.shape
    assert float(diff.max()) <= max_tol, (float(diff.max()), max_tol)
    assert float(diff.mean()) <= mean_tol, (float(diff.mean()), mean_tol)


# Source size, model size, resize mode, colour, mean/std, layout.
Case = tuple[tuple[int, int], tuple[int, int], str, str, "str | None", str]
CASES: list[Case] = [
    ((720, 1280), (640, 640), "letterbox", "rgb", None, "NCHW"),
    ((2160, 3840), (640, 640), "letterbox", "rgb", None, "NCHW"),
    ((333, 517), (320, 256), "letterbox", "bgr", None, "NCHW"),
    ((37, 53), (256, 256), "letterbox", "rgb", None, "NCHW"),
    ((641, 479), (640, 640), "letterbox", "rgb", None, "NHWC"),
    ((640, 640), (640, 640), "letterbox", "rgb", None, "NCHW"),
    ((720, 1280), (224, 224), "stretch", "rgb", "imagenet", "NCHW"),
    ((101, 77), (64, 64), "stretch", "bgr", "imagenet", "NCHW"),
    ((480, 640), (513, 511), "stretch", "rgb", None, "NHWC"),
]
CASE_IDS = [
    f"{s[0]}x{s[1]}-{d[0]}x{d[1]}-{m}-{c}-{n or 'plain'}-{lay}" for s, d, m, c, n, lay in CASES
]


def _case_spec(resize: str, color: str, norm: str | None, layout: str) -> InputSpec:
    extra: dict[str, object] = {}
    if norm == "imagenet":
        extra = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    return _spec(resize=resize, color=color, layout=layout, pad_value=114, **extra)


# --------------------------------------------------------------------------------- CPU path


def test_cpu_path_fills_the_preallocated_buffer_in_place() -> None:
    spec = _spec()
    with CpuPreprocessor(spec, (640, 640), batch=2, pinned=False) as pre:
        buf = pre.buffer
        ident, addr = id(buf), buf.ctypes.data
        assert buf.shape == (2, 3, 640, 640) and buf.dtype == np.float32
        for seed in range(3):
            frames = [_frame(720, 1280, seed), _frame(480, 640, seed + 10)]
            infos = pre.process(frames)
            assert id(pre.buffer) == ident and pre.buffer.ctypes.data == addr
            assert pre.download() is buf
            for i, frame in enumerate(frames):
                ref, info = preprocess(frame, spec, (640, 640))
                np.testing.assert_array_equal(buf[i], ref[0])
                assert infos[i] == info


def test_cpu_path_refuses_more_frames_than_the_batch() -> None:
    with (
        CpuPreprocessor(_spec(), (64, 64), batch=1, pinned=False) as pre,
        pytest.raises(ValueError, match="batch of 1"),
    ):
        pre.process([_frame(10, 10), _frame(10, 10)])


def test_nhwc_buffer_shape() -> None:
    with CpuPreprocessor(_spec(layout="NHWC"), (96, 128), batch=3, pinned=False) as pre:
        assert pre.buffer.shape == (3, 96, 128, 3)


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize(
    "src_hw", [(720, 1280), (1280, 720), (2160, 3840), (333, 517), (37, 41), (640, 640), (8, 999)]
)
@pytest.mark.parametrize("size_hw", [(640, 640), (256, 320), (224, 224), (255, 257)])
def test_geometry_matches_the_reference(
    resize: str, src_hw: tuple[int, int], size_hw: tuple[int, int]
) -> None:
    spec = _spec(resize=resize)
    _, info = preprocess(np.zeros((*src_hw, 3), np.uint8), spec, size_hw)
    assert fit_geometry(src_hw, spec, size_hw).info == info


def test_letterbox_geometry_of_a_720p_frame() -> None:
    spec = _spec()
    geo = fit_geometry((720, 1280), spec, (640, 640))
    assert (geo.left, geo.top, geo.new_w, geo.new_h) == (0, 140, 640, 360)
    assert geo.info.scale == 0.5
    tensor, _ = preprocess(_frame(720, 1280), spec, (640, 640))
    pad = np.float32(114) * np.float32(spec.scale)
    assert np.all(tensor[0, :, :140] == pad) and np.all(tensor[0, :, 500:] == pad)
    np.testing.assert_allclose(geo.info.to_source([[0, 140, 640, 500]]), [[0, 0, 1280, 720]])


def test_stretch_geometry() -> None:
    geo = fit_geometry((720, 1280), _spec(resize="stretch"), (224, 448))
    assert (geo.left, geo.top, geo.new_w, geo.new_h) == (0, 0, 448, 224)
    np.testing.assert_allclose(geo.info.to_source([[0, 0, 448, 224]]), [[0, 0, 1280, 720]])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_kernel_model_matches_opencv(case: Case) -> None:
    src, dst, resize, color, norm, layout = case
    """The numpy line-by-line model of the CUDA kernel agrees with the OpenCV reference."""
    spec = _case_spec(resize, color, norm, layout)
    frame = _frame(*src, seed=src[0])
    ref, _ = preprocess(frame, spec, dst)
    _assert_within_tolerance(_kernel_model(frame, spec, dst), ref, spec)


def test_make_preprocessor_without_cuda_is_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_runtime, "available", lambda: (False, "no CUDA here"))
    with make_preprocessor(_spec(), (64, 64), 2, prefer_gpu=True) as pre:
        assert isinstance(pre, CpuPreprocessor) and not pre.pinned


@pytest.mark.parametrize(
    "error",
    [
        cuda_runtime.CudaError("cudaMalloc", "cudaErrorMemoryAllocation", 2),
        cuda_kernels.KernelCompileError("preprocess", "sm_87", "error: unknown architecture"),
    ],
)
def test_gpu_errors_are_agent_errors_and_fall_back_to_cpu(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    from agent.core.errors import EdgeAgentError

    assert isinstance(error, EdgeAgentError) and isinstance(error, RuntimeError)
    assert "(fix: " in str(error)

    class Pinned:  # a page-locked buffer stand-in: CUDA "works" but the kernel setup fails
        def __init__(self, shape: tuple[int, ...], dtype: object) -> None:
            self.array = np.zeros(shape, dtype=np.float32)

        def close(self) -> None:
            self.array = np.zeros(0, dtype=np.float32)

    def broken_gpu(*args: object, **kwargs: object) -> object:
        raise error

    monkeypatch.setattr(cuda_runtime, "available", lambda: (True, ""))
    monkeypatch.setattr(cuda_memory, "PinnedBuffer", Pinned)
    monkeypatch.setattr(choose, "GpuPreprocessor", broken_gpu)
    with make_preprocessor(_spec(), (64, 64), 1, prefer_gpu=True) as pre:
        assert isinstance(pre, CpuPreprocessor)


def test_tolerance_scales_with_std() -> None:
    plain = tolerance(_spec())
    assert plain[0] == pytest.approx(1 / 255, rel=1e-4)
    assert plain[1] == pytest.approx(0.05 / 255)
    norm = tolerance(_spec(std=(0.229, 0.224, 0.225)))
    assert norm[0] == pytest.approx(1 / 255 / 0.224, rel=1e-4)


# --------------------------------------------------------------------------------- GPU path


@pytest.fixture
def stream() -> Iterator[cuda_runtime.Stream]:
    with cuda_runtime.Stream() as s:
        yield s


@gpu
@needs_gpu
def test_kernel_compiles_for_the_device_arch() -> None:
    major, minor = cuda_runtime.compute_capability()
    with cuda_kernels.compile_kernel(KERNEL_SOURCE, KERNEL_NAME, options=KERNEL_OPTIONS) as k:
        assert k.arch in (f"sm_{major}{minor}",) or k.arch.startswith("compute_")
        assert k.arch.endswith(f"{major}{minor}") or k.arch.startswith("compute_")


@gpu
@needs_gpu
def test_compile_error_carries_the_nvrtc_log() -> None:
    with pytest.raises(cuda_kernels.KernelCompileError) as err:
        cuda_kernels.compile_kernel(
            'extern "C" __global__ void broken() { undeclared(); }', "broken"
        )
    assert "undeclared" in err.value.log


@gpu
@needs_gpu
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gpu_matches_cpu_within_tolerance(stream: cuda_runtime.Stream, case: Case) -> None:
    src, dst, resize, color, norm, layout = case
    spec = _case_spec(resize, color, norm, layout)
    frame = _frame(*src, seed=src[1])
    ref, ref_info = preprocess(frame, spec, dst)
    with GpuPreprocessor(spec, dst, batch=1, stream=stream) as pre:
        infos = pre.process([frame])
        got = pre.download()
    assert infos == [ref_info]
    _assert_within_tolerance(got, ref, spec)
    # Same integer maths as the numpy model: any difference is a kernel bug, not OpenCV's.
    np.testing.assert_array_equal(got, _kernel_model(frame, spec, dst))


@gpu
@needs_gpu
def test_gpu_batch_of_mixed_sizes_and_non_contiguous_frames() -> None:
    spec = _spec()
    frames = [_frame(720, 1280, 1), _frame(2160, 3840, 2)[::2, ::2], _frame(99, 301, 3)]
    with GpuPreprocessor(spec, (320, 320), batch=4) as pre:
        pre.process(frames)
        infos = pre.process(frames)  # the second round reuses the staging buffers
        got = pre.download()
    for i, frame in enumerate(frames):
        ref, info = preprocess(np.ascontiguousarray(frame), spec, (320, 320))
        assert infos[i] == info
        _assert_within_tolerance(got[i : i + 1], ref, spec)


@gpu
@needs_gpu
def test_make_preprocessor_picks_gpu() -> None:
    with make_preprocessor(_spec(), (64, 64), 1, prefer_gpu=True) as pre:
        assert isinstance(pre, GpuPreprocessor) and pre.ptr != 0
    with make_preprocessor(_spec(), (64, 64), 1, prefer_gpu=False) as pre:
        assert isinstance(pre, CpuPreprocessor) and pre.pinned


@gpu
@needs_gpu
def test_no_device_memory_growth_over_1000_iterations(stream: cuda_runtime.Stream) -> None:
    spec = _spec()
    frames = [_frame(720, 1280, 5), _frame(480, 640, 6)]
    with GpuPreprocessor(spec, (640, 640), batch=2, stream=stream) as pre:
        pre.process(frames)
        pre.synchronize()
        cuda_runtime.device_synchronize()
        free_before, _ = cuda_runtime.mem_get_info()
        for i in range(1000):
            pre.process(frames if i % 2 else frames[:1])
            if i % 50 == 0:
                pre.synchronize()
        pre.synchronize()
        cuda_runtime.device_synchronize()
        free_after, _ = cuda_runtime.mem_get_info()
        got = pre.download()
    assert free_before - free_after <= 2 * 1024 * 1024, (free_before, free_after)
    ref, _ = preprocess(frames[0], spec, (640, 640))
    _assert_within_tolerance(got[:1], ref, spec)
