"""Inline chunks bound to the signed manifest (the assembler), and every buffer fed from the
network bounded in bytes and count (the inbox queue, the chunks waiting for their manifest):
forged, malformed, oversized and deep messages are dropped and counted, never raised."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import pytest

from agent.core.errors import OtaError, OtaRejected
from agent.core.fsutil import sha256_file
from agent.fleet.push import bundle_files, chunk_messages
from agent.ota.assembler import Added, ChunkAssembler
from agent.ota.chunks import BufferLimits, Chunk, ChunkBuffer, parse_chunk
from agent.ota.drops import DropCounter, DropReason
from agent.ota.inbox import Envelope, Inbox, InboxLimits
from agent.ota.manifest import Payload, manifest_sha256
from tests.helpers.ota_support import copy_bundle, manifest_for

_MIB = 1024 * 1024


def _inline(tmp_path: Path) -> tuple[Any, str, list[dict[str, Any]]]:
    bundle = copy_bundle(tmp_path / "b")
    m = manifest_for(bundle, 1, Payload(kind="inline", chunk_size=4096))
    raw = m.to_json()
    chunks = [json.loads(c) for c in chunk_messages(m, raw, bundle_files(bundle))]
    return m, manifest_sha256(raw), chunks


def _same_files(a: Path, b: Path) -> None:
    for path in bundle_files(a):
        assert sha256_file(a / path) == sha256_file(b / path), path


def test_inline_chunks_out_of_order_and_duplicated(tmp_path: Path) -> None:
    m, sha, chunks = _inline(tmp_path)
    assert len(chunks) == sum(m.payload.chunk_count(f.size) for f in m.files) > 3
    shuffled = chunks + chunks[:3]
    random.Random(7).shuffle(shuffled)
    asm = ChunkAssembler(m, sha, tmp_path / "stage")
    outcomes = [asm.add(c) for c in shuffled]
    assert outcomes.count(Added.DUPLICATE) == 3 and asm.complete
    asm.finish()
    _same_files(tmp_path / "b", tmp_path / "stage")


def test_inline_missing_chunks_name_file_and_index(tmp_path: Path) -> None:
    m, sha, chunks = _inline(tmp_path)
    asm = ChunkAssembler(m, sha, tmp_path / "stage")
    onnx_chunks = [c for c in chunks if c["file"] == "model.onnx"]
    for c in chunks:
        if c is not onnx_chunks[1]:
            asm.add(c)
    assert not asm.complete
    assert asm.missing() == {"model.onnx": [1]}
    with pytest.raises(OtaError, match=r"model.onnx: 1 of \d+ missing \(first \[1\]\)") as info:
        asm.finish()
    assert info.value.reason == "incomplete"


def test_forged_chunks_are_dropped_and_the_push_still_assembles(tmp_path: Path) -> None:
    """Every forged chunk carries the (public) manifest sha256; none of them fails the push."""
    m, sha, chunks = _inline(tmp_path)
    asm = ChunkAssembler(m, sha, tmp_path / "stage")
    first = chunks[1]
    data = base64.b64decode(first["data"])
    flipped = base64.b64encode(bytes([data[0] ^ 0xFF]) + data[1:]).decode()
    forged = [
        ({"count": 999}, DropReason.COUNT_MISMATCH),
        ({"manifest_sha256": "f" * 64}, DropReason.OTHER_MANIFEST),
        ({"file": "../evil"}, DropReason.UNKNOWN_FILE),
        ({"file": "not-in-the-manifest"}, DropReason.UNKNOWN_FILE),
        ({"index": 10_000}, DropReason.BAD_INDEX),
        ({"index": -1}, DropReason.BAD_CHUNK),
        ({"index": True}, DropReason.BAD_CHUNK),
        ({"data": "%%%"}, DropReason.NOT_BASE64),
        ({"data": base64.b64encode(b"xy").decode()}, DropReason.WRONG_SIZE),
        ({"data": "A" * (8 * _MIB)}, DropReason.OVERSIZED),
        ({"data": None}, DropReason.BAD_CHUNK),
        ({"manifest_sha256": None}, DropReason.BAD_CHUNK),
    ]
    for change, reason in forged:
        assert asm.add(dict(first, **change)) is reason, change
    assert asm.add(first) is Added.STORED
    # a second copy with other bytes is dropped; the first one stays
    assert asm.add(dict(first, data=flipped)) is DropReason.CONFLICT
    assert asm.add(first) is Added.DUPLICATE
    for c in chunks:
        asm.add(c)
    assert asm.complete
    asm.finish()
    _same_files(tmp_path / "b", tmp_path / "stage")


def test_only_the_assembled_file_hash_fails_a_push(tmp_path: Path) -> None:
    m, sha, chunks = _inline(tmp_path)
    asm = ChunkAssembler(m, sha, tmp_path / "stage")
    for c in chunks:
        if c["file"] == "model.onnx" and c["index"] == 0:
            raw = bytearray(base64.b64decode(c["data"]))
            raw[10] ^= 0xFF  # forged first, with the right length: only the hash tells
            assert asm.add(dict(c, data=base64.b64encode(bytes(raw)).decode())) is Added.STORED
        else:
            asm.add(c)
    with pytest.raises(OtaRejected) as info:
        asm.finish()
    assert info.value.reason == "hash_mismatch" and "model.onnx" in info.value.message


def _chunk(sha: str, index: int, wire: int, data: str = "") -> Chunk:
    return Chunk(sha, "model.onnx", index, None, data, wire)


def test_buffer_counts_whole_messages_and_bounds_manifests() -> None:
    drops = DropCounter()
    buf = ChunkBuffer(BufferLimits(max_bytes=1 * _MIB, max_chunks=100, max_manifests=3), drops)
    # empty data, 250 KiB of padding each: the message size is what counts
    for i in range(40):
        buf.add(_chunk(f"{i % 2:064x}", i, 250 * 1024))
    assert buf.bytes <= 1 * _MIB and 1 <= buf.count <= 4
    for i in range(10):  # many distinct manifests: the oldest are evicted
        buf.add(_chunk(f"{100 + i:064x}", 0, 10))
    assert buf.manifests == 3 and buf.count == 3
    counts = drops.counts()
    assert counts["evicted"] > 0 and counts["buffer_full"] > 0
    assert buf.take(f"{109:064x}") == [_chunk(f"{109:064x}", 0, 10)]
    assert buf.bytes == 20 and buf.count == 2


def test_buffer_bounds_the_chunk_count() -> None:
    drops = DropCounter()
    buf = ChunkBuffer(BufferLimits(max_bytes=_MIB, max_chunks=5, max_manifests=4), drops)
    for i in range(50):
        buf.add(_chunk("a" * 64, i, 1))
    assert buf.count == 5 and drops.counts() == {"buffer_full": 45}


def test_inbox_queue_is_bounded_in_bytes_and_count() -> None:
    inbox = Inbox(InboxLimits(max_message_bytes=_MIB, max_queued_bytes=2 * _MIB, max_queued=10))
    big = b"{" + b" " * (600 * 1024) + b"}"
    assert [inbox.submit(big) for _ in range(5)] == [True, True, True, False, False]
    assert not inbox.submit(b" " * (_MIB + 1))
    assert inbox.queued_bytes <= 2 * _MIB
    for _ in range(3):
        assert isinstance(inbox.next(0), Envelope)
    assert inbox.queued_bytes == 0
    assert all(inbox.submit(b"{}") for _ in range(10)) and not inbox.submit(b"{}")
    assert inbox.drops.counts() == {"queue_full": 3, "too_large": 1}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b'{"a":' * 50 + b"1" + b"}" * 50, "too_deep"),
        (b"\xff\xfe", "not_utf8"),
        (b"{not json", "not_json"),
        (b'{"model": "\\ud800"}', "bad_unicode"),
        (b"[1, 2]", "not_an_object"),
        (b'{"kind": "chunk", "manifest_sha256": "x"}', "bad_chunk"),
    ],
)
def test_inbox_drops_what_is_not_a_message(payload: bytes, reason: str) -> None:
    inbox = Inbox()
    assert inbox.submit(payload)
    assert inbox.next(0) is None
    assert inbox.drops.counts() == {reason: 1} and inbox.queued_bytes == 0


def test_inbox_buffers_chunks_and_hands_out_envelopes() -> None:
    inbox = Inbox()
    sha = "c" * 64
    chunk = {"kind": "chunk", "manifest_sha256": sha, "file": "a", "index": 0, "data": ""}
    inbox.submit(json.dumps(chunk).encode())
    inbox.submit(b'{"manifest": {}, "signatures": []}')
    item = inbox.next(0)
    assert isinstance(item, Envelope) and item.doc == {"manifest": {}, "signatures": []}
    (taken,) = inbox.take_chunks(sha)
    assert parse_chunk(chunk, taken.wire_bytes) == taken
    inbox.mark_finished(sha)
    inbox.submit(json.dumps(chunk).encode())
    assert inbox.next(0) is None and inbox.drops.counts() == {"finished": 1}


def test_drop_summary_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    drops = DropCounter(summary_every_s=5.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="agent.ota.drops"):
        for _ in range(1000):
            drops.count(DropReason.QUEUE_FULL)
        now[0] = 6.0
        drops.flush()
    lines = [r for r in caplog.records if r.name == "agent.ota.drops"]
    assert len(lines) == 2
    assert lines[-1].fields["dropped"] == {"queue_full": 1000}  # type: ignore[attr-defined]


def test_a_flood_cannot_crowd_out_the_chunks_of_the_push_in_transfer() -> None:
    inbox = Inbox(InboxLimits(max_queued_bytes=_MIB, max_queued=100))
    sha = "d" * 64
    flood = json.dumps({"kind": "chunk", "manifest_sha256": "e" * 64, "pad": "A" * 1000})
    legit = {"kind": "chunk", "manifest_sha256": sha, "file": "a", "index": 0, "data": "QUFB"}
    with inbox.transfer(sha, chunk_size=4096, total_bytes=4096 * 10):
        assert sum(inbox.submit(flood.encode()) for _ in range(500)) == 100
        assert inbox.submit(json.dumps(legit).encode())
        # a copy of the public sha256 with padding is no chunk of this push: main lane, full
        assert not inbox.submit(json.dumps(dict(legit, pad="A" * 8000)).encode())
        chunk = inbox.next_chunk(sha, 0)
        assert isinstance(chunk, Chunk) and chunk.data == "QUFB"
        assert inbox.drops.counts() == {"queue_full": 401}
        assert inbox.submit(json.dumps(legit).encode())
    assert inbox.drops.counts() == {"finished": 1, "queue_full": 401}
