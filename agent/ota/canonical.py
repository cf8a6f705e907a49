"""Canonical JSON, the bytes a manifest signature covers.

Canonical form (a subset of RFC 8785, JSON Canonicalization Scheme): objects with string keys
sorted by their UTF-16 code units, no whitespace, UTF-8, strings escaped as ECMAScript's
``JSON.stringify`` does, and only strings, integers (|n| ≤ 2**53 − 1), booleans, null, arrays
and objects. Floats are refused: their textual form is the one part of JCS that is hard to get
identical across languages, and nothing in a manifest needs them (times are integer epoch
seconds, tolerances are decimal strings).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agent.core.errors import OtaReason, OtaRejected

__all__ = ["MAX_SAFE_INT", "canonical_json"]

#: the largest integer with a portable JSON form
MAX_SAFE_INT = 2**53 - 1


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of ``value`` (see the module docstring).

    Raises :class:`~agent.core.errors.OtaRejected` (reason ``malformed``) for floats, non-string
    keys, unsafe integers or other types.
    """
    out: list[str] = []
    _canon(value, "$", out)
    return "".join(out).encode("utf-8")


def _malformed(message: str, fix: str) -> OtaRejected:
    return OtaRejected(message, reason=OtaReason.MALFORMED, fix=fix)


def _canon(value: Any, where: str, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INT:
            raise _malformed(
                f"{where}: integer {value} is outside ±(2**53 − 1) and has no portable JSON form",
                "use a smaller integer or a decimal string",
            )
        out.append(str(value))
    elif isinstance(value, float):
        raise _malformed(
            f"{where}: float {value!r} is not allowed in canonical JSON",
            'use an integer or a decimal string (e.g. "0.01") instead',
        )
    elif isinstance(value, str):
        _canon_string(value, where, out)
    elif isinstance(value, Mapping):
        _canon_object(value, where, out)  # pyright: ignore[reportUnknownArgumentType]
    elif isinstance(value, (list, tuple)):
        _canon_array(value, where, out)  # pyright: ignore[reportUnknownArgumentType]
    else:
        raise _malformed(
            f"{where}: {type(value).__name__} is not a JSON type allowed in a manifest",
            "use strings, integers, booleans, null, lists and objects only",
        )


def _canon_string(value: str, where: str, out: list[str]) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _malformed(
            f"{where}: string is not valid Unicode (lone surrogate)", "send valid UTF-8 text"
        ) from exc
    out.append(json.dumps(value, ensure_ascii=False))


def _canon_object(mapping: Mapping[Any, Any], where: str, out: list[str]) -> None:
    for key in mapping:
        if not isinstance(key, str):
            raise _malformed(f"{where}: object key {key!r} is not a string", "use string keys only")
    keys: list[str] = sorted(mapping, key=lambda k: k.encode("utf-16-be"))
    out.append("{")
    for i, key in enumerate(keys):
        if i:
            out.append(",")
        _canon(key, where, out)
        out.append(":")
        _canon(mapping[key], f"{where}.{key}", out)
    out.append("}")


def _canon_array(items: list[Any] | tuple[Any, ...], where: str, out: list[str]) -> None:
    out.append("[")
    for i, item in enumerate(items):
        if i:
            out.append(",")
        _canon(item, f"{where}[{i}]", out)
    out.append("]")
