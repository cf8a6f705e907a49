"""The strict base of every config model and the small types the sections share.

Every model forbids unknown keys and every field carries a title and a description, so
``edge-agent validate-config`` can explain what is wrong and where. Validators never do I/O:
whether a file exists is checked where it is used, with an error that names it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Precision = Literal["int8", "fp16", "fp32"]
Backend = Literal["tensorrt", "onnxruntime"]
CalibrationMethod = Literal["entropy", "minmax", "percentile"]
Family = Literal["orin-nano", "orin-nx", "agx-orin", "agx-thor", "cpu"]

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
"""Names of profiles, models, sources, devices, fleets and groups."""


def at(path: str, message: str) -> str:
    """Prefix a cross-field error with the key it is about (relative to the model), so the
    YAML loader can point at that key's line: ``[build.workspace_mib] message``."""
    return f"[{path}] {message}"


class Strict(BaseModel):
    """Base: unknown keys are errors; models are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
