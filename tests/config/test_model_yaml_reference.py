"""docs/model-yaml.md documents every ``model.yaml`` field, generated from the pydantic models."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, ValidationError

from agent.config.model import AccuracyTolerance, InputSpec, ModelBundleConfig, OutputSpec
from agent.config.reference import (
    BEGIN_MARK,
    END_MARK,
    field_rows,
    reference_markdown,
    replace_generated,
)
from tests.assets import REPO, SCRIPTS

DOC = REPO / "docs" / "model-yaml.md"


def _walk(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, object]]:
    """Every field path of ``model``, nested models included, found independently of the
    generator."""
    for name, info in model.model_fields.items():
        yield prefix + name, info
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _walk(info.annotation, f"{prefix}{name}.")


def _documented_rows(text: str) -> set[str]:
    return set(re.findall(r"^\| `([a-z0-9_.]+)` \|", text, flags=re.MULTILINE))


def test_every_field_has_title_description_and_example() -> None:
    paths = dict(_walk(ModelBundleConfig))
    assert {"input.size", "output.softmax", "tolerance.box_agreement_min", "keep_float"} <= set(
        paths
    )
    for path, info in paths.items():
        assert getattr(info, "title", None), f"{path} has no title"
        assert getattr(info, "description", None), f"{path} has no description"
        assert getattr(info, "examples", None), f"{path} has no example"


def test_every_field_is_in_the_doc_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    documented = _documented_rows(text)
    missing = [path for path, _ in _walk(ModelBundleConfig) if path not in documented]
    assert not missing, f"docs/model-yaml.md lacks {missing}: run scripts/gen_config_docs.py"
    assert {r.path for r in field_rows(ModelBundleConfig)} == documented


def test_doc_table_is_exactly_what_the_code_generates() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert replace_generated(text, reference_markdown(ModelBundleConfig)) == text, (
        "docs/model-yaml.md is out of date: run scripts/gen_config_docs.py"
    )


def test_a_missing_row_is_caught() -> None:
    text = DOC.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `output.softmax` |"))
    broken = text.replace(row + "\n", "")
    assert "output.softmax" not in _documented_rows(broken)
    assert replace_generated(broken, reference_markdown(ModelBundleConfig)) != broken
    assert replace_generated(broken, reference_markdown(ModelBundleConfig)) == text


def test_rows_carry_type_default_bounds_and_example() -> None:
    rows = {r.path: r for r in field_rows(ModelBundleConfig)}
    softmax = rows["output.softmax"]
    assert softmax.type == "`auto` \\| `apply` \\| `none`" and softmax.default == "`auto`"
    assert softmax.section == "output" and softmax.example == "`none`"
    assert rows["input.pad_value"].meaning.endswith("(≥ 0, ≤ 255)")
    assert rows["input.size"].type == "tuple[int, int] \\| null"
    assert rows["input.size"].example == "`[640, 640]`"
    assert rows["name"].default == "required" and rows["tolerance"].default == "all defaults"
    assert rows["keep_float"].default == "`[]`"


def test_doc_keeps_the_prose_sections() -> None:
    text = DOC.read_text(encoding="utf-8")
    for needle in ("heldout/labels.json", '{"000.jpg": 2, "001.jpg": "circle"}', "keep_float:"):
        assert needle in text
    assert text.index(BEGIN_MARK) < text.index(END_MARK)
    with pytest.raises(ValueError, match="GENERATED"):
        replace_generated("no markers here", "x")


def test_generator_script_check_mode() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "gen_config_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_softmax_field_values_and_settling() -> None:
    out = OutputSpec(decode="softmax_topk")
    assert out.softmax == "auto" and out.applies_softmax
    assert not OutputSpec(decode="softmax_topk", softmax="none").applies_softmax
    with pytest.raises(ValidationError):
        OutputSpec(decode="softmax_topk", softmax="twice")  # type: ignore[arg-type]
    cfg = ModelBundleConfig(
        name="m", version=1, task="classify", input=InputSpec(name="x"), output=out
    )
    assert cfg.with_softmax_resolved(True).output.softmax == "none"
    assert cfg.with_softmax_resolved(False).output.softmax == "apply"
    explicit = cfg.with_softmax_resolved(False)
    assert explicit.with_softmax_resolved(True) is explicit  # settled values stay
    assert cfg.tolerance == AccuracyTolerance()
