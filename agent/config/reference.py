"""Reference tables of a config model, generated from its pydantic fields.

Every field of a :class:`~agent.config.base.Strict` model carries a ``title`` and a
``description`` (and, for ``model.yaml``, an example): :func:`reference_markdown` turns them into
one Markdown table per section (nested models get their own, with dotted names), and
:func:`replace_generated` puts that text between the markers of a hand-written document, so the
document cannot drift from the code (``scripts/gen_config_docs.py`` rewrites it; a test fails
when it differs).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = [
    "BEGIN_MARK",
    "END_MARK",
    "FieldRow",
    "field_rows",
    "reference_markdown",
    "replace_generated",
]

BEGIN_MARK = "<!-- BEGIN GENERATED: do not edit by hand (scripts/gen_config_docs.py) -->"
END_MARK = "<!-- END GENERATED -->"

_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)


@dataclass(frozen=True)
class FieldRow:
    """One documented field: ``path`` is dotted from the root model (``output.softmax``)."""

    path: str
    section: str
    type: str
    default: str
    meaning: str
    example: str


def _yaml(value: Any) -> str:
    """A value as it is written in YAML flow style."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1f}" if value.is_integer() else f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{'list' if origin is list else 'tuple'}[{inner}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"mapping ({annotation.__name__})"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "all defaults"
        return f"`{_yaml(value)}`"
    return f"`{_yaml(info.default)}`" if info.default is not PydanticUndefined else "required"


def _meaning(info: FieldInfo) -> str:
    text = f"**{info.title}.** {info.description}" if info.title else str(info.description)
    bounds = [
        f"{sign} {_yaml(getattr(m, attr))}"
        for m in info.metadata
        for kind, attr, sign in _BOUNDS
        if isinstance(m, kind)
    ]
    if bounds:
        text += f" ({', '.join(bounds)})"
    return text.replace("|", "\\|").replace("\n", " ")


def _nested(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def field_rows(model: type[BaseModel], prefix: str = "") -> Iterator[FieldRow]:
    """Every field of ``model``, then the fields of each nested model (depth first)."""
    nested: list[tuple[str, type[BaseModel]]] = []
    section = prefix.rstrip(".") or "(top level)"
    for name, info in model.model_fields.items():
        path = prefix + name
        example = _yaml(info.examples[0]) if info.examples else ""
        yield FieldRow(
            path=path,
            section=section,
            type=_type_name(info.annotation),
            default=_default(info),
            meaning=_meaning(info),
            example=f"`{example}`" if example else "",
        )
        sub = _nested(info.annotation)
        if sub is not None:
            nested.append((path, sub))
    for path, sub in nested:
        yield from field_rows(sub, path + ".")


def reference_markdown(model: type[BaseModel]) -> str:
    """One Markdown table per section of ``model`` (the root, then each nested model)."""
    lines: list[str] = []
    section = None
    for row in field_rows(model):
        if row.section != section:
            section = row.section
            title = "Top level" if section == "(top level)" else f"`{section}:`"
            lines += ["", f"### {title}", ""]
            lines += ["| Field | Type | Default | Meaning | Example |", "|---|---|---|---|---|"]
        cells = (f"`{row.path}`", row.type, row.default, row.meaning, row.example)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines).strip() + "\n"


def replace_generated(document: str, generated: str) -> str:
    """``document`` with the text between :data:`BEGIN_MARK` and :data:`END_MARK` replaced by
    ``generated``; ``ValueError`` when the markers are missing or out of order."""
    begin, end = document.find(BEGIN_MARK), document.find(END_MARK)
    if begin < 0 or end < begin:
        raise ValueError(f"the document has no '{BEGIN_MARK}' ... '{END_MARK}' block")
    head = document[: begin + len(BEGIN_MARK)]
    return f"{head}\n\n{generated.strip()}\n\n{document[end:]}"
