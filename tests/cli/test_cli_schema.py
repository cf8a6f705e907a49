"""``edge-agent schema``: one JSON Schema per configuration file kind, and each accepts the
shipped examples of its kind.

``jsonschema`` is not a dependency, so :func:`schema_problems` checks the structure an editor
relies on: ``$ref``/``$defs``, ``anyOf``/``oneOf``, object properties with
``additionalProperties: false`` and ``required``, array items and tuples, JSON types and enums.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli.main import main
from agent.cli.schema import schema_file_name
from agent.config.load import KINDS
from tests.assets import DEFAULT_CONFIG, MODELS, PROFILES_DIR, REPO, SYSTEMD_DIR

EXAMPLES: dict[str, list[Path]] = {
    "agent": [DEFAULT_CONFIG, SYSTEMD_DIR / "agent.example.yaml"],
    "profile": sorted(PROFILES_DIR.glob("*.yaml")),
    "model": sorted(MODELS.glob("*/model.yaml")),
    "fleet": [REPO / "deploy" / "fleet" / "fleet.yaml"],
}
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "array": (list,),
    "object": (dict,),
}


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        schema = root["$defs"][name]
    return schema


def _type_ok(kind: str, value: Any) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[kind])


def _object_problems(
    schema: dict[str, Any], value: dict[str, Any], root: dict[str, Any], at: str
) -> list[str]:
    problems = [f"{at}: '{k}' is required" for k in schema.get("required", []) if k not in value]
    props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            problems += schema_problems(props[key], item, root, f"{at}.{key}")
        elif extra is False:
            problems.append(f"{at}: '{key}' is not allowed")
        elif isinstance(extra, dict):
            problems += schema_problems(extra, item, root, f"{at}.{key}")
    return problems


def schema_problems(
    schema: dict[str, Any], value: Any, root: dict[str, Any], at: str = "$"
) -> list[str]:
    """Why ``value`` does not match ``schema`` (empty: it matches)."""
    schema = _resolve(schema, root)
    for combo in ("anyOf", "oneOf"):
        if combo in schema:
            options = [schema_problems(s, value, root, at) for s in schema[combo]]
            return [] if any(not o for o in options) else [f"{at}: no alternative matches"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{at}: {value!r} not in {schema['enum']}"]
    if "const" in schema and value != schema["const"]:
        return [f"{at}: {value!r} is not {schema['const']!r}"]
    kind = schema.get("type")
    if isinstance(kind, str) and not _type_ok(kind, value):
        return [f"{at}: {value!r} is not {kind}"]
    if isinstance(value, dict):
        return _object_problems(schema, value, root, at)
    if isinstance(value, list):
        prefix = schema.get("prefixItems")
        if prefix is not None:
            if len(value) != len(prefix):
                return [f"{at}: needs {len(prefix)} items"]
            pairs = zip(prefix, value, strict=True)
            found = [schema_problems(s, v, root, f"{at}[{i}]") for i, (s, v) in enumerate(pairs)]
        else:
            items = schema.get("items", {})
            found = [schema_problems(items, v, root, f"{at}[{i}]") for i, v in enumerate(value)]
        return [p for problems in found for p in problems]
    return []


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("schemas")
    assert main(["schema", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(schema_file_name(k) for k in KINDS)
    return {k: json.loads((out / schema_file_name(k)).read_text()) for k in KINDS}


def test_every_kind_has_a_strict_schema(schemas: dict[str, dict[str, Any]]) -> None:
    required = {
        "agent": {"device_id", "fleet", "models"},
        "profile": {"name", "identity", "build", "shapes", "runtime", "monitor"},
        "model": {"name", "version", "task", "input", "output"},
        "fleet": {"fleet", "mqtt"},
    }
    for kind, schema in schemas.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"edge-agent.{kind}.schema.json"
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        assert required[kind] <= set(schema["required"]), kind
        for name, sub in schema.get("$defs", {}).items():  # every section is strict too
            if sub.get("type") == "object" and "properties" in sub:
                assert sub.get("additionalProperties") is False, (kind, name)
    assert {"mqtt", "ota", "sources", "daemon"} <= set(schemas["agent"]["properties"])


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_the_shipped_examples_match_their_schema(
    kind: str, schemas: dict[str, dict[str, Any]]
) -> None:
    assert EXAMPLES[kind], f"no shipped example of {kind}"
    for path in EXAMPLES[kind]:
        data = yaml.safe_load(path.read_text())
        assert schema_problems(schemas[kind], data, schemas[kind]) == [], path


def test_the_schema_rejects_what_validate_config_rejects(
    schemas: dict[str, dict[str, Any]],
) -> None:
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["mqtt"]["ur1"] = "mqtt://x:1"  # a typo
    data["sources"][0]["type"] = "webcam"  # not a source type
    del data["fleet"]  # required
    problems = schema_problems(schemas["agent"], data, schemas["agent"])
    assert "$.mqtt: 'ur1' is not allowed" in problems
    assert "$: 'fleet' is required" in problems
    assert any(p.startswith("$.sources[0].type") for p in problems), problems


def test_kind_prints_one_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--kind", "model"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$id"] == "edge-agent.model.schema.json"
    assert "onnx" in printed["properties"]
    assert main(["schema"]) == 1  # neither --out nor --kind
    assert "pass --out DIR" in capsys.readouterr().err
