"""trtexec-style build overrides: what the command line asks beyond the device profile.

``edge-agent build --shapes images:4x3x640x640 --workspace 512 --dla-core 0 --timing-cache F``
wins over the profile: :func:`apply_overrides` checks each override against the model (input
names and ranks, axes the ONNX file or ``model.yaml`` fixes) and returns a copy of the profile
with the overrides in it, validated by the profile's own rules (a DLA core on a device without
DLA, a workspace above the build memory cap...). The build then runs from that profile, so the
overrides feed the same :class:`~agent.backends.base.BuildRequest` the profile feeds. The
overrides also go into the cache key (an override never returns an engine built without it)
and into the artifact's manifest (``overrides``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.backends.base import InputShapes, TensorSpec
from agent.config.device import DeviceProfile
from agent.core.errors import BackendUnavailable, BuildFailed, ModelError
from agent.engine.bundle import ModelBundle
from agent.engine.onnxgraph import load_model, tensor_specs
from agent.engine.pin import is_dynamic

__all__ = ["BuildOverrides", "apply_overrides"]

_LEVELS = ("min", "opt", "max")


@dataclass(frozen=True)
class BuildOverrides:
    """Command-line overrides of one build; empty fields leave the profile's value."""

    #: input name -> optimization-profile shapes (``--shapes`` gives min = opt = max)
    shapes: Mapping[str, InputShapes] = field(default_factory=dict[str, InputShapes])
    workspace_mib: int | None = None
    dla_core: int | None = None
    timing_cache: Path | None = None

    @property
    def empty(self) -> bool:
        return not self.key_json()

    def key_json(self) -> dict[str, Any]:
        """What was overridden, as JSON (cache key and manifest); {} when nothing was."""
        out: dict[str, Any] = {}
        if self.shapes:
            out["shapes"] = {k: self.shapes[k].to_json() for k in sorted(self.shapes)}
        if self.workspace_mib is not None:
            out["workspace_mib"] = self.workspace_mib
        if self.dla_core is not None:
            out["dla_core"] = self.dla_core
        if self.timing_cache is not None:
            out["timing_cache"] = str(self.timing_cache)
        return out


def _model_inputs(bundle: ModelBundle) -> tuple[TensorSpec, ...]:
    try:
        model = load_model(bundle.onnx_path, external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: prepare() says it better
        raise ModelError(
            f"cannot read the model's inputs: {exc}",
            fix="check the ONNX file (edge-agent build reports what is wrong with it)",
            path=bundle.onnx_path,
        ) from exc
    return tensor_specs(model)[0]


def _check_axes(spec: TensorSpec, shapes: InputShapes, bundle: ModelBundle) -> None:
    """Rank, fixed axes and min <= opt <= max of one overridden input."""
    where = f"input '{spec.name}' (shape {list(spec.shape)} in {bundle.onnx_path.name})"
    for level, shape in zip(_LEVELS, (shapes.min, shapes.opt, shapes.max), strict=True):
        if len(shape) != len(spec.shape):
            raise ModelError(
                f"{level} shape {'x'.join(map(str, shape))} has rank {len(shape)} but {where} "
                f"has rank {len(spec.shape)}",
                fix=f"give {len(spec.shape)} dimensions, e.g. "
                f"{spec.name}:{'x'.join(str(d) if not is_dynamic(d) else '1' for d in spec.shape)}",
                path=bundle.onnx_path,
            )
        for axis, (want, have) in enumerate(zip(shape, spec.shape, strict=True)):
            if not is_dynamic(have) and want != have:
                raise ModelError(
                    f"{level} shape asks {want} at axis {axis} but {where} fixes it at {have}",
                    fix=f"use {have} at axis {axis}, or re-export the model with that axis dynamic",
                    path=bundle.onnx_path,
                )
    for axis in range(len(spec.shape)):
        if not shapes.min[axis] <= shapes.opt[axis] <= shapes.max[axis]:
            raise ModelError(
                f"{where}: axis {axis} needs min <= opt <= max, got {shapes.min[axis]}, "
                f"{shapes.opt[axis]}, {shapes.max[axis]}",
                fix="reorder --min-shapes/--opt-shapes/--max-shapes",
                path=bundle.onnx_path,
            )


def _ranges(shapes: InputShapes, axis: int) -> dict[str, int]:
    return {"min": shapes.min[axis], "opt": shapes.opt[axis], "max": shapes.max[axis]}


def _shape_update(
    profile: DeviceProfile, bundle: ModelBundle, shapes: InputShapes, spec: TensorSpec
) -> dict[str, Any]:
    """The profile's ``shapes`` (and ``runtime.max_batch``) for the image input's overrides.
    Height and width fixed by the model or by ``model.yaml`` input.size must match and stay."""
    config = bundle.config.input
    channel, h_axis, w_axis = (1, 2, 3) if config.layout == "NCHW" else (3, 1, 2)
    if {shapes.min[channel], shapes.max[channel]} != {3}:
        raise ModelError(
            f"input '{spec.name}' is {config.layout} with 3 colour channels at axis {channel}; "
            f"the override asks {shapes.opt[channel]}",
            fix=f"use 3 at axis {channel}",
            path=bundle.directory / "model.yaml",
        )
    if shapes.min[0] != 1:
        opt_max = "x".join(map(str, shapes.max))
        one = "x".join(map(str, (1, *shapes.min[1:])))
        raise ModelError(
            f"input '{spec.name}': the batch range starts at {shapes.min[0]}, but the validation "
            "gate compares the engine with the float model one frame at a time (batch 1)",
            fix=f"keep batch 1 in the range: --min-shapes {spec.name}:{one} --opt-shapes "
            f"{spec.name}:{opt_max} --max-shapes {spec.name}:{opt_max}",
            path=bundle.onnx_path,
        )
    current = profile.shapes.model_dump()
    current["batch"] = _ranges(shapes, 0)
    size = config.size
    for axis, what, index in ((h_axis, "height", 0), (w_axis, "width", 1)):
        wanted = _ranges(shapes, axis)
        if size is not None and set(wanted.values()) != {size[index]}:
            raise ModelError(
                f"model.yaml input.size fixes {what} at {size[index]} but the override asks "
                f"{sorted(set(wanted.values()))}",
                fix=f"use {what} {size[index]}, or change input.size in model.yaml",
                path=bundle.directory / "model.yaml",
            )
        if size is None and is_dynamic(spec.shape[axis]):
            current[what] = wanted
    runtime = profile.runtime.model_dump()
    runtime["max_batch"] = max(runtime["max_batch"], shapes.max[0])
    return {"shapes": current, "runtime": runtime}


def _validated(profile: DeviceProfile, update: dict[str, Any], asked: str) -> DeviceProfile:
    """``profile`` with ``update`` merged, through every rule of the profile model."""
    data = profile.model_dump()
    for section, value in update.items():
        data[section] = value
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors()
        )
        raise BuildFailed(
            f"{asked} breaks device profile {profile.name}'s rules: {problems}",
            fix=f"change {asked}, or pick a device profile (--profile) that allows it",
        ) from exc


