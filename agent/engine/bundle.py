"""Model bundles: a directory holding ``model.yaml``, the ONNX file and (optionally) labels.

:func:`load_bundle` validates ``model.yaml`` (errors carry file:line), checks that the ONNX file
exists inside the bundle directory, reads the labels and hashes the model (the hash keys every
cache above this layer). It reads the ONNX graph (external-data files, ``output.softmax:
auto``), so it runs where a model may be parsed: the build child, the CLI, the operator's tools.

The daemon never parses a model: :func:`read_bundle_files` reads ``model.yaml`` and checks
paths only, and :func:`served_bundle` takes what the graph decided (the settled
``output.softmax``, the model hash) from the manifest of the artifact the build child made.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from agent.config.model import ModelBundleConfig
from agent.config.yaml import load_model_file
from agent.core.errors import ModelError
from agent.core.fsutil import sha256_file
from agent.engine.cache import Artifact
from agent.engine.onnxgraph import external_locations, load_model
from agent.engine.output_softmax import settle_output_softmax, settled_from_manifest

MODEL_YAML = "model.yaml"
HELDOUT_DIR = "heldout"


@dataclass(frozen=True)
class ModelBundle:
    """A loaded, validated model bundle. ``onnx_sha256`` covers the ONNX file and any external
    data files it references, so changed weights change the hash."""

    directory: Path
    config: ModelBundleConfig
    onnx_path: Path
    labels: tuple[str, ...]
    onnx_sha256: str
    #: the bundle's labelled held-out folder (``heldout/`` with ``labels.json``), if it has one
    heldout_dir: Path | None = None


def is_inside(path: Path, directory: Path) -> bool:
    """True when ``path`` (symlinks and ``..`` resolved) lies inside ``directory``."""
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


def external_data_files(onnx_path: Path) -> list[str]:
    """Relative ``location``s of the external-data files an ONNX file references (sorted)."""
    try:
        model = load_model(onnx_path, external_data=False)
    except Exception:  # not parseable: prepare() reports it with a proper message
        return []
    return sorted(external_locations(model))


def onnx_sha256(onnx_path: Path) -> str:
    """sha256 of the ONNX file, extended with the hashes of its external-data files."""
    main = sha256_file(onnx_path)
    extra = external_data_files(onnx_path)
    if not extra:
        return main
    digest = hashlib.sha256(main.encode())
    for location in extra:
        data = onnx_path.parent / location
        part = sha256_file(data) if data.is_file() else "missing"
        digest.update(f"\0{location}\0{part}".encode())
    return digest.hexdigest()


def _read_labels(directory: Path, yaml_path: Path, labels: list[str] | str) -> tuple[str, ...]:
    if isinstance(labels, list):
        return tuple(labels)
    label_path = directory / labels
    if not is_inside(label_path, directory):
        raise ModelError(
            f"labels file '{labels}' resolves outside the bundle directory {directory}",
            fix="keep the labels file inside the bundle and refer to it by a relative path",
            path=yaml_path,
        )
    if not label_path.is_file():
        raise ModelError(
            f"labels file '{labels}' does not exist ({label_path})",
            fix="put a labels file with one class name per line there, "
            "or list the names under `labels:` in model.yaml",
            path=yaml_path,
        )
    try:
        text = label_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(
            f"cannot read labels file: {exc}",
            fix="make it a readable UTF-8 text file with one class name per line",
            path=label_path,
        ) from exc
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise ModelError(
            "labels file is empty",
            fix="write one class name per line, in the model's output order",
            path=label_path,
        )
    return names


def _heldout_dir(directory: Path) -> Path | None:
    """``heldout/`` when the bundle has that folder; it must not leave the bundle."""
    heldout = directory / HELDOUT_DIR
    if not heldout.exists() and not heldout.is_symlink():
        return None
    if heldout.is_symlink() or not is_inside(heldout, directory) or not heldout.is_dir():
        raise ModelError(
            f"'{HELDOUT_DIR}' in the bundle is not a folder inside it (a symlink or a file?)",
            fix="make heldout/ a real folder holding labels.json and the labelled images "
            "(docs/validation.md), or remove it",
            path=heldout,
        )
    return heldout


@dataclass(frozen=True)
class BundleFiles:
    """A bundle's validated ``model.yaml`` and where its files are, read without opening the
    model."""

    directory: Path
    yaml_path: Path
    config: ModelBundleConfig
    onnx_path: Path


def _locate(path: Path) -> tuple[Path, Path]:
    """(bundle directory, model.yaml) of a bundle directory or of its ``model.yaml``."""
    if path.is_dir():
        directory, yaml_path = path, path / MODEL_YAML
    else:
        directory, yaml_path = path.parent, path
    if not yaml_path.is_file():
        if not path.exists():
            raise ModelError(
                "model bundle not found",
                fix="pass a bundle directory containing model.yaml, or the model.yaml itself",
                path=path,
            )
        raise ModelError(
            f"no {MODEL_YAML} in the bundle directory",
            fix=f"write {MODEL_YAML} (name, version, task, input, output) next to the ONNX file",
            path=yaml_path,
        )
    return directory, yaml_path


def read_bundle_files(path: Path) -> BundleFiles:
    """``model.yaml`` validated and the ONNX file checked to exist inside the bundle; the ONNX
    file is not opened (safe in the daemon).

    Raises :class:`~agent.core.errors.ConfigError` for an invalid ``model.yaml`` (file:line
    issues) and :class:`~agent.core.errors.ModelError` for a missing or misplaced ONNX file."""
    directory, yaml_path = _locate(Path(path))
    config = load_model_file(yaml_path, ModelBundleConfig)
    directory = directory.resolve()
    onnx_path = directory / config.onnx
    if not is_inside(onnx_path, directory):
        raise ModelError(
            f"onnx file '{config.onnx}' resolves outside the bundle directory {directory} "
            "(a symlink leaving the bundle?)",
            fix="copy the ONNX file into the bundle directory instead of linking to it",
            path=yaml_path,
        )
    if not onnx_path.is_file():
        raise ModelError(
            f"onnx file '{config.onnx}' does not exist ({onnx_path})",
            fix="copy the exported ONNX file into the bundle or fix `onnx:` in model.yaml",
            path=yaml_path,
        )
    return BundleFiles(directory, yaml_path, config, onnx_path)


def bundle_labels(files: BundleFiles) -> tuple[str, ...]:
    """The bundle's class names (``labels:`` in model.yaml, or its labels file)."""
    return _read_labels(files.directory, files.yaml_path, files.config.labels)


