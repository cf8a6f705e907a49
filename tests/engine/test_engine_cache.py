"""Engine cache: verified lookups, corrupted entries discarded, atomic commits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.backends.base import InputShapes
from agent.core.errors import ArtifactError
from agent.core.fsutil import atomic_write_bytes, atomic_write_json, sha256_file
from agent.engine import cache as cache_mod
from agent.engine.cache import MANIFEST, CacheKey, EngineCache, load_artifact, tmp_dirs


def _key(**changes: object) -> CacheKey:
    fields: dict[str, object] = {
        "onnx_sha256": "a" * 64,
        "calib_sha256": "b" * 64,
        "precision": "int8",
        "shapes": {"images": InputShapes((1, 3, 256, 256), (1, 3, 256, 256), (1, 3, 256, 256))},
        "workspace_mib": 256,
        "backend": "onnxruntime",
        "backend_version": "1.32.0",
        "gpu_compute_capability": None,
        "dla_core": None,
        "l4t_release": None,
        "model": "shapes-det",
    }
    fields.update(changes)
    return CacheKey(**fields)  # type: ignore[arg-type]


def _staging(tmp_path: Path, payload: bytes = b"engine-bytes") -> Path:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    (staging / "model.onnx").write_bytes(payload)
    (staging / "extra.json").write_text("{}")
    return staging


MANIFEST_IN = {"backend": "onnxruntime", "precision": "int8", "main_file": "model.onnx"}


def test_digest_is_stable_and_sensitive() -> None:
    assert _key().digest() == _key().digest()
    assert len(_key().digest()) == 64
    assert _key(l4t_release="36.4.0").digest() != _key().digest()
    assert _key(dla_core=0).digest() != _key().digest()
    assert _key(workspace_mib=128).digest() != _key().digest()
    assert _key(backend_version="1.31.0").digest() != _key().digest()
    assert _key(calib_sha256="c" * 64).digest() != _key().digest()
    assert _key().dirname().startswith("shapes-det-int8-")


def test_commit_then_lookup_roundtrip(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache")
    assert cache.lookup(_key()) is None
    art = cache.commit(_key(), _staging(tmp_path), {**MANIFEST_IN, "validation": {"ok": 1}})
    assert art.dir.name == _key().dirname()
    doc = json.loads((art.dir / MANIFEST).read_text())
    assert doc["files"]["model.onnx"]["sha256"] == sha256_file(art.dir / "model.onnx")
    assert doc["digest"] == _key().digest()
    assert doc["key"]["model"] == "shapes-det"
    assert "created" in doc
    hit = cache.lookup(_key())
    assert hit is not None and hit.dir == art.dir and hit.manifest["validation"] == {"ok": 1}
    assert load_artifact(art.dir).precision == "int8"
    assert load_artifact(art.dir / MANIFEST).main_file == "model.onnx"
    assert tmp_dirs(cache.root) == []


def test_changed_key_gives_a_different_entry(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache")
    a = cache.commit(_key(), _staging(tmp_path), MANIFEST_IN)
    assert cache.lookup(_key(l4t_release="36.4.0")) is None
    b = cache.commit(_key(l4t_release="36.4.0"), _staging(tmp_path, b"other"), MANIFEST_IN)
    assert a.dir != b.dir
    assert len(list(cache.entries())) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corrupted_entry_is_discarded_as_a_miss(tmp_path: Path, damage: str) -> None:
    cache = EngineCache(tmp_path / "cache")
    art = cache.commit(_key(), _staging(tmp_path), MANIFEST_IN)
    model = art.dir / "model.onnx"
    if damage == "flip":
        data = bytearray(model.read_bytes())
        data[0] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:3])
    elif damage == "delete":
        model.unlink()
    else:
        (art.dir / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="edge-agent build"):
        load_artifact(art.dir)
    assert cache.lookup(_key()) is None
    assert not art.dir.exists()
    assert tmp_dirs(cache.root) == []
    # rebuilt entry is accepted again
    cache.commit(_key(), _staging(tmp_path), MANIFEST_IN)
    assert cache.lookup(_key()) is not None


def test_manifest_of_another_key_is_a_miss(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "cache")
    art = cache.commit(_key(), _staging(tmp_path), MANIFEST_IN)
    doc = json.loads((art.dir / MANIFEST).read_text())
    doc["digest"] = "0" * 64
    (art.dir / MANIFEST).write_text(json.dumps(doc))
    assert cache.lookup(_key()) is None


def test_failed_commit_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    cache = EngineCache(tmp_path / "cache")
    real = cache_mod.fsync_dir
    calls = {"n": 0}

    def failing_fsync_dir(path: Path) -> None:
        calls["n"] += 1
        if path.name.startswith(".tmp-"):
            raise OSError("disk went away")
        real(path)

    monkeypatch.setattr(cache_mod, "fsync_dir", failing_fsync_dir)
    with pytest.raises(OSError, match="disk went away"):
        cache.commit(_key(), _staging(tmp_path), MANIFEST_IN)
    assert calls["n"] > 0
    assert list(cache.root.iterdir()) == []
    # a main file the builder never wrote is refused, also without leftovers
    monkeypatch.setattr(cache_mod, "fsync_dir", real)
    with pytest.raises(ArtifactError, match="not written"):
        cache.commit(_key(), _staging(tmp_path), {**MANIFEST_IN, "main_file": "engine.plan"})
    assert list(cache.root.iterdir()) == []


def test_sweep_removes_stale_tmp_dirs(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    stale = root / ".tmp-old-entry-1234"
    stale.mkdir(parents=True)
    (stale / "x").write_text("half")
    os.utime(stale, (0, 0))
    fresh = root / ".tmp-building-now"
    fresh.mkdir()
    cache = EngineCache(root)
    cache.commit(_key(), _staging(tmp_path), MANIFEST_IN)
    assert not stale.exists()
    assert fresh.exists()  # another process may still be writing it


def test_atomic_write_helpers(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        atomic_write_json(target, {"x": Boom()})
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_load_artifact_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="edge-agent build"):
        load_artifact(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"artifact\.json"):
        load_artifact(tmp_path / "empty")