def _dla_check(profile: DeviceProfile, core: int) -> None:
    ident = profile.identity
    if profile.build.backend != "tensorrt" or ident.dla_cores == 0:
        raise BackendUnavailable(
            f"--dla-core {core}: device profile {profile.name} ({profile.build.backend}) has no "
            f"DLA (identity.dla_cores is {ident.dla_cores}); only TensorRT builds for a DLA",
            fix="drop --dla-core, or build for a Jetson profile with DLA cores (orin-nx-16gb, "
            "agx-orin-64gb: `edge-agent profile list`, column DLA)",
        )
    if core >= ident.dla_cores:
        raise BackendUnavailable(
            f"--dla-core {core}: device profile {profile.name} has DLA cores "
            f"0..{ident.dla_cores - 1}",
            fix=f"use --dla-core {ident.dla_cores - 1} or lower",
        )


def apply_overrides(
    profile: DeviceProfile, overrides: BuildOverrides, bundle: ModelBundle
) -> DeviceProfile:
    """``profile`` with ``overrides`` in it, checked against the bundle's model. Raises
    :class:`ModelError` for shapes the model cannot take (naming the input, listing the real
    ones), :class:`BackendUnavailable` for a DLA core the profile lacks, :class:`BuildFailed`
    for values the profile's rules refuse."""
    if overrides.empty:
        return profile
    update: dict[str, Any] = {}
    asked: list[str] = []
    if overrides.shapes:
        inputs = {t.name: t for t in _model_inputs(bundle)}
        for name, shapes in overrides.shapes.items():
            if name not in inputs:
                raise ModelError(
                    f"shape override names input '{name}', which the model does not have; "
                    f"its inputs are {sorted(inputs)}",
                    fix=f"use one of {sorted(inputs)} before the ':' in --shapes",
                    path=bundle.onnx_path,
                )
            _check_axes(inputs[name], shapes, bundle)
            update.update(_shape_update(profile, bundle, shapes, inputs[name]))
        asked.append("the shapes")
    build = profile.build.model_dump()
    if overrides.workspace_mib is not None:
        build["workspace_mib"] = overrides.workspace_mib
        asked.append(f"--workspace {overrides.workspace_mib}")
    if overrides.dla_core is not None:
        _dla_check(profile, overrides.dla_core)
        build["dla"] = {**build["dla"], "enabled": True, "core": overrides.dla_core}
        asked.append(f"--dla-core {overrides.dla_core}")
    if overrides.timing_cache is not None:
        build["timing_cache"] = True
    update["build"] = build
    return _validated(profile, update, " and ".join(asked) or "the overrides")