def load_bundle(path: Path) -> ModelBundle:
    """Load a bundle from its directory or from its ``model.yaml``, settling ``output.softmax:
    auto`` from the graph and hashing the model with its external data (parses the ONNX file:
    not in the daemon, see :func:`served_bundle`).

    Raises :class:`~agent.core.errors.ConfigError` for an invalid ``model.yaml`` (file:line issues)
    and :class:`~agent.core.errors.ModelError` for a missing/misplaced ONNX or labels file.
    """
    files = read_bundle_files(path)
    labels = bundle_labels(files)
    return ModelBundle(
        directory=files.directory,
        config=settle_output_softmax(files.config, files.onnx_path),
        onnx_path=files.onnx_path,
        labels=labels,
        onnx_sha256=onnx_sha256(files.onnx_path),
        heldout_dir=_heldout_dir(files.directory),
    )


def served_bundle(path: Path, artifact: Artifact) -> ModelBundle:
    """The bundle that ``artifact`` was built from, for serving, without parsing the model:
    ``output.softmax: auto`` settled and the model hash as the build child recorded them in
    the artifact manifest (``bundle.config``, ``bundle.onnx_sha256``)."""
    files = read_bundle_files(path)
    labels = bundle_labels(files)
    recorded = artifact.manifest.get("bundle")
    recorded = recorded if isinstance(recorded, dict) else {}
    digest = recorded.get("onnx_sha256")
    return ModelBundle(
        directory=files.directory,
        config=settled_from_manifest(files.config, artifact.manifest),
        onnx_path=files.onnx_path,
        labels=labels,
        onnx_sha256=digest if isinstance(digest, str) and digest else sha256_file(files.onnx_path),
        heldout_dir=_heldout_dir(files.directory),
    )
