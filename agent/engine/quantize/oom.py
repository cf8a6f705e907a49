"""Which quantization stage was running when memory ran out, and what helps.

The quantization child reports its stage through progress messages (stage names
``calibrate``, ``quantize``, ``bias``, ``probe``); the parent watches them with a
:class:`StageTracker`, so even a child killed by the memory watch or the kernel's OOM killer
(no error message of its own) is reported with the stage it was in.
"""

from __future__ import annotations

import logging

from agent.core.progress import ProgressFn

__all__ = ["StageTracker", "oom_fix", "oom_message"]

log = logging.getLogger(__name__)

#: progress stage -> the stage named in errors
_STAGES = {
    "calibrate": "calibration",
    "quantize": "Q/DQ insertion",
    "bias": "bias correction",
    "probe": "node-error probe",
}


class StageTracker:
    """A progress callback that passes everything on and remembers the last stage."""

    def __init__(self, progress: ProgressFn) -> None:
        self._progress = progress
        self.stage = "loading the model"

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        self.stage = _STAGES.get(stage, self.stage)
        self._progress(stage, fraction, message)


def oom_message(stage: str, message: str) -> str:
    """The isolation layer's out-of-memory message with the stage it happened in."""
    return f"{message} (stage: {stage})"


def oom_fix(stage: str, cap_mib: int | None) -> str:
    """What helps. The streamed passes already hold one tensor group of one frame at a time,
    so what is left is one float inference at the calibration size plus the model's weights:
    more memory or a smaller input helps; fewer calibration frames does not."""
    cap = f" (now {cap_mib} MiB)" if cap_mib is not None else ""
    smaller = (
        "or quantize at a smaller input size: set input.size in model.yaml, or lower "
        "shapes.height/width (opt) and shapes.batch (opt) in the device profile"
    )
    if stage == "Q/DQ insertion":
        return (
            f"raise build.build_memory_cap_mib in the device profile{cap}: ONNX Runtime's "
            "quantizer holds about three copies of the model's weights"
        )
    return (
        f"raise build.build_memory_cap_mib in the device profile{cap} ({stage} runs one float "
        f"inference per frame and keeps a budget for the activations it measures), {smaller}; "
        "lowering build.calibration.frames does not help"
    )
