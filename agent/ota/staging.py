"""From a verified manifest to an installed bundle: fetch (URL download or inline chunks) into
a staging directory, check it, install it into the version store; then build and activate."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from agent.core.jsonlimits import sanitize_text
from agent.core.progress import throttle
from agent.ota.activation import build_and_activate
from agent.ota.assembler import ChunkAssembler
from agent.ota.chunks import Chunk
from agent.ota.context import UpdateContext
from agent.ota.control import Stopped
from agent.ota.drops import DropReason
from agent.ota.fetch import download_bundle
from agent.ota.states import UNSUCCESSFUL, UpdateState
from agent.ota.trust import SignedManifest
from agent.ota.verify import check_bundle


def install_and_activate(ctx: UpdateContext, signed: SignedManifest) -> None:
    """verified → downloaded → (build and activate)."""
    m = signed.manifest
    staging = ctx.store.new_staging(m.name, m.version)
    try:
        progress = ThrottledProgress(ctx)
        if m.payload.kind == "url":
            download_bundle(m, staging, timeout_s=ctx.config.download_timeout_s, progress=progress)
        else:
            collect_chunks(ctx, signed, staging, progress)
        check_bundle(staging, m)
        bundle_dir = ctx.store.install(staging, m.name, m.version, signed.envelope())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    ctx.tracker.update(bundle_dir=str(bundle_dir))
    ctx.tracker.transition(UpdateState.DOWNLOADED)
    build_and_activate(ctx, m.name, m.version, bundle_dir)


def collect_chunks(
    ctx: UpdateContext,
    signed: SignedManifest,
    staging: Path,
    progress: Callable[[int, int, str], None],
) -> None:
    """Assemble an inline payload: the chunks buffered before the manifest came, then those
    arriving within ``ota.inline_timeout_s``. Chunks that do not fit the signed manifest are
    dropped and counted; only the assembled files' hashes can fail the transfer."""
    m, sha = signed.manifest, signed.sha256
    assembler = ChunkAssembler(m, sha, staging, progress=progress)
    assert m.payload.chunk_size is not None  # an inline payload (the assembler checked)
    with ctx.inbox.transfer(sha, m.payload.chunk_size, m.total_size):
        for chunk in ctx.inbox.take_chunks(sha):
            _add(ctx, assembler, chunk)
        deadline = time.monotonic() + ctx.config.inline_timeout_s
        while not assembler.complete:
            if ctx.stop.is_set():
                raise Stopped
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            chunk = ctx.inbox.next_chunk(sha, min(remaining, 0.5))
            if chunk is not None:
                _add(ctx, assembler, chunk)
    assembler.finish()


def _add(ctx: UpdateContext, assembler: ChunkAssembler, chunk: Chunk) -> None:
    outcome = assembler.add(chunk)
    if isinstance(outcome, DropReason):
        ctx.inbox.drops.count(
            outcome,
            manifest_sha256=chunk.manifest_sha256,
            file=sanitize_text(chunk.file, max_len=80),
            index=chunk.index,
        )


def discard_unused(ctx: UpdateContext) -> None:
    """After an update ended other than active: its installed version can never serve (its
    number is burnt), so remove it now instead of leaving it to pruning."""
    rec = ctx.tracker.last()
    if rec is None or rec.state not in UNSUCCESSFUL:
        return
    model, version = rec.model, rec.version
    if not isinstance(model, str) or not isinstance(version, int):
        return
    current = ctx.store.committed(model)
    kept = {h.version for h in ctx.store.history(model)}
    if (current is None or current.version != version) and version not in kept:
        ctx.store.remove_version(model, version)


class ThrottledProgress:
    """Download progress into the record (published) at most every 10 % or 2 s."""

    def __init__(self, ctx: UpdateContext):
        self.ctx = ctx
        self._report = throttle(self._record, every_s=2.0, min_step=0.1)

    def __call__(self, done: int, total: int, message: str) -> None:
        fraction = 1.0 if total <= 0 else min(1.0, done / total)
        self._report("download", fraction, message)

    def _record(self, stage: str, fraction: float, message: str) -> None:
        del stage
        with contextlib.suppress(OSError):
            self.ctx.tracker.update(progress=round(fraction, 3), progress_message=message)
