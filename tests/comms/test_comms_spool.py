"""The on-disk spool: order, acks, persistence, torn tails, size cap."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.comms.spool import Spool


def _fill(spool: Spool, n: int, topic: str = "t") -> list[int]:
    return [spool.append(topic, lambda seq: json.dumps({"seq": seq}).encode()) for _ in range(n)]


def test_ids_are_sequential_and_read_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    ids = _fill(spool, 50)
    assert ids == list(range(1, 51))
    recs = spool.read(1, 1000)
    assert [r.id for r in recs] == ids
    assert [json.loads(r.payload)["seq"] for r in recs] == ids
    assert spool.pending == 50
    spool.close()


def test_acked_records_leave_and_survive_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    _fill(spool, 200)
    for rid in range(1, 121):
        spool.ack(rid)
    spool.ack(150)  # out of order: kept in memory only, re-sent after a restart
    assert spool.pending == 79
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    assert again.acked_below == 121
    ids = [r.id for r in again.read(0, 1000)]
    assert ids == list(range(121, 201))
    assert again.append("t", lambda s: b"x") == 201  # ids continue, never reused
    again.close()


def test_fully_acked_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    _fill(spool, 500)
    assert len(list(tmp_path.glob("seg-*.log"))) > 3
    for rid in range(1, 501):
        spool.ack(rid)
    spool.maybe_sync(force=True)
    assert len(list(tmp_path.glob("seg-*.log"))) <= 1
    assert spool.pending == 0
    spool.close()


def test_torn_tail_is_cut_and_earlier_records_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    _fill(spool, 10)
    spool.close()
    seg = sorted(tmp_path.glob("seg-*.log"))[-1]
    data = seg.read_bytes()
    seg.write_bytes(data[:-7])  # a record cut mid-write (power loss)
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert [r.id for r in again.read(0, 100)] == list(range(1, 10))
    assert again.corrupt == 1
    new_id = again.append("t", lambda s: b"new")
    assert new_id >= 10  # an id is never reused, even one that was lost
    for rid in range(1, 10):  # only the records that exist
        again.ack(rid)
    assert again.pending == 1  # the lost id does not block the queue
    again.close()
    third = Spool(tmp_path, max_bytes=1 << 20)
    assert [r.payload for r in third.read(0, 10)] == [b"new"]
    third.close()


def test_corrupt_byte_ends_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    _fill(spool, 10)
    spool.close()
    seg = sorted(tmp_path.glob("seg-*.log"))[-1]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    again = Spool(tmp_path, max_bytes=1 << 20)
    ids = [r.id for r in again.read(0, 100)]
    assert ids == list(range(1, len(ids) + 1)) and 0 < len(ids) < 10
    again.close()


def test_size_cap_drops_oldest_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=64 * 1024, segment_bytes=8 * 1024)
    payload = b"x" * 500
    for _ in range(400):  # ~200 KiB into a 64 KiB spool
        spool.append("t", lambda s: payload)
    assert spool.total_bytes <= 64 * 1024
    assert spool.dropped > 0
    recs = spool.read(0, 10_000)
    assert len(recs) == spool.pending
    assert recs[-1].id == 400  # newest kept
    assert [r.id for r in recs] == list(range(recs[0].id, 401))  # contiguous, in order
    assert spool.dropped + spool.pending == 400
    spool.close()


def test_unreadable_meta_is_logged_and_loses_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    _fill(spool, 10)
    for rid in range(1, 6):
        spool.ack(rid)
    spool.close()
    (tmp_path / "meta.json").write_text("{torn")
    with caplog.at_level(logging.WARNING, logger="agent.comms.spool"):
        again = Spool(tmp_path, max_bytes=1 << 20)
    assert any("meta.json" in r.getMessage() for r in caplog.records), caplog.records
    # nothing is lost: the stored records are resent (duplicates, deduped on seq)
    assert [r.id for r in again.read(0, 100)] == list(range(1, 11))
    assert again.append("t", lambda s: b"x") == 11
    again.close()
