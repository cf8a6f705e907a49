"""Load YAML keeping the source line of every key, and map pydantic errors back to lines.

Validation errors are printed as ``file:line: key: message`` and say how to fix the problem
(an unknown key names the nearest valid key). Parsing is bounded (:mod:`agent.config.yamlbounded`:
file size, nesting depth, nodes after alias expansion, no alias cycles), so a YAML bomb is a
located error in milliseconds; a duplicate key is an error too (PyYAML would keep the last one).
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import ConstructorError
from yaml.reader import ReaderError

from agent.config.yamlbounded import (
    DEFAULT_LIMITS,
    YamlLimitError,
    YamlLimits,
    compose_bounded,
    construct_bounded,
)
from agent.core.errors import ConfigError, ConfigIssue

Loc = tuple[str | int, ...]
_AT = re.compile(r"^\[([\w.-]+)\] (.*)$", re.S)
M = TypeVar("M", bound=BaseModel)
MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class YamlDoc:
    """A parsed YAML document plus the line (1-based) of every key and list item."""

    path: str
    data: Any
    lines: dict[Loc, int]

    def line_of(self, loc: Loc) -> int:
        """The line of ``loc``, or of its nearest ancestor that exists in the source."""
        probe = tuple(loc)
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            probe = probe[:-1]
        return self.lines.get((), 1)


def _key_of(key_node: yaml.Node) -> str:
    return key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.tag}>"


def _duplicates(node: yaml.MappingNode, loc: Loc, path: str) -> list[ConfigIssue]:
    """A key written twice in one mapping (PyYAML would silently keep the last one)."""
    seen: dict[tuple[str, str], int] = {}
    issues: list[ConfigIssue] = []
    for key_node, _value in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == MERGE_TAG:
            continue
        line = key_node.start_mark.line + 1
        key = (key_node.tag, key_node.value)
        if key not in seen:
            seen[key] = line
        else:
            issues.append(
                ConfigIssue(
                    path,
                    line,
                    ".".join(str(p) for p in (*loc, key_node.value))[:120],
                    f"duplicate key (also on line {seen[key]}); keep one of the two",
                )
            )
    return issues


def _line_map(root: yaml.Node, path: str) -> dict[Loc, int]:
    """The line of every key and list item (aliases expanded), walked with an explicit stack.

    The walk is bounded: :class:`BoundedLoader` already refused documents that expand past
    ``max_nodes``. A duplicate key is a :class:`ConfigError`.
    """
    lines: dict[Loc, int] = {(): root.start_mark.line + 1}
    issues: list[ConfigIssue] = []
    checked: set[int] = set()
    stack: list[tuple[yaml.Node, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, yaml.MappingNode):
            if id(node) not in checked:
                checked.add(id(node))
                issues.extend(_duplicates(node, loc, path))
            for key_node, value_node in reversed(node.value):
                child = (*loc, _key_of(key_node))
                lines.setdefault(child, key_node.start_mark.line + 1)
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*loc, index)] = item.start_mark.line + 1
                stack.append((item, (*loc, index)))
    if issues:
        raise ConfigError(sorted(issues, key=lambda i: i.line))
    return lines


def _yaml_issue(exc: yaml.YAMLError, text: str, path: str) -> ConfigIssue:
    """One located issue for a YAML error, with the fix that fits its kind."""
    if isinstance(exc, YamlLimitError):
        mark = exc.problem_mark
        return ConfigIssue(
            path, mark.line + 1 if mark is not None else 1, "(yaml)", f"{exc.problem}; {exc.fix}"
        )
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or str(exc)
        if isinstance(exc, ConstructorError):
            fix = "fix the value on this line (quote it to keep it as text)"
            return ConfigIssue(path, line, "(yaml)", f"invalid YAML value: {problem}; {fix}")
        return ConfigIssue(
            path,
            line,
            "(yaml)",
            f"YAML syntax error: {problem}; fix the indentation or quoting on this line",
        )
    if isinstance(exc, ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character
        shown = f"U+{char:04X}" if isinstance(char, int) else repr(char)
        return ConfigIssue(
            path,
            line,
            "(yaml)",
            f"character {shown} is not allowed in YAML; remove it or write it escaped "
            'in a double-quoted string ("\\x01")',
        )
    return ConfigIssue(path, 1, "(yaml)", f"YAML error: {exc}")


def parse_yaml(text: str, path: str, limits: YamlLimits = DEFAULT_LIMITS) -> YamlDoc:
    """Parse ``text`` within ``limits``; any YAML problem becomes a located :class:`ConfigError`.

    Aliases, nesting and size are bounded while composing (a YAML bomb is an error in
    milliseconds), duplicate keys are refused, and the data is built from the checked nodes.
    """
    try:
        node = compose_bounded(text, limits)
        lines = _line_map(node, path) if node is not None else {}
        data = construct_bounded(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(exc, text, path)]) from exc
    return YamlDoc(path=path, data=data, lines=lines)


def _read_text(path: Path, limit: int) -> str:
    """At most ``limit`` bytes of ``path`` as UTF-8 (``/dev/zero`` or a huge file stop at once)."""
    with path.open("rb") as handle:
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise ConfigError(
            [
                ConfigIssue(
                    str(path),
                    0,
                    "(file)",
                    f"file is larger than {limit} bytes; configuration files are a few KiB, "
                    "check that this is the right file",
                )
            ]
        )
    return raw.decode("utf-8")


def read_yaml(path: Path, limits: YamlLimits = DEFAULT_LIMITS) -> YamlDoc:
    """Read and parse a YAML file; unreadable files become a :class:`ConfigError`."""
    try:
        text = _read_text(path, limits.max_bytes)
    except FileNotFoundError as exc:
        raise ConfigError(
            [ConfigIssue(str(path), 0, "(file)", "file not found; check the path")]
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [
                ConfigIssue(
                    str(path),
                    0,
                    "(file)",
                    f"cannot read file ({exc.__class__.__name__}: {exc}); "
                    "check its permissions and that it is UTF-8 text",
                )
            ]
        ) from exc
    return parse_yaml(text, str(path), limits)


def _unwrap(annotation: Any) -> list[Any]:
    """Candidate model/container types inside Optional/Union/Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    return [annotation]


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``loc`` (best effort)."""
    current: Any = root
    for part in loc:
        found: Any = None
        for candidate in _unwrap(current):
            origin = typing.get_origin(candidate)
            if isinstance(part, int) and origin in (list, tuple):
                found = typing.get_args(candidate)[0]
                break
            if isinstance(part, str) and origin is dict:
                found = typing.get_args(candidate)[1]
                break
            if (
                isinstance(part, str)
                and isinstance(candidate, type)
                and issubclass(candidate, BaseModel)
                and part in candidate.model_fields
            ):
                found = candidate.model_fields[part].annotation
                break
        if found is None:
            return None
        current = found
    for candidate in _unwrap(current):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def issues_from_validation(
    exc: ValidationError, doc: YamlDoc, root: type[BaseModel]
) -> list[ConfigIssue]:
    """Turn a pydantic ValidationError into located, actionable issues."""
    issues: list[ConfigIssue] = []
    for err in exc.errors():
        loc: Loc = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
        key = ".".join(str(p) for p in loc) or "(top level)"
        kind = err["type"]
        message = err["msg"]
        if kind == "extra_forbidden" and loc:
            parent = _model_at(root, loc[:-1])
            valid = _field_names(parent) if parent is not None else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            if close:
                message = f"unknown key; did you mean '{close[0]}'?"
            else:
                message = "unknown key; valid keys here: " + ", ".join(sorted(valid))
        elif kind == "missing":
            message = "required key is missing; add it"
        elif kind.endswith(("_type", "_parsing")) or kind == "literal_error":
            message = f"{message} (got {err.get('input')!r})"
        elif kind == "value_error":
            message = message.removeprefix("Value error, ")
            located = _AT.match(message)
            if located:
                extra = tuple(int(p) if p.isdigit() else p for p in located.group(1).split("."))
                loc = (*loc, *extra)
                key = ".".join(str(p) for p in loc)
                message = located.group(2)
        elif kind == "assertion_error":
            message = message.removeprefix("Assertion failed, ")
        issues.append(ConfigIssue(doc.path, doc.line_of(loc), key, message))
    issues.sort(key=lambda i: (i.line, i.key))
    return issues


def validate_doc(doc: YamlDoc, model: type[M]) -> M:
    """Validate a parsed document against ``model``; raise :class:`ConfigError` with lines."""
    if doc.data is None:
        raise ConfigError(
            [ConfigIssue(doc.path, 1, "(top level)", "file is empty; it must be a YAML mapping")]
        )
    if not isinstance(doc.data, dict):
        raise ConfigError(
            [
                ConfigIssue(
                    doc.path,
                    1,
                    "(top level)",
                    f"expected a YAML mapping (key: value), got {type(doc.data).__name__}",
                )
            ]
        )
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(issues_from_validation(exc, doc, model)) from exc


def load_model_file(path: Path, model: type[M]) -> M:
    """Read, parse and validate one YAML file."""
    return validate_doc(read_yaml(path), model)
