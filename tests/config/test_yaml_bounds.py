"""Issue #14 item 6: YAML bombs, deep nesting and other hostile YAML are located user errors.

Aliases, depth and size are bounded while composing (``agent/config/yamlbounded.py``), so each
of these is a ``file:line`` :class:`ConfigError` with a fix, never a traceback or a stall.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config.load import validate_file
from agent.config.yaml import parse_yaml, read_yaml
from agent.config.yamlbounded import YamlLimits
from agent.core.errors import ConfigError, ConfigIssue

#: the issue's ~700-byte billion laughs: 9 levels of 9 aliases each (10⁹ strings expanded)
BILLION_LAUGHS = "device_id: dev\n" + "".join(
    [
        'l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n',
        *(f"l{n}: &l{n} [{','.join(f'*l{n - 1}' for _ in range(9))}]\n" for n in range(1, 9)),
        "fleet: *l8\n",
    ]
)


def _issue(text: str, limits: YamlLimits | None = None) -> ConfigIssue:
    with pytest.raises(ConfigError) as caught:
        if limits is None:
            parse_yaml(text, "f.yaml")
        else:
            parse_yaml(text, "f.yaml", limits)
    assert len(caught.value.issues) == 1, caught.value.issues
    return caught.value.issues[0]


def test_billion_laughs_is_a_located_error() -> None:
    assert len(BILLION_LAUGHS.encode()) < 800
    issue = _issue(BILLION_LAUGHS)
    assert issue.key == "(yaml)"
    assert 2 <= issue.line <= 10  # the alias that takes it past the bound
    assert "expands to more than 100000 nodes" in issue.message
    assert "aliases" in issue.message


def test_billion_laughs_through_validate_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(BILLION_LAUGHS)
    assert main(["validate-config", str(path)]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"{path}:")
    assert "YAML bomb" in out


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "a: " + "{b: " * 5_000 + "1" + "}" * 5_000 + "\n",
        "a:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(200)) + "   end: 1\n",
        "a:\n" + "- " * 5_000 + "x\n",
    ],
    ids=["flow-seq", "flow-map", "block-map", "block-seq"],
)
def test_deep_nesting_is_a_located_error(text: str) -> None:
    issue = _issue(text)
    assert "nesting deeper than 32 levels" in issue.message
    assert "flatten" in issue.message
    assert issue.line >= 1


@pytest.mark.parametrize("value", ["&s [*s]", "&s {k: *s}", "&s [1, [2, {x: *s}]]"])
def test_anchor_to_itself_is_refused(value: str) -> None:
    issue = _issue(f"device_id: a\nfleet: {value}\n")
    assert issue.line == 2
    assert "cycle" in issue.message


def test_limits_are_parameters() -> None:
    assert "nesting deeper than 2" in _issue("a: [[1]]\n", YamlLimits(max_depth=2)).message
    assert "more than 5 nodes" in _issue("a: [1, 2, 3, 4]\n", YamlLimits(max_nodes=5)).message
    assert "larger than 8 bytes" in _issue("abc: defgh\n", YamlLimits(max_bytes=8)).message


def test_large_file_is_refused_before_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * (300 * 1024) + "\n")
    with pytest.raises(ConfigError, match="larger than 262144 bytes"):
        read_yaml(path)
    with pytest.raises(ConfigError, match="larger than"):
        read_yaml(Path("/dev/zero"))


def test_duplicate_key_names_both_lines() -> None:
    issue = _issue("a: 1\nmqtt:\n  port: 1\n  host: x\n  port: 2\n")
    assert (issue.line, issue.key) == (5, "mqtt.port")
    assert "duplicate key (also on line 3)" in issue.message
    assert "duplicate" in _issue("x: {a: 1, a: 2}\n").message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2001-02-30", "timestamp"),
        ("!!timestamp junk", "timestamp"),
        ("!!float y", "float"),
        ("9" * 5_000, "int"),
    ],
)
def test_unreadable_scalar_is_located(value: str, expected: str) -> None:
    issue = _issue(f"a: 1\nb: {value}\n")
    assert issue.line == 2
    assert f"invalid YAML value: cannot read this {expected} value" in issue.message
    assert "quote it" in issue.message


def test_control_character_is_located() -> None:
    issue = _issue('a: 1\nb: "x\x01"\n')
    assert issue.line == 2
    assert "U+0001" in issue.message


def test_aliases_merge_keys_and_lines_still_work() -> None:
    text = (
        "base: &b\n"
        "  host: h\n"
        "  port: 1\n"
        "one:\n"
        "  <<: *b\n"
        "  port: 2\n"
        "two: *b\n"
        "names: &n [a, b]\n"
        "more: [*n, *n]\n"
    )
    doc = parse_yaml(text, "f.yaml")
    assert doc.data["one"] == {"host": "h", "port": 2}
    assert doc.data["two"] == {"host": "h", "port": 1}
    assert doc.data["more"] == [["a", "b"], ["a", "b"]]
    assert doc.line_of(("one", "port")) == 6
    assert doc.line_of(("two", "port")) == 3  # the aliased value's own line
    assert doc.line_of(("more", 1)) == 8  # an alias item: the line of what it points at


def test_repository_configs_stay_valid() -> None:
    repo = Path(__file__).resolve().parents[2]
    files = [
        *sorted((repo / "device_profiles").glob("*.yaml")),
        *sorted((repo / "agent" / "data" / "models").glob("*/model.yaml")),
    ]
    assert files
    for path in files:
        _kind, issues = validate_file(path)
        assert issues == [], issues
