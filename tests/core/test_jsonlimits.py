"""Bounded JSON parsing for network messages: size, depth, item count, UTF-8 and surrogates are
refused with a stable reason before (or instead of) a RecursionError or a large allocation."""

from __future__ import annotations

import json

import pytest

from agent.core.jsonlimits import JsonLimits, JsonRejected, loads_bounded, sanitize_text

LIMITS = JsonLimits(max_bytes=4096, max_depth=8, max_items=50)


def _reason(payload: bytes | str, limits: JsonLimits = LIMITS) -> str:
    with pytest.raises(JsonRejected) as info:
        loads_bounded(payload, limits)
    return info.value.reason


def test_good_documents_parse() -> None:
    doc = {"a": [1, 2, {"b": 'c[{\\"]'}], "n": None, "t": "ünï"}
    assert loads_bounded(json.dumps(doc).encode(), LIMITS) == doc
    assert loads_bounded(json.dumps(doc, ensure_ascii=False), LIMITS) == doc


def test_deep_nesting_is_refused_without_recursion() -> None:
    bomb = b"[" * 200_000 + b"]" * 200_000
    assert _reason(bomb, JsonLimits(max_bytes=1 << 20, max_depth=32)) == "too_deep"
    # brackets inside strings do not count
    assert loads_bounded(json.dumps({"s": "[" * 100}), LIMITS) == {"s": "[" * 100}


def test_size_items_utf8_and_syntax() -> None:
    assert _reason(b" " * 5000) == "too_large"
    assert _reason(json.dumps(list(range(100)))) == "too_many_items"
    assert _reason(b'{"a": "\xff"}') == "not_utf8"
    assert _reason(b'{"a": ') == "not_json"


def test_lone_surrogates_are_refused_and_sanitized() -> None:
    assert _reason(b'{"name": "\\ud800"}') == "bad_unicode"
    text = sanitize_text("a\ud800b\x00c" + "x" * 300, max_len=10)
    text.encode("utf-8")  # publishable
    assert len(text) == 10 and text.startswith("a")
