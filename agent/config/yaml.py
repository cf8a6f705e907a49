"""Load YAML keeping the source line of every key, and map pydantic errors back to lines.

Validation errors are printed as ``file:line: key: message`` and say how to fix the problem
(an unknown key names the nearest valid key).
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

from agent.core.errors import ConfigError, ConfigIssue

Loc = tuple[str | int, ...]
_AT = re.compile(r"^\[([\w.-]+)\] (.*)$", re.S)
M = TypeVar("M", bound=BaseModel)


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


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*loc, key)
            lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*loc, index)
            lines[child] = item.start_mark.line + 1
            _walk(item, child, lines)


def parse_yaml(text: str, path: str) -> YamlDoc:
    """Parse ``text``; a syntax error becomes a :class:`ConfigError` with its line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or str(exc)
        raise ConfigError(
            [
                ConfigIssue(
                    path,
                    line,
                    "(yaml)",
                    f"YAML syntax error: {problem}; fix the indentation or quoting on this line",
                )
            ]
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(path, 1, "(yaml)", f"YAML error: {exc}")]) from exc
    lines: dict[Loc, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return YamlDoc(path=path, data=data, lines=lines)


def read_yaml(path: Path) -> YamlDoc:
    """Read and parse a YAML file; unreadable files become a :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
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
    return parse_yaml(text, str(path))


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
