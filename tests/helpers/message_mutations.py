"""Seeded mutations of valid MQTT messages (command requests, OTA manifests and chunks).

Used by ``scripts/bench_fuzz.py``. Each mutation takes a valid JSON message and a
``random.Random`` and returns the bytes to publish: truncated, byte-flipped, deeply nested,
huge, with many members, wrong types, lone surrogates (escaped and raw), invalid UTF-8,
number bombs, duplicate keys, not JSON at all; OTA chunks forged against the real manifest
(counts, indexes, paths, data, padding) and signed manifests tampered with.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

Mutation = Callable[[bytes, random.Random], bytes]
_SENTINEL = "__FUZZ_SENTINEL__"
_ODD_VALUES: list[Any] = [None, True, -1, 0, 2**70, 1e308, "", "x", [], {}, [1, "a"], {"a": {}}]


def _doc(base: bytes) -> dict[str, Any]:
    doc = json.loads(base)
    return doc if isinstance(doc, dict) else {"value": doc}


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _with_raw(base: bytes, rng: random.Random, raw: bytes) -> bytes:
    """``base`` with one key's value (or a new key) replaced by the raw JSON text ``raw``."""
    doc = _doc(base)
    key = rng.choice([*doc.keys(), "extra"])
    doc[key] = _SENTINEL
    return _dump(doc).replace(f'"{_SENTINEL}"'.encode(), raw, 1)


def _with_value(base: bytes, rng: random.Random, value: Any) -> bytes:
    doc = _doc(base)
    doc[rng.choice([*doc.keys(), "extra"])] = value
    return _dump(doc)


def truncate(base: bytes, rng: random.Random) -> bytes:
    return base[: rng.randrange(max(1, len(base)))]


def byte_flips(base: bytes, rng: random.Random) -> bytes:
    buf = bytearray(base)
    for _ in range(rng.randint(1, 6)):
        buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf)


def deep(base: bytes, rng: random.Random) -> bytes:
    depth = rng.choice([20, 2_000, 100_000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    return _with_raw(base, rng, opener * depth + b"1" + closer * depth)


def huge(base: bytes, rng: random.Random) -> bytes:
    return _with_value(base, rng, "x" * rng.choice([100_000, 300_000, 2_000_000]))


def many_items(base: bytes, rng: random.Random) -> bytes:
    count = rng.choice([3_000, 100_000])
    return _with_raw(base, rng, b"[" + b",".join([b"0"] * count) + b"]")


def wrong_type(base: bytes, rng: random.Random) -> bytes:
    return _with_value(base, rng, rng.choice(_ODD_VALUES))


def lone_surrogate(base: bytes, rng: random.Random) -> bytes:
    text = rng.choice(["\ud800", "a\udfffb", "\udc00" * 50])
    if rng.random() < 0.5:
        return _with_value(base, rng, text)  # escaped: "\ud800" in valid UTF-8 JSON
    return _with_raw(base, rng, b'"' + text.encode("utf-8", "surrogatepass") + b'"')


def invalid_utf8(base: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(base) + 1)
    return base[:at] + rng.choice([b"\xff", b"\xc3(", b"\xf4\x90\x80\x80"]) + base[at:]


def number_bomb(base: bytes, rng: random.Random) -> bytes:
    raw = rng.choice([b"9" * 50_000, b"1e999999", b"NaN", b"-Infinity", b"1" + b"0" * 5_000])
    return _with_raw(base, rng, raw)


def duplicate_keys(base: bytes, rng: random.Random) -> bytes:
    doc = _doc(base)
    key = rng.choice(list(doc) or ["id"])
    return b'{"' + key.encode() + b'":' + _dump(rng.choice(_ODD_VALUES)) + b"," + base.lstrip()[1:]


def not_json(base: bytes, rng: random.Random) -> bytes:
    return rng.choice(
        [b"", b"null", b"[]", b'"s"', b"{}", b"\x00" * 64, rng.randbytes(rng.randint(1, 512))]
    )


def unknown_keys(base: bytes, rng: random.Random) -> bytes:
    doc = _doc(base)
    for i in range(rng.choice([1, 50, 1_500])):
        doc[f"k{i}"] = i
    return _dump(doc)


GENERIC: tuple[Mutation, ...] = (
    truncate,
    byte_flips,
    deep,
    huge,
    many_items,
    wrong_type,
    lone_surrogate,
    invalid_utf8,
    number_bomb,
    duplicate_keys,
    not_json,
    unknown_keys,
)


def forged_chunk(base: bytes, rng: random.Random) -> bytes:
    """A chunk of the real push (its manifest sha256 is public) with one field forged."""
    doc = _doc(base)
    field, values = rng.choice(
        [
            ("count", [999, 10**9, 0, -1, 2**64]),
            ("index", [-1, 10**9, 2**64, 1.5]),
            ("file", ["../../etc/passwd", "/abs", "model.onnx\u0000", "\ud800", "x" * 5_000]),
            ("data", ["!!not base64!!", "", "A" * 400_000, "QUJD"]),
            ("manifest_sha256", ["0" * 64, "zz", "", "\ud800"]),
            ("padding", ["p" * 250_000]),
        ]
    )
    doc[field] = rng.choice(values)
    if field == "padding":
        doc["data"] = ""
    return _dump(doc)


def chunk_flood_id(base: bytes, rng: random.Random) -> bytes:
    """A chunk for a manifest id nobody announced (a new id each time)."""
    doc = _doc(base)
    doc["manifest_sha256"] = rng.randbytes(32).hex()
    doc["data"] = ""
    doc["padding"] = "p" * rng.choice([10, 100_000])
    return _dump(doc)


def tampered_manifest(base: bytes, rng: random.Random) -> bytes:
    """The signed envelope with its manifest or signatures changed (the signature no longer
    matches, or there is none)."""
    doc = _doc(base)
    found = doc.get("manifest")
    manifest: dict[str, Any] = found if isinstance(found, dict) else {}
    choice = rng.randrange(6)
    if choice == 0:
        manifest["version"] = rng.choice([2**63, -1, "7", 10**6])
    elif choice == 1:
        doc["signatures"] = rng.choice([[], None, [{"key_id": "x", "sig": "\ud800"}], "sig"])
    elif choice == 2:
        manifest["files"] = [{"path": f"f{i}", "sha256": "0" * 64, "size": 1} for i in range(2000)]
    elif choice == 3:
        manifest["payload"] = {"kind": "inline", "chunk_size": rng.choice([1, 0, 2**40])}
    elif choice == 4:
        manifest["name"] = rng.choice(["\ud800", "../x", "n" * 10_000])
    else:
        manifest["target"] = {"fleet": "other", "device": "someone-else"}
    doc["manifest"] = manifest
    return _dump(doc)


OTA_SPECIFIC: tuple[Mutation, ...] = (forged_chunk, chunk_flood_id, tampered_manifest)
